#!/usr/bin/env bash
# The abuse harness: every scenario of tests/src/abuse.rs (connection floods, slowloris,
# sign-in guessing, hashing bursts, merged-limit writes, oversized responses, refusal
# floods against the audit log, garbage-key floods, malformed gRPC) against a real 3-node
# cluster, with figures.
#
#   scripts/abuse/run.sh [--release] [--scale full|short] [--scenario NAME,...] [--out DIR]
#
# --release builds the node and the harness with optimizations (a cold release build takes
# about as long as the debug one): the figures the issue's targets are stated in.
# Writes DIR/report.json and DIR/report.md (default DIR: $CARGO_TARGET_DIR/abuse). Exits 0
# when every check held, 1 when one failed, 2 when the harness itself failed. The committed
# report is docs/security/abuse-report.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/conifer-target}"
export CARGO_TERM_PROGRESS_WHEN=never
profile=debug
args=()
has_out=0
for a in "$@"; do
  case "$a" in
    --release) profile=release ;;
    *) args+=("$a"); [ "$a" = "--out" ] && has_out=1 ;;
  esac
done
if [ "$profile" = release ]; then
  cargo build -q --release --bin conifer-abuse --bin conifer
else
  cargo build -q --bin conifer-abuse --bin conifer
fi
export CONIFER_BIN="$CARGO_TARGET_DIR/$profile/conifer"
[ "$has_out" = 1 ] || args+=(--out "$CARGO_TARGET_DIR/abuse-$profile")
exec "$CARGO_TARGET_DIR/$profile/conifer-abuse" "${args[@]}"
