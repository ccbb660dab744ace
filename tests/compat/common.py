"""Data, ground truth and the filter oracle shared by the SDK compat modules."""

import numpy as np

DIM = 32
N = 10_000
GENRES = ["drama", "comedy", "action", "horror"]
TAGS = ["a", "b", "c", "d", "e"]


def make_data(seed=7):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    meta = []
    for i in range(N):
        meta.append(
            {
                "genre": GENRES[i % len(GENRES)],
                "year": 1990 + (i % 35),
                "score": float(i % 100) / 10.0,
                "live": bool(i % 3 == 0),
                "tags": [TAGS[i % 5], TAGS[(i * 7) % 5]],
            }
        )
    return vectors, meta


VECTORS, META = make_data()


def oracle(flt):
    """Indices of records matching a filter, evaluated in Python (Pinecone semantics)."""

    def field(m, name, cond):
        v = m.get(name)
        def eq(x):
            return (x in v) if isinstance(v, list) else v == x
        for op, arg in cond.items():
            if op == "$eq" and not (v is not None and eq(arg)):
                return False
            if op == "$ne" and (v is not None and eq(arg)):
                return False
            if op in ("$gt", "$gte", "$lt", "$lte"):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    return False
                if op == "$gt" and not v > arg or op == "$gte" and not v >= arg:
                    return False
                if op == "$lt" and not v < arg or op == "$lte" and not v <= arg:
                    return False
            if op == "$in" and not (v is not None and any(eq(a) for a in arg)):
                return False
            if op == "$nin" and (v is not None and any(eq(a) for a in arg)):
                return False
            if op == "$exists" and (v is not None) != arg:
                return False
        return True

    def match(m, f):
        for k, c in f.items():
            if k == "$and":
                if not all(match(m, s) for s in c):
                    return False
            elif k == "$or":
                if not any(match(m, s) for s in c):
                    return False
            elif not field(m, k, c if isinstance(c, dict) else {"$eq": c}):
                return False
        return True

    return [i for i, m in enumerate(META) if match(m, f=flt)]


def exact_top_k(query, k, allowed=None, n=N):
    normed = VECTORS[:n] / np.linalg.norm(VECTORS[:n], axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    scores = normed @ q
    idx = np.arange(n) if allowed is None else np.array(allowed, dtype=int)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    return [f"v{i}" for i in order[:k]]
