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


def raises_with(fn, *needles):
    """Calls fn, which must raise; returns the error text after checking it names every needle."""
    try:
        fn()
    except Exception as e:  # the SDKs raise their own exception types per transport
        text = str(e)
        # The gRPC clients quote the server's message with escaped quotes (\\').
        while "\\'" in text:
            text = text.replace("\\'", "'")
        for needle in needles:
            assert needle in text, f"{needle!r} not in {text!r}"
        return text
    raise AssertionError(f"no error; expected one naming {needles}")


def check_pinecone_parity(pc, index, spec, transport):
    """Field reports of Pinecone users (issue 13), through the SDK: Pinecone's validation of
    records, a query by a missing id, unhonoured fields refused, bound pagination tokens,
    tag rules and scores in range. `index` is a cosine index of dimension DIM."""
    ns = f"parity-{transport}"
    one = [1.0] + [0.0] * (DIM - 1)
    raises_with(lambda: index.upsert(vectors=[{"id": "zero", "values": [0.0] * DIM}], namespace=ns),
                "Dense vectors must contain at least one non-zero value")
    # (SDK 10 refuses this one itself, in its words: "must contain only ASCII characters".)
    raises_with(lambda: index.upsert(vectors=[{"id": "café", "values": one}], namespace=ns),
                "Vector ID must", "ASCII")
    raises_with(lambda: index.upsert(vectors=[{"id": "m", "values": one, "metadata": {"$price": 5}}], namespace=ns),
                "cannot start with '$'")
    # Directions unlike [0.1] * DIM (used below), so no other record ties with it.
    index.upsert(vectors=[{"id": f"p{i}", "values": [float(i + 1)] + [0.0] * (DIM - 2) + [-1.0]} for i in range(6)]
                 + [{"id": f"q{i}", "values": one} for i in range(3)], namespace=ns)
    raises_with(lambda: index.update(id="p0", values=[0.0] * DIM, namespace=ns), "contains only zeros")
    raises_with(lambda: index.update(id="p0", set_metadata={"$x": 1}, namespace=ns), "cannot start with '$'")
    # Nothing refused was written.
    fetched = index.fetch(ids=["zero", "m", "p0"], namespace=ns)
    assert list(fetched.vectors.keys()) == ["p0"]
    assert not fetched.vectors["p0"].metadata

    # A query by an id that does not exist matches nothing, with the namespace echoed.
    missing = index.query(id="nope", top_k=3, namespace=ns)
    assert list(missing.matches) == []
    assert missing.namespace == ns
    # Identical vectors score at most 1 (cosine is in [-1, 1]).
    same = [0.1] * DIM
    index.upsert(vectors=[{"id": "same", "values": same}], namespace=ns)
    top = index.query(vector=same, top_k=1, namespace=ns).matches[0]
    assert top.id == "same" and 0.9999 < top.score <= 1.0, top
    # A sparse vector would be ignored on this cosine index: refused in Pinecone's words.
    raises_with(lambda: index.query(vector=one, top_k=1, namespace=ns,
                                    sparse_vector={"indices": [1], "values": [0.5]}),
                "does not support sparse values")

    # A list token continues only the listing that issued it.
    page = index.list_paginated(prefix="p", limit=2, namespace=ns)
    token = page.pagination.next
    assert [v.id for v in page.vectors] == ["p0", "p1"]
    again = index.list_paginated(prefix="p", limit=2, namespace=ns, pagination_token=token)
    assert [v.id for v in again.vectors] == ["p2", "p3"]
    raises_with(lambda: index.list_paginated(prefix="q", limit=2, namespace=ns, pagination_token=token),
                "prefix")
    raises_with(lambda: index.list_paginated(prefix="p", limit=2, namespace=ns + "-other",
                                             pagination_token=token), "namespace")

    # Index tags follow Pinecone's character sets, on create and on configure (SDK 10 checks
    # them itself first, in its words: "Must be alphanumeric or ...").
    name = f"parity-tags-{transport}"
    raises_with(lambda: pc.create_index(name=name, dimension=4, metric="cosine", spec=spec,
                                        tags={"team/owner": "a"}), "team/owner", "alphanumeric")
    raises_with(lambda: pc.create_index(name=name, dimension=4, metric="cosine", spec=spec,
                                        tags={"team": "a=b"}), "team", "alphanumeric")
    assert name not in [i.name for i in pc.list_indexes()]
    pc.create_index(name=name, dimension=4, metric="cosine", spec=spec, tags={"team": "search; ops@x.y+z"})
    try:
        raises_with(lambda: pc.configure_index(name, tags={"team/owner": "a=b"}), "team/owner", "alphanumeric")
        desc = pc.describe_index(name)
        tags = desc.to_dict()["tags"] if hasattr(desc, "to_dict") else dict(desc.tags)
        assert tags == {"team": "search; ops@x.y+z"}
    finally:
        pc.delete_index(name)
    index.delete(delete_all=True, namespace=ns)


def check_through_proxy(pc, index, proxy, vectors):
    """An index answers through `pc` and `index`, SDK clients configured with a proxy: an
    upsert, a fetch and a query, each of which must add to the proxy's tunnels (a client
    that went straight to the node would not)."""
    before = proxy.tunnels()
    assert index.upsert(vectors=vectors, namespace="proxied").upserted_count == len(vectors)
    first = vectors[0]
    fetched = index.fetch(ids=[first["id"]], namespace="proxied")
    assert first["id"] in fetched.vectors
    top = index.query(vector=first["values"], top_k=1, namespace="proxied").matches
    assert top and top[0].id == first["id"]
    assert proxy.tunnels() > before, "the SDK did not go through the proxy"
