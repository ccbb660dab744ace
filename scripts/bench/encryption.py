"""Encryption at rest, measured on one release node (run through `scripts/bench/run.sh
encryption --out DIR`; not a test).

1. Encryption's share of the node's CPU time while it ingests upserts: `perf record`
   samples the node's process with call stacks (DWARF unwinding) while N records (random
   vectors with metadata) are upserted through the official SDK's gRPC client and applied;
   the share is the samples whose stack passes through the at-rest cipher's sealing or
   opening (`DataKey::seal_into` / `DataKey::open_body`, never inlined: the nonce, the copy
   and AES-256-GCM) over all the node's samples. Target: at most 5 %. TLS to the client
   (stacks through `rustls`) is counted apart, and so are AES-GCM samples whose stack could
   not be attributed to either (a check on the unwinding).
2. What a cold key cache adds: the node is killed and started again; its log gives the time
   it took to unwrap the index's keys (root -> project key -> data key) into the empty
   cache, which the index waits for before it serves, next to the warm query latency
   (p50 of 200 queries) and the time from the start to the first answered query.

Writes encryption.json into --out and prints a summary.
"""

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the single-node cluster helper)

AT_REST = re.compile(r"DataKey::(seal_into|open_body)")
TLS = re.compile(r"rustls::")
# Leaf functions of an AES-GCM implementation (ring's assembly, or RustCrypto's crates).
AES_GCM = re.compile(r"aes|gcm|ghash|polyval", re.IGNORECASE)
TARGET_SHARE = 0.05
BATCH = 100


def perf_shares(data):
    """Shares of the node's samples: (at-rest sealing/opening, TLS, AES-GCM leaves under
    neither, the 15 commonest leaf symbols) from a perf.data file recorded with stacks."""
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"],
                            capture_output=True, text=True, check=True).stdout
    total = at_rest = tls = stray = 0
    leaves = {}
    for sample in script.split("\n\n"):
        frames = [line.strip() for line in sample.strip().splitlines()]
        if not frames:
            continue
        # Each frame is "address symbol+offset"; the first is where the sample hit.
        symbols = [f.split(" ", 1)[1] if " " in f else "[unknown]" for f in frames]
        total += 1
        leaves[symbols[0]] = leaves.get(symbols[0], 0) + 1
        if any(AT_REST.search(s) for s in symbols):
            at_rest += 1
        elif any(TLS.search(s) for s in symbols):
            tls += 1
        elif AES_GCM.search(symbols[0]):
            stray += 1
    if total == 0:
        raise SystemExit("perf recorded no samples of the node")
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:15]
    return at_rest / total, tls / total, stray / total, [(n / total, s) for s, n in top]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--dimension", type=int, default=768)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from pinecone import ServerlessSpec
    from pinecone.grpc import PineconeGRPC

    # Exact search only: no HNSW build competes with the upserts for the CPU.
    cluster = bench.Cluster(random.randrange(21000, 40000, 100), 10**9)
    results = {"records": args.records, "dimension": args.dimension}
    try:
        manifest = cluster.manifest
        node = manifest["nodes"][0]
        pc = PineconeGRPC(api_key=manifest["bootstrap"]["api_key"], host=node["api_url"],
                          ssl_ca_certs=manifest["ca_cert"])
        pc.create_index(name="sealed", dimension=args.dimension, metric="cosine",
                        spec=ServerlessSpec(cloud="aws", region="us-east-1"))
        bench.wait(lambda: pc.describe_index("sealed").status["ready"], 60, "the index")
        # Address the node directly with the index named in gRPC metadata (no DNS needed).
        index = pc.Index(name="sealed", host=node["api_url"].removeprefix("https://"))
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((args.records, args.dimension), dtype=np.float32)

        perf_data = out / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-F", "997", "--call-graph", "dwarf",
                                 "-p", str(node["pid"]), "-o", str(perf_data)],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        started = time.perf_counter()
        for lo in range(0, args.records, BATCH):
            batch = [(f"rec-{i}", vectors[i].tolist(), {"n": i, "note": f"record {i}"})
                     for i in range(lo, min(lo + BATCH, args.records))]
            index.upsert(vectors=batch)
            print(f"\r  upserted {min(lo + BATCH, args.records)}/{args.records}", end="",
                  file=sys.stderr, flush=True)
        bench.wait(lambda: index.describe_index_stats().total_vector_count == args.records,
                   120, "every record applied")
        ingest_s = time.perf_counter() - started
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        share, tls, stray, top = perf_shares(perf_data)
        results.update(ingest_s=round(ingest_s, 2),
                       records_per_s=round(args.records / ingest_s),
                       encryption_cpu_share=round(share, 4),
                       encryption_target=TARGET_SHARE,
                       tls_cpu_share=round(tls, 4),
                       unattributed_aes_gcm_share=round(stray, 4),
                       top_symbols=[{"share": round(s, 4), "symbol": sym} for s, sym in top])
        print(f"\n==> encryption: {share:.2%} of the node's CPU samples while ingesting "
              f"{args.records} x {args.dimension} ({args.records / ingest_s:.0f} records/s); "
              f"target <= {TARGET_SHARE:.0%} (TLS to the client: {tls:.2%}; AES-GCM samples "
              f"attributed to neither: {stray:.2%})")

        query = vectors[0].tolist()
        warm = []
        for _ in range(200):
            t = time.perf_counter()
            index.query(vector=query, top_k=10)
            warm.append(time.perf_counter() - t)
        warm_p50_ms = float(np.percentile(warm, 50) * 1000)

        subprocess.run([cluster.script, "kill", cluster.dir, "1"], check=True, env=cluster.env)
        restarted = time.perf_counter()
        subprocess.run([cluster.script, "start", cluster.dir, "1"], check=True, env=cluster.env,
                       stdout=subprocess.DEVNULL)
        first = None
        deadline = time.time() + 120
        while first is None and time.time() < deadline:
            try:
                index.query(vector=query, top_k=10)
                first = time.perf_counter() - restarted
            except Exception:
                time.sleep(0.01)
        log = Path(cluster.dir, "node-1", "log").read_text(errors="replace")
        unwraps = [int(m) for m in re.findall(r"unwrap_us=(\d+)", log)]
        cold_us = unwraps[-1] if unwraps else None
        results.update(warm_query_p50_ms=round(warm_p50_ms, 3),
                       cold_key_unwrap_ms=None if cold_us is None else round(cold_us / 1000, 3),
                       restart_to_first_query_s=None if first is None else round(first, 2))
        print(f"==> cold key cache: the index keys unwrapped in "
              f"{cold_us / 1000 if cold_us is not None else float('nan'):.3f} ms after the restart "
              f"(warm query p50 {warm_p50_ms:.3f} ms; start to first answered query "
              f"{first if first is not None else float('nan'):.2f} s)")
    finally:
        cluster.down()
    (out / "encryption.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"==> wrote {out / 'encryption.json'}")


if __name__ == "__main__":
    main()
