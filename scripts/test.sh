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
echo "==> tests"
# Integration tests start several real clusters; two at a time keeps 2 cores responsive.
cargo test --workspace -- --test-threads=2

echo "==> compat suite (official Pinecone SDK 8.1, REST and gRPC, 3-node cluster)"
VENV="${CONIFER_VENV_V8:-/var/tmp/conifer-venv-v8}"
REQ=tests/compat/requirements-v8.txt
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$REQ"
  cp "$REQ" "$VENV/requirements.txt"
fi
"$VENV/bin/python" -m pytest -q tests/compat
