"""The official Pinecone Python SDK 8.1 (REST and gRPC) against a 3-node Conifer cluster."""

import numpy as np
import pytest
from pinecone import Pinecone, PodSpec, ServerlessSpec
from pinecone.exceptions import PineconeApiException, NotFoundException
from pinecone.grpc import PineconeGRPC

from conftest import HNSW_MIN_RECORDS, PROXY_PASSWORD, PROXY_USER, admin, engines, wait_for

from common import (DIM, META, N, VECTORS, check_pinecone_parity, check_through_proxy, exact_top_k,
                    oracle)


@pytest.fixture(scope="module", params=["rest", "grpc"])
def client(request, cluster):
    boot = cluster["bootstrap"]
    api = cluster["nodes"][0]["api_url"]
    cls = Pinecone if request.param == "rest" else PineconeGRPC
    return request.param, cls(api_key=boot["api_key"], host=api, ssl_ca_certs=cluster["ca_cert"])


def create_loaded(pc, resolve_host, name, n):
    if name in [i.name for i in pc.list_indexes()]:
        pc.delete_index(name)
    pc.create_index(name=name, dimension=DIM, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    desc = pc.describe_index(name)
    assert desc.status["ready"] is True
    index = pc.Index(host=resolve_host(desc.host))
    batch = []
    for i in range(n):
        batch.append({"id": f"v{i}", "values": VECTORS[i].tolist(), "metadata": META[i]})
        if len(batch) == 500:
            assert index.upsert(vectors=batch, namespace="main").upserted_count == 500
            batch = []
    wait_for(lambda: index.describe_index_stats().namespaces.get("main", {}).get("vector_count") == n,
             what="all records visible")
    return index


@pytest.fixture(scope="module")
def loaded(client, resolve_host):
    """10,000 records: above the HNSW threshold, so moved to HNSW by the maintenance loop."""
    transport, pc = client
    name = f"compat-{transport}"
    index = create_loaded(pc, resolve_host, name, N)
    yield transport, pc, index, name
    pc.delete_index(name)


@pytest.fixture(scope="module")
def small(client, resolve_host):
    """3,000 records: below the HNSW threshold, so searched exactly."""
    transport, pc = client
    name = f"exact-{transport}"
    yield create_loaded(pc, resolve_host, name, 3000)
    pc.delete_index(name)


def test_index_lifecycle(client, resolve_host):
    transport, pc = client
    name = f"life-{transport}"
    pc.create_index(name=name, dimension=8, metric="euclidean", spec=ServerlessSpec(cloud="aws", region="us-east-1"),
                    deletion_protection="enabled", tags={"team": "search"})
    desc = pc.describe_index(name)
    assert (desc.dimension, desc.metric, desc.deletion_protection) == (8, "euclidean", "enabled")
    assert desc.to_dict()["tags"] == {"team": "search"}
    assert name in [i.name for i in pc.list_indexes()]
    with pytest.raises(PineconeApiException) as refused:
        pc.delete_index(name)
    assert refused.value.status == 403
    pc.configure_index(name, deletion_protection="disabled", tags={"team": ""})
    assert pc.describe_index(name).deletion_protection == "disabled"
    pc.delete_index(name)
    assert name not in [i.name for i in pc.list_indexes()]
    with pytest.raises(NotFoundException):
        pc.describe_index(name)


def recall_at_10(index, n, queries=50):
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(queries):
        q = rng.normal(size=DIM).astype(np.float32)
        got = [m.id for m in index.query(vector=q.tolist(), top_k=10, namespace="main").matches]
        hits += len(set(got) & set(exact_top_k(q, 10, n=n)))
    return hits / (queries * 10)


def test_exact_recall_at_10(small):
    recall = recall_at_10(small, 3000)
    print(f"exact recall@10 = {recall:.4f}")
    assert recall >= 0.99


def test_hnsw_recall_at_10(loaded, cluster):
    assert N >= HNSW_MIN_RECORDS
    _, _, index, _ = loaded
    # Only this module's 10,000-record index can hold an HNSW namespace (the others are
    # below the threshold or deleted); wait until node 1, which answers, has swapped it in.
    wait_for(lambda: [e for (node, _, ns), e in engines(cluster).items() if node == 1 and ns == "main" and e == "hnsw"],
             timeout=120, what="the 10,000-record namespace served by HNSW on node 1")
    recall = recall_at_10(index, N)
    print(f"HNSW recall@10 = {recall:.4f}")
    assert recall >= 0.95


FILTERS = [
    {"genre": "drama"},
    {"genre": {"$eq": "comedy"}},
    {"genre": {"$ne": "action"}},
    {"year": {"$gt": 2010}},
    {"year": {"$gte": 2010}},
    {"score": {"$lt": 2.5}},
    {"score": {"$lte": 2.5}},
    {"genre": {"$in": ["horror", "drama"]}},
    {"genre": {"$nin": ["horror", "drama"]}},
    {"tags": "c"},
    {"tags": {"$in": ["a", "e"]}},
    {"tags": {"$nin": ["a"]}},
    {"live": True},
    {"missing": {"$exists": False}},
    {"year": {"$exists": True}},
    {"$and": [{"genre": "drama"}, {"year": {"$lt": 2000}}]},
    {"$or": [{"genre": "comedy"}, {"score": {"$gte": 9.5}}]},
    {"genre": "drama", "live": False, "year": {"$gte": 1995, "$lte": 2005}},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_filter_matches_oracle(loaded, flt):
    _, _, index, _ = loaded
    allowed = oracle(flt)
    q = np.random.default_rng(len(str(flt))).normal(size=DIM).astype(np.float32)
    k = 20
    res = index.query(vector=q.tolist(), top_k=k, namespace="main", filter=flt, include_metadata=True)
    got = [m.id for m in res.matches]
    assert got == exact_top_k(q, k, allowed)[: len(got)]
    assert len(got) == min(k, len(allowed))
    stats = index.describe_index_stats(filter=flt)
    assert stats.namespaces["main"].vector_count == len(allowed)


def test_fetch_update_delete_list_and_namespaces(loaded):
    transport, _, index, _ = loaded
    fetched = index.fetch(ids=["v1", "v2", "nope"], namespace="main")
    assert sorted(fetched.vectors.keys()) == ["v1", "v2"]
    assert np.allclose(fetched.vectors["v1"].values, VECTORS[1], atol=1e-6)
    assert fetched.vectors["v1"].metadata["genre"] == META[1]["genre"]

    index.upsert(vectors=[{"id": "tmp-1", "values": [1.0] * DIM, "metadata": {"k": "x"}}], namespace="scratch")
    index.update(id="tmp-1", set_metadata={"k": "y", "n": 3}, namespace="scratch")
    index.update(id="tmp-1", values=[0.5] * DIM, namespace="scratch")
    got = wait_for(lambda: (lambda v: v if v and v.metadata.get("k") == "y" else None)(
        index.fetch(ids=["tmp-1"], namespace="scratch").vectors.get("tmp-1")), what="update")
    assert got.metadata == {"k": "y", "n": 3.0}
    assert np.allclose(got.values, [0.5] * DIM)

    for i in range(25):
        index.upsert(vectors=[{"id": f"page-{i:02d}", "values": [float(i + 1)] * DIM}], namespace="scratch")
    ids = [i for page in index.list(prefix="page-", namespace="scratch", limit=10) for i in page]
    assert ids == [f"page-{i:02d}" for i in range(25)]

    index.delete(ids=["page-00", "page-01"], namespace="scratch")
    index.delete(filter={"k": {"$eq": "y"}}, namespace="scratch")
    wait_for(lambda: index.describe_index_stats().namespaces["scratch"].vector_count == 23, what="deletes")

    names = [ns.name for ns in index.list_namespaces()]
    assert "main" in names and "scratch" in names
    assert int(index.describe_namespace(namespace="scratch").record_count) == 23
    index.delete_namespace(namespace="scratch")
    wait_for(lambda: "scratch" not in index.describe_index_stats().namespaces, what="namespace deletion")


def test_error_cases(loaded):
    transport, pc, index, _ = loaded
    with pytest.raises(Exception) as bad_dim:
        index.upsert(vectors=[{"id": "bad", "values": [1.0, 2.0]}], namespace="main")
    assert "dimension" in str(bad_dim.value)
    with pytest.raises(Exception) as bad_topk:
        index.query(vector=[0.0] * DIM, top_k=10_001, namespace="main")
    assert "top_k" in str(bad_topk.value)
    with pytest.raises(NotFoundException):
        pc.describe_index("does-not-exist")


def test_pinecone_parity_from_field_reports(small, client):
    transport, pc = client
    check_pinecone_parity(pc, small, ServerlessSpec(cloud="aws", region="us-east-1"), transport)


def test_another_projects_index_host_is_unreachable(client, cluster, resolve_host):
    """A key of project A reaches nothing of project B, not even through B's index host."""
    transport, pc = client
    project = admin(cluster, "POST", "/admin/projects", {"name": f"isolated-{transport}"})
    key_b = admin(cluster, "POST", f"/admin/projects/{project['id']}/api-keys", {"name": "b"})["value"]
    cls = type(pc)
    pc_b = cls(api_key=key_b, host=cluster["nodes"][0]["api_url"], ssl_ca_certs=cluster["ca_cert"])
    pc_b.create_index(name="secret", dimension=DIM, metric="cosine",
                      spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    host_b = resolve_host(pc_b.describe_index("secret").host)
    try:
        # A's key: B's index by name is missing, and B's host answers 404 as well.
        with pytest.raises(NotFoundException):
            pc.describe_index("secret")
        with pytest.raises(Exception) as through_host:
            pc.Index(host=host_b).describe_index_stats()
        assert "not found" in str(through_host.value).lower() or "404" in str(through_host.value)
        # B's own key reaches it.
        assert pc_b.Index(host=host_b).describe_index_stats().total_vector_count == 0
    finally:
        pc_b.delete_index("secret")
        admin(cluster, "DELETE", f"/admin/projects/{project['id']}")


def test_index_actions_through_the_sdk_are_audited(client, cluster):
    """The SDK's index calls appear in the audit log as the project's API key, with the SDK's
    user agent, each event valid against docs/audit/event.schema.json (checked here by the
    Python jsonschema package, independently of the Rust suite's validator)."""
    import json
    import pathlib

    import jsonschema

    transport, pc = client
    name = f"audited-{transport}"
    pc.create_index(name=name, dimension=4, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    pc.configure_index(name, tags={"owner": "compat"})
    pc.delete_index(name)
    # The seed's query: event.resource_type index, event.resource_id the index's name.
    page = admin(cluster, "GET", f"/admin/audit-logs?resource_type=index&resource_id={name}&limit=1000")
    events = page["data"]
    assert [e["event"]["operation"] for e in events] == ["index.create", "index.configure", "index.delete"]
    assert [e["event"]["action"] for e in events] == ["create", "update", "delete"]
    assert all(e["event"]["resource_id"] == name for e in events)
    schema_path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "audit" / "event.schema.json"
    schema = json.loads(schema_path.read_text())
    for event in events:
        jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())
        assert event["actor"]["principal_type"] == "api_key"
        assert event["event"]["outcome"]["result"] == "success"
        assert "python" in (event["client"]["userAgent"] or "").lower(), event["client"]
    assert events[1]["event"]["parameters"]["tags"] == {"owner": "compat"}


def test_rest_and_grpc_through_an_http_connect_proxy(cluster, proxies, resolve_host, monkeypatch):
    """REST with the SDK's proxy_url and proxy_headers (basic authentication), gRPC (grpcio)
    through HTTPS_PROXY with the password in the URL, both through the authenticating
    tinyproxy, whose log must show the tunnels."""
    import urllib3

    _, authenticating = proxies
    boot, api, ca = cluster["bootstrap"], cluster["nodes"][0]["api_url"], cluster["ca_cert"]
    headers = urllib3.make_headers(proxy_basic_auth=f"{PROXY_USER}:{PROXY_PASSWORD}")
    pc = Pinecone(api_key=boot["api_key"], host=api, ssl_ca_certs=ca,
                  proxy_url=authenticating.url(), proxy_headers=headers)
    name = "proxied-v8"
    before = authenticating.tunnels()
    pc.create_index(name=name, dimension=DIM, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    assert authenticating.tunnels() > before, "create_index did not go through the proxy"
    try:
        host = resolve_host(pc.describe_index(name).host)
        rows = [{"id": f"p{i}", "values": VECTORS[i].tolist()} for i in range(20)]
        check_through_proxy(pc, pc.Index(host=host), authenticating, rows[:10])
        monkeypatch.setenv("https_proxy", authenticating.url(credentials=True))
        grpc = PineconeGRPC(api_key=boot["api_key"], host=api, ssl_ca_certs=ca)
        check_through_proxy(grpc, grpc.Index(host=host), authenticating, rows[10:])
    finally:
        pc.delete_index(name)


def test_backups_restore_jobs_and_collections(client, small, resolve_host):
    """The SDK's backup, restore-job and collection calls: a backup of the 3,000-record index,
    restored through create_index_from_backup (which polls until the index is ready), the
    job listed and described as Completed, the records equal; a collection, and an index
    created from it through PodSpec(source_collection=...)."""
    transport, pc = client
    src = f"exact-{transport}"
    backup = pc.create_backup(index_name=src, backup_name=f"nightly-{transport}", description="compat")
    assert backup.source_index_name == src
    assert backup.status in ("Initializing", "Ready")
    bid = backup.backup_id
    wait_for(lambda: pc.describe_backup(backup_id=bid).status == "Ready", timeout=60, what="backup ready")
    described = pc.describe_backup(backup_id=bid)
    assert (described.record_count, described.dimension, described.metric) == (3000, DIM, "cosine")
    assert described.name == f"nightly-{transport}"
    assert bid in [b.backup_id for b in pc.list_backups(index_name=src)]
    assert bid in [b.backup_id for b in pc.list_backups()]

    target = f"restored-{transport}"
    restored = pc.create_index_from_backup(backup_id=bid, name=target, tags={"from": "backup"}, timeout=120)
    assert restored.name == target and restored.status["ready"] is True
    jobs = [j for j in pc.list_restore_jobs() if j.target_index_name == target]
    assert len(jobs) == 1
    job = pc.describe_restore_job(job_id=jobs[0].restore_job_id)
    assert (job.status, job.backup_id, job.percent_complete) == ("Completed", bid, 100.0)
    index = pc.Index(host=resolve_host(pc.describe_index(target).host))
    wait_for(lambda: index.describe_index_stats().namespaces.get("main", {}).get("vector_count") == 3000,
             what="restored records visible")
    fetched = index.fetch(ids=["v0", "v1234", "v2999"], namespace="main").vectors
    for i in (0, 1234, 2999):
        assert np.array_equal(np.array(fetched[f"v{i}"].values, dtype=np.float32), VECTORS[i])
        assert fetched[f"v{i}"].metadata == META[i]
    pc.delete_index(target)
    pc.delete_backup(backup_id=bid)
    with pytest.raises(NotFoundException):
        pc.describe_backup(backup_id=bid)

    collection = f"coll-{transport}"
    pc.create_collection(name=collection, source=src)
    wait_for(lambda: pc.describe_collection(collection)["status"] == "Ready", timeout=60, what="collection ready")
    assert collection in pc.list_collections().names()
    described = pc.describe_collection(collection)
    assert (described["vector_count"], described["dimension"]) == (3000, DIM)
    from_collection = f"fromcoll-{transport}"
    pc.create_index(name=from_collection, dimension=DIM, metric="cosine",
                    spec=PodSpec(environment="us-east-1-aws", source_collection=collection), timeout=120)
    index = pc.Index(host=resolve_host(pc.describe_index(from_collection).host))
    wait_for(lambda: index.describe_index_stats().namespaces.get("main", {}).get("vector_count") == 3000,
             what="records restored from the collection")
    pc.delete_index(from_collection)
    pc.delete_collection(collection)
    assert collection not in pc.list_collections().names()
