"""A deterministic text embedding for the integration tests (no model, no network): each
word of a text adds ±1 to one of DIM dimensions chosen by its SHA-256, and the sum is
normalized. Texts sharing words are near each other, so searches have known answers."""

import hashlib
import math
import re

DIM = 64


def embed(text):
    v = [0.0] * DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = hashlib.sha256(word.encode()).digest()
        v[h[0] % DIM] += 1.0 if h[1] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in v))
    if norm == 0:
        v[0], norm = 1.0, 1.0
    return [x / norm for x in v]


# Four short documents on two topics; each query below shares words with one of them only.
DOCS = [
    ("apple", "apples and pears grow in the orchard", {"topic": "fruit"}),
    ("banana", "bananas ripen yellow in warm sun", {"topic": "fruit"}),
    ("rust", "rust compiles fast safe systems code", {"topic": "code"}),
    ("raft", "raft elects a leader and replicates a log", {"topic": "code"}),
]
