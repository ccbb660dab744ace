#!/usr/bin/env bash
# The chaos harness: N seeded fault schedules against real conifer nodes on their own
# loopback addresses inside a private network namespace (unshare -rn; no root needed),
# with linearizability, durability, convergence and revocation checkers.
#
#   scripts/chaos/run.sh --schedules N --out DIR [--seed S] [--nodes 3..5] [--duration-s T]
#                        [--unsafe ack-before-commit] [--failpoints SPEC]
#
# Writes DIR/history.jsonl, DIR/summary.json and DIR/timeline.png. Exits 0 when every
# checker passed, 1 on any violation, 2 when the harness itself failed. Every run prints
# its seed; --seed replays the same fault schedules.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
scripts/install-deps.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/conifer-target}"
export CARGO_TERM_PROGRESS_WHEN=never
cargo build -q --bin conifer-chaos --bin conifer
export CONIFER_BIN="$CARGO_TARGET_DIR/debug/conifer"

out=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--out" ] && out="${args[$((i + 1))]:-}"
done
[ -n "$out" ] || { echo "usage: $0 --schedules N --out DIR [--seed S]" >&2; exit 2; }

status=0
"$CARGO_TARGET_DIR/debug/conifer-chaos" "$@" || status=$?

if [ -f "$out/summary.json" ]; then
  VENV="${CONIFER_VENV_CHAOS:-/var/tmp/conifer-venv-chaos}"
  scripts/venv.sh "$VENV" scripts/chaos/requirements.txt
  "$VENV/bin/python" scripts/chaos/timeline.py "$out"
  echo "==> report: $out/summary.json, $out/timeline.png, $out/history.jsonl"
fi
exit "$status"
