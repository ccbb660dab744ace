"""The official Pinecone Python SDK 10.x (API version 2026-07; REST, and gRPC through its
Rust client, which trusts the CA named by SSL_CERT_FILE) against a 3-node Conifer cluster."""

import os

import numpy as np
import pytest
from pinecone import Pinecone, ServerlessSpec
from pinecone.grpc import PineconeGRPC

from common import DIM, META, N, VECTORS, check_pinecone_parity, check_through_proxy, exact_top_k, oracle
from conftest import PROXY_PASSWORD, PROXY_USER, wait_for

RECORDS = 3000


@pytest.fixture(scope="module", params=["rest", "grpc"])
def client(request, cluster):
    os.environ["SSL_CERT_FILE"] = cluster["ca_cert"]
    boot = cluster["bootstrap"]
    cls = Pinecone if request.param == "rest" else PineconeGRPC
    return request.param, cls(api_key=boot["api_key"], host=cluster["nodes"][0]["api_url"],
                              ssl_ca_certs=cluster["ca_cert"])


def count(index, namespace):
    stats = index.describe_index_stats()
    ns = stats.namespaces.get(namespace) if hasattr(stats.namespaces, "get") else None
    return getattr(ns, "vector_count", None) if ns is not None else 0


@pytest.fixture(scope="module")
def loaded(client, resolve_host):
    transport, pc = client
    name = f"v10-{transport}"
    pc.create_index(name=name, dimension=DIM, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    index = pc.Index(host=resolve_host(pc.describe_index(name).host))
    for start in range(0, RECORDS, 500):
        batch = [{"id": f"v{i}", "values": VECTORS[i].tolist(), "metadata": META[i]}
                 for i in range(start, start + 500)]
        assert index.upsert(vectors=batch, namespace="main").upserted_count == 500
    wait_for(lambda: count(index, "main") == RECORDS, what="all records visible")
    yield transport, pc, index
    pc.delete_index(name)


def test_index_lifecycle_in_2026_07_shapes(client):
    transport, pc = client
    name = f"v10-life-{transport}"
    pc.create_index(name=name, dimension=8, metric="euclidean", spec=ServerlessSpec(cloud="aws", region="us-east-1"),
                    deletion_protection="enabled", tags={"team": "search"})
    desc = pc.describe_index(name)
    assert desc.status.ready is True
    assert (desc.dimension, desc.metric, desc.deletion_protection) == (8, "euclidean", "enabled")
    assert (desc.deployment.cloud, desc.deployment.region) == ("aws", "us-east-1")
    assert dict(desc.tags) == {"team": "search"}
    assert name in [i.name for i in pc.list_indexes()]
    with pytest.raises(Exception) as refused:
        pc.delete_index(name)
    assert "deletion protection" in str(refused.value).lower()
    pc.configure_index(name, deletion_protection="disabled")
    assert pc.describe_index(name).deletion_protection == "disabled"
    pc.delete_index(name)
    assert name not in [i.name for i in pc.list_indexes()]


def test_query_recall_and_filters(loaded):
    _, _, index = loaded
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(20):
        q = rng.normal(size=DIM).astype(np.float32)
        got = [m.id for m in index.query(vector=q.tolist(), top_k=10, namespace="main").matches]
        hits += len(set(got) & set(exact_top_k(q, 10, n=RECORDS)))
    assert hits / 200 >= 0.99
    for flt in [{"genre": {"$in": ["drama", "horror"]}}, {"$and": [{"year": {"$gte": 2000}}, {"live": True}]},
                {"tags": {"$nin": ["a"]}}]:
        allowed = [i for i in oracle(flt) if i < RECORDS]
        q = rng.normal(size=DIM).astype(np.float32)
        got = [m.id for m in index.query(vector=q.tolist(), top_k=15, namespace="main", filter=flt).matches]
        assert got == exact_top_k(q, 15, allowed, n=RECORDS)[: len(got)] and len(got) == min(15, len(allowed))


def test_fetch_update_delete(loaded):
    _, _, index = loaded
    fetched = index.fetch(ids=["v1", "nope"], namespace="main")
    assert list(fetched.vectors.keys()) == ["v1"]
    assert np.allclose(fetched.vectors["v1"].values, VECTORS[1], atol=1e-6)
    index.upsert(vectors=[{"id": "t1", "values": [1.0] * DIM, "metadata": {"k": "x"}}], namespace="scratch")
    index.update(id="t1", set_metadata={"k": "y"}, namespace="scratch")
    wait_for(lambda: index.fetch(ids=["t1"], namespace="scratch").vectors["t1"].metadata.get("k") == "y",
             what="update visible")
    index.delete(ids=["t1"], namespace="scratch")
    wait_for(lambda: not index.fetch(ids=["t1"], namespace="scratch").vectors, what="delete visible")


def test_dimension_mismatch_is_refused(loaded):
    _, _, index = loaded
    with pytest.raises(Exception) as bad:
        index.upsert(vectors=[{"id": "bad", "values": [1.0, 2.0]}], namespace="main")
    assert "dimension" in str(bad.value)


def test_pinecone_parity_from_field_reports(loaded):
    transport, pc, index = loaded
    check_pinecone_parity(pc, index, ServerlessSpec(cloud="aws", region="us-east-1"), transport)


def test_rest_and_grpc_through_an_http_connect_proxy(cluster, proxies, resolve_host):
    """REST with the SDK's proxy_url and proxy_headers (basic authentication) through the
    authenticating tinyproxy; gRPC with proxy_url through the open one (10.2's gRPC client
    sends no proxy credentials, neither from the URL nor from headers); the proxies' logs
    must show the tunnels."""
    import base64

    open_proxy, authenticating = proxies
    os.environ["SSL_CERT_FILE"] = cluster["ca_cert"]
    boot, api, ca = cluster["bootstrap"], cluster["nodes"][0]["api_url"], cluster["ca_cert"]
    token = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    pc = Pinecone(api_key=boot["api_key"], host=api, ssl_ca_certs=ca,
                  proxy_url=authenticating.url(), proxy_headers={"Proxy-Authorization": f"Basic {token}"})
    name = "proxied-v10"
    before = authenticating.tunnels()
    pc.create_index(name=name, dimension=DIM, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    assert authenticating.tunnels() > before, "create_index did not go through the proxy"
    try:
        host = resolve_host(pc.describe_index(name).host)
        rows = [{"id": f"p{i}", "values": VECTORS[i].tolist()} for i in range(20)]
        check_through_proxy(pc, pc.Index(host=host), authenticating, rows[:10])
        grpc = PineconeGRPC(api_key=boot["api_key"], host=api, ssl_ca_certs=ca,
                            proxy_url=open_proxy.url())
        check_through_proxy(grpc, grpc.Index(host=host), open_proxy, rows[10:])
    finally:
        pc.delete_index(name)


def test_backups_restore_jobs_and_collections_in_2026_07_shapes(loaded, resolve_host):
    """SDK 10's backup calls in the 2026-07 shapes (no dimension or metric on a backup: its
    schema; percent_complete an integer), the restore through create_index_from_backup,
    which polls until the index is ready, and the collection calls."""
    transport, pc, index = loaded
    src = f"v10-{transport}"
    backup = pc.create_backup(index_name=src, backup_name=f"v10-{transport}", description="compat")
    assert backup.source_index_name == src
    bid = backup.backup_id
    wait_for(lambda: pc.describe_backup(backup_id=bid).status == "Ready", timeout=60, what="backup ready")
    described = pc.describe_backup(backup_id=bid)
    assert (described.record_count, described.dense_dimension) == (RECORDS, DIM)
    assert bid in [b.backup_id for b in pc.list_backups(index_name=src)]
    target = f"v10-restored-{transport}"
    restored = pc.create_index_from_backup(name=target, backup_id=bid, timeout=120)
    assert restored.status.ready is True
    jobs = [j for j in pc.list_restore_jobs() if j.target_index_name == target]
    assert len(jobs) == 1
    job = pc.describe_restore_job(job_id=jobs[0].restore_job_id)
    assert (job.status, job.percent_complete) == ("Completed", 100)
    restored_index = pc.Index(host=resolve_host(pc.describe_index(target).host))
    wait_for(lambda: count(restored_index, "main") == RECORDS, what="restored records visible")
    fetched = restored_index.fetch(ids=["v7"], namespace="main").vectors
    assert np.array_equal(np.array(fetched["v7"].values, dtype=np.float32), VECTORS[7])
    pc.delete_index(target)
    pc.delete_backup(backup_id=bid)

    collection = f"v10-coll-{transport}"
    pc.create_collection(name=collection, source=src)
    wait_for(lambda: pc.describe_collection(collection).status == "Ready", timeout=60, what="collection ready")
    assert collection in [c.name for c in pc.list_collections()]
    assert pc.describe_collection(collection).vector_count == RECORDS
    pc.delete_collection(collection)
    assert collection not in [c.name for c in pc.list_collections()]
