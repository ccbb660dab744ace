"""Backup and restore throughput (records/s, MB/s) next to a plain copy of the data directory.

Starts a single Conifer node (scripts/local-cluster.sh; the release build unless
CONIFER_BIN names another), loads GloVe-400k (50 dimensions) through the official SDK's
gRPC client, waits until the records are applied, then measures in one run:

- copy: `cp -a` of the node's data directory once the HNSW graph is built and saved (the
  baseline: bytes on disk, no consistency, no encryption of its own, nothing checked);
- backup: POST /indexes/{name}/backups until the backup is Ready (a consistent copy at one
  log position, sealed chunks and manifest written to the backup directory);
- restore: POST /backups/{id}/create-index until the restore job is Completed (every chunk
  checked, records written through the new shard's Raft group, digests compared).

Reports records/s and MB/s of each (MB of raw vectors: records x dimension x 4 bytes, the
same for all three, so the rates compare), the backup's size, and each time as a ratio to
the copy. Writes backup.csv into --out and prints the table.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Cluster, load, wait  # noqa: E402


def du(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N vectors (0 = all 400k)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base, _ = load("glove", 0, args.limit)
    n, dim = base.shape
    raw_mb = n * dim * 4 / 1e6
    print(f"==> GloVe: {n} x {dim} ({raw_mb:.1f} MB of vectors)")

    # The HNSW threshold equals the data set (as in bench.py): the graph is built once, in
    # the background, after the load, instead of growing one insertion at a time (which
    # makes the load, not the backup, the long part of this run). The restored index is
    # built the same way, after its job completes.
    cluster = Cluster(base_port=18400, hnsw_min_records=n)
    try:
        from pinecone import ServerlessSpec
        from pinecone.grpc import PineconeGRPC

        boot = cluster.manifest["bootstrap"]
        api = cluster.manifest["nodes"][0]["api_url"]
        pc = PineconeGRPC(api_key=boot["api_key"], host=api, ssl_ca_certs=cluster.manifest["ca_cert"])
        pc.create_index(name="glove", dimension=dim, metric="cosine",
                        spec=ServerlessSpec(cloud="aws", region="us-east-1"))
        index = pc.Index(name="glove", host=api.removeprefix("https://"))
        batch = 1000
        for start in range(0, n, batch):
            index.upsert(vectors=[(str(i), base[i].tolist()) for i in range(start, min(start + batch, n))])
            if start % 50_000 == 0:
                print(f"    upserted {start}/{n}", flush=True)
        wait(lambda: index.describe_index_stats().total_vector_count == n, 600, "every record visible")

        # Copy a quiet directory: after the HNSW graph is built and saved (the snapshot that
        # saves it also compacts), so RocksDB is not replacing files under `cp`.
        def namespace():
            # Upserts without a namespace land in the default one, `__default__`.
            info = cluster.admin("GET", "/admin/cluster")
            return [ns for sh in info["shards"] for ns in sh["namespaces"] if ns["name"] == "__default__"]

        wait(lambda: [ns["engine"] for ns in namespace()] == ["hnsw"], 3600, "HNSW index")
        wait(lambda: [ns["index_saved"] for ns in namespace()] == [True], 600, "HNSW index saved")
        time.sleep(5)
        data_dir = Path(cluster.dir, "node-1", "data")
        copy_dir = Path(cluster.dir, "copy")
        for attempt in range(3):
            t = time.time()
            copied = subprocess.run(["cp", "-a", str(data_dir), str(copy_dir)])
            copy_s = time.time() - t
            if copied.returncode == 0:
                break
            # A compaction removed a file mid-copy: a plain copy of a live database is not
            # even complete, let alone consistent. Try again on a fresh copy.
            shutil.rmtree(copy_dir, ignore_errors=True)
        else:
            raise RuntimeError("cp -a of the data directory failed 3 times")
        copy_bytes = du(copy_dir)
        shutil.rmtree(copy_dir)

        t = time.time()
        backup = pc.create_backup(index_name="glove", backup_name="bench")
        wait(lambda: pc.describe_backup(backup_id=backup.backup_id).status == "Ready", 3600, "backup ready")
        backup_s = time.time() - t
        described = pc.describe_backup(backup_id=backup.backup_id)
        assert described.record_count == n, described

        t = time.time()
        pc.create_index_from_backup(backup_id=backup.backup_id, name="glove-restored", timeout=-1)
        jobs = [j for j in pc.list_restore_jobs() if j.target_index_name == "glove-restored"]

        def done():
            return pc.describe_restore_job(job_id=jobs[0].restore_job_id).status != "Pending"

        wait(done, 3600, "restore complete")
        restore_s = time.time() - t
        job = pc.describe_restore_job(job_id=jobs[0].restore_job_id)
        assert job.status == "Completed", job
    finally:
        cluster.down()

    rows = [
        {"step": "copy of the data directory (baseline)", "seconds": copy_s, "bytes": copy_bytes},
        {"step": "backup", "seconds": backup_s, "bytes": described.size_bytes},
        {"step": "restore", "seconds": restore_s, "bytes": described.size_bytes},
    ]
    for row in rows:
        row["records_per_s"] = n / row["seconds"]
        row["vector_mb_per_s"] = raw_mb / row["seconds"]
        row["ratio_to_copy"] = row["seconds"] / copy_s
    with open(out / "backup.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'step':40} {'s':>8} {'records/s':>11} {'MB/s':>8} {'bytes':>12} {'x copy':>7}")
    for r in rows:
        print(f"{r['step']:40} {r['seconds']:8.2f} {r['records_per_s']:11.0f} {r['vector_mb_per_s']:8.1f} "
              f"{r['bytes']:12d} {r['ratio_to_copy']:7.2f}")
    print(json.dumps({"records": n, "dimension": dim}))


if __name__ == "__main__":
    main()
