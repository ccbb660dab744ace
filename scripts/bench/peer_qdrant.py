"""Qdrant's engine in-process (qdrant-edge-py), measured as bench.py measures Conifer: the
same base vectors, held-out queries, `bucket` payload and oracles, HNSW with the same M and
ef_construct, queries one at a time with hnsw_ef = efSearch, cosine similarity.

Runs in its own venv (scripts/bench/requirements-qdrant.txt); bench.py starts it with
`python peer_qdrant.py INPUT.npz OUTPUT.json M EF_CONSTRUCTION EF_SEARCH K` and reads the
JSON: build time, unfiltered and filtered (per selectivity) QPS / latency / recall@K, and the
process's resident memory.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import qdrant_edge as q

VECTOR = "v"


def memory_mb():
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0
    return fields["VmRSS"], fields["VmHWM"]


def main():
    source, out, m, ef_construct, ef_search, k = sys.argv[1:7]
    m, ef_construct, ef_search, k = int(m), int(ef_construct), int(ef_search), int(k)
    data = np.load(source)
    base, queries, buckets = data["base"], data["queries"], data["buckets"]
    # Peak memory from here on: the data set as held, the shard, the search (writing 5 to
    # clear_refs resets VmHWM), as bench.py measures raw FAISS.
    Path("/proc/self/clear_refs").write_text("5")
    selectivities = json.loads(str(data["selectivities"]))
    truths = {label: data[f"truth_{label}"] for label in ["all", *selectivities]}

    directory = tempfile.mkdtemp(prefix="conifer-bench-qdrant-")
    config = q.EdgeConfig(
        vectors={VECTOR: q.EdgeVectorParams(size=base.shape[1], distance=q.Distance.Cosine)},
        # full_scan_threshold is Qdrant's default, in kilobytes of vectors: a filter allowing
        # fewer records than that much data is answered by an exact scan (about 51,000
        # GloVe-50 vectors, 1,700 ada-002 vectors; Conifer's cut-off is 10,000 records).
        hnsw_config=q.HnswIndexConfig(m=m, ef_construct=ef_construct, full_scan_threshold=10_000),
        # One search thread, as the other systems search one query at a time on one thread.
        max_search_threads=1,
    )
    shard = q.EdgeShard.create(directory, config)
    shard.update(q.UpdateOperation.create_field_index("bucket", q.PayloadSchemaType.Integer))
    t = time.time()
    batch = 1000
    for start in range(0, len(base), batch):
        end = min(start + batch, len(base))
        points = [q.Point(i, {VECTOR: base[i].tolist()}, {"bucket": int(buckets[i])}) for i in range(start, end)]
        shard.update(q.UpdateOperation.upsert_points(points))
    upsert_s = time.time() - t
    t = time.time()
    shard.optimize()  # builds the HNSW segments, as bench.py waits for Conifer's graph
    build_s = time.time() - t
    info = shard.info()
    params = q.SearchParams(hnsw_ef=ef_search)

    def measure(truth, condition):
        latencies, hits, expected = [], 0, 0
        for i, vector in enumerate(queries):
            request = q.QueryRequest(limit=k, query=q.Query.Nearest(vector.tolist(), using=VECTOR),
                                     filter=condition, params=params)
            t = time.perf_counter()
            found = shard.query(request)
            latencies.append(time.perf_counter() - t)
            wanted = {int(x) for x in truth[i] if x >= 0}
            hits += len({int(p.id) for p in found} & wanted)
            expected += len(wanted)
        lat = np.array(latencies) * 1000.0
        return {"qps": len(lat) / (lat.sum() / 1000.0), "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)), "recall": hits / max(expected, 1)}

    measure(truths["all"], None)  # warm-up
    result = {"upsert_s": upsert_s, "build_s": build_s, "segments": info.segments_count,
              "indexed_vectors": info.indexed_vectors_count, "unfiltered": measure(truths["all"], None),
              "filtered": {}}
    for label, below in selectivities.items():
        condition = q.Filter(must=[q.FieldCondition("bucket", range=q.RangeFloat(lt=float(below)))])
        row = measure(truths[label], condition)
        row["qps_vs_unfiltered"] = row["qps"] / result["unfiltered"]["qps"]
        result["filtered"][label] = row
    rss, peak = memory_mb()
    result.update(rss_rest_mb=rss, rss_peak_mb=peak, rss_bytes_per_vector=rss * 2**20 / len(base))
    shard.close()
    Path(out).write_text(json.dumps(result))
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
