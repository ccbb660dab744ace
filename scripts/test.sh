#!/usr/bin/env bash
# Sets up and runs every check and test: formatting, clippy (-D warnings), unit tests,
# openraft's storage suite, and the real-process integration tests.
#
# The build directory lives outside the clone (CARGO_TARGET_DIR, default
# /var/tmp/conifer-target) so a fresh clone reuses the ~30-minute cold build of
# RocksDB + FAISS.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/conifer-target}"
export CARGO_TERM_PROGRESS_WHEN=never

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> build"
cargo build --workspace --all-targets
export CONIFER_BIN="$CARGO_TARGET_DIR/debug/conifer"
# moto's server mode: the real AWS KMS (and IAM) API the tests of keys in KMS start on
# 127.0.0.1 (tests/src/kms.rs).
export CONIFER_MOTO_VENV="${CONIFER_VENV_PREFIX:-/var/tmp/conifer-venv}-moto"
scripts/venv.sh "$CONIFER_MOTO_VENV" tests/kms/requirements-moto.txt
echo "==> tests"
# Integration tests start several real clusters; two at a time keeps 2 cores responsive.
# They include every abuse scenario at short scale (tests/tests/abuse.rs; the full run with
# its report is scripts/abuse/run.sh).
cargo test --workspace -- --test-threads=2

# The compat suite: the official Pinecone Python SDK, 8.1 (API 2025-10) and 10.x (API
# 2026-07), each over REST and gRPC against its own 3-node cluster, in both index-host
# modes: `ports` (each index its own port, hosts <IP>:<port>, no DNS) and `names` (host
# names, mapped through /etc/hosts entries the suite adds and removes). Each SDK lives in a
# venv outside the clone, rebuilt only when its requirements change.
compat() { # VERSION MODE
  local venv="${CONIFER_VENV_PREFIX:-/var/tmp/conifer-venv}-$1"
  scripts/venv.sh "$venv" "tests/compat/requirements-$1.txt"
  echo "==> compat suite: Pinecone SDK $1, index hosts by $2"
  CONIFER_COMPAT_HOSTS="$2" "$venv/bin/python" -m pytest -q "tests/compat/test_sdk_$1.py"
}
compat v8 ports
compat v10 ports
compat v8 names
compat v10 names

# The integrations, each in its own venv with the SDK it pins, set up as its documentation
# says, against one node: LangChain (SDK 7.x) over `serve --dev-http`, LlamaIndex (SDK 9.x)
# over TLS with the bundle of `conifer certs trust`.
integration() { # NAME
  local venv="${CONIFER_VENV_PREFIX:-/var/tmp/conifer-venv}-$1"
  scripts/venv.sh "$venv" "tests/compat/requirements-$1.txt"
  echo "==> integration: $1"
  "$venv/bin/python" -m pytest -q "tests/compat/test_$1.py"
}
integration langchain
integration llamaindex

# The README's Python snippets, run as written in the venv of what they use
# (tests/compat/test_readme.py): the SDK snippet with 8.1 and 10.x, LangChain's, LlamaIndex's.
readme() { # VENV KINDS
  echo "==> README snippets: $2 ($1)"
  CONIFER_README_BLOCKS="$2" "${CONIFER_VENV_PREFIX:-/var/tmp/conifer-venv}-$1/bin/python" \
    -m pytest -q tests/compat/test_readme.py
}
readme v8 sdk
readme v10 sdk
readme langchain langchain
readme llamaindex llamaindex

# A short chaos run (the long one is `scripts/chaos/run.sh --schedules 200`): a few seeded
# fault schedules on 5 nodes, every checker on. Each run draws a new seed and prints it.
echo "==> chaos: short run"
CHAOS_OUT="${CONIFER_CHAOS_OUT:-$CARGO_TARGET_DIR/chaos-short}"
rm -rf "$CHAOS_OUT"
scripts/chaos/run.sh --schedules 3 --nodes 5 --duration-s 15 --out "$CHAOS_OUT"
