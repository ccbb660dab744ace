#!/usr/bin/env bash
# Runs a cluster of real conifer nodes on loopback.
#
#   scripts/local-cluster.sh up N DIR    start N nodes (node 1 bootstraps, the rest join as voters)
#                                        and write DIR/cluster.json
#   scripts/local-cluster.sh down DIR    stop every node (SIGTERM)
#   scripts/local-cluster.sh kill DIR ID SIGKILL node ID
#   scripts/local-cluster.sh start DIR ID restart node ID with its original flags
#
# Ports: node i listens on BASE_PORT+i (client) and BASE_PORT+100+i (cluster); BASE_PORT
# defaults to 17000. With INDEX_PORT_RANGE=FIRST-LAST every node also gets that index port
# range (index hosts <IP>:<port>, no DNS) and node i listens on its own IP, 127.0.0.i, so
# each can open every index port; without it every node is on 127.0.0.1 and index hosts are
# host names. The binary is $CONIFER_BIN, or the release build when the quickstart made
# one, else the debug build in CARGO_TARGET_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/conifer-target}"
if [ -n "${CONIFER_BIN:-}" ]; then
  BIN="$CONIFER_BIN"
elif [ -x "$CARGO_TARGET_DIR/release/conifer" ]; then
  BIN="$CARGO_TARGET_DIR/release/conifer"
else
  BIN="$CARGO_TARGET_DIR/debug/conifer"
fi
BASE_PORT="${BASE_PORT:-17000}"
INDEX_PORT_RANGE="${INDEX_PORT_RANGE:-}"

# The IP node $1 listens on.
node_ip() { if [ -n "$INDEX_PORT_RANGE" ]; then echo "127.0.0.$1"; else echo 127.0.0.1; fi; }

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

ensure_bin() {
  if [ ! -x "$BIN" ]; then
    echo "==> building conifer"
    (cd "$ROOT" && cargo build --bin conifer)
  fi
}

wait_health() { # DIR ID
  local dir=$1 id=$2 port=$((BASE_PORT + $2))
  for _ in $(seq 1 300); do
    if curl -sf --cacert "$dir/ca/ca.pem" "https://$(node_ip "$2"):$port/health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$dir/node-$id/pid")" 2>/dev/null; then
      echo "node $id exited:" >&2; tail -20 "$dir/node-$id/log" >&2; return 1
    fi
    sleep 0.2
  done
  echo "node $id not healthy in time" >&2; return 1
}

start_node() { # DIR ID
  local dir=$1 id=$2
  local -a cmd
  read -r -a cmd <"$dir/node-$id/cmd"
  nohup "${cmd[@]}" >>"$dir/node-$id/log" 2>&1 &
  echo $! >"$dir/node-$id/pid"
}

write_manifest() { # DIR N
  local dir=$1 n=$2
  python3 - "$dir" "$n" "$BASE_PORT" "$INDEX_PORT_RANGE" <<'PY'
import json, sys, os
d, n, base, index_ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
boot = json.load(open(os.path.join(d, "node-1", "data", "bootstrap.json")))
nodes = []
for i in range(1, n + 1):
    nd = os.path.join(d, f"node-{i}")
    ip = f"127.0.0.{i}" if index_ports else "127.0.0.1"
    nodes.append({"id": i, "api_url": f"https://{ip}:{base + i}",
                  "cluster_addr": f"{ip}:{base + 100 + i}",
                  "pid": int(open(os.path.join(nd, "pid")).read()), "data_dir": os.path.join(nd, "data")})
manifest = {"nodes": nodes, "ca_cert": os.path.join(d, "ca", "ca.pem"), "bootstrap": boot,
            "index_port_range": index_ports or None}
path = os.path.join(d, "cluster.json")
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(manifest, f, indent=2)
print(path)
PY
}

cmd=${1:-}; shift || true
case "$cmd" in
  up)
    [ $# -eq 2 ] || usage
    n=$1; dir=$(mkdir -p "$2" && cd "$2" && pwd)
    ensure_bin
    [ -f "$dir/ca/ca.pem" ] || "$BIN" certs ca --out "$dir/ca" >/dev/null
    ports=""
    [ -n "$INDEX_PORT_RANGE" ] && ports="--index-port-range $INDEX_PORT_RANGE"
    for i in $(seq 1 "$n"); do
      mkdir -p "$dir/node-$i"
      ip=$(node_ip "$i")
      [ -f "$dir/node-$i/tls/node.pem" ] || "$BIN" certs node --ca-dir "$dir/ca" --id "$i" --host "$ip" --out "$dir/node-$i/tls" >/dev/null
      join=""
      [ "$i" -gt 1 ] && join="--join $(node_ip 1):$((BASE_PORT + 101))"
      echo "$BIN serve --data-dir $dir/node-$i/data --node-id $i --api-addr $ip:$((BASE_PORT + i)) --cluster-addr $ip:$((BASE_PORT + 100 + i)) --tls-dir $dir/node-$i/tls --keyring $dir/node-$i/keyring.json --backup-dir $dir/backups $ports $join" >"$dir/node-$i/cmd"
      start_node "$dir" "$i"
      wait_health "$dir" "$i"
      echo "==> node $i serving on https://$ip:$((BASE_PORT + i))"
    done
    write_manifest "$dir" "$n"
    ;;
  down)
    [ $# -eq 1 ] || usage
    for p in "$1"/node-*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
    ;;
  kill)
    [ $# -eq 2 ] || usage
    pid=$(cat "$1/node-$2/pid")
    kill -9 "$pid"
    # Wait until it is gone: its RocksDB lock is released only then.
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    ;;
  start)
    [ $# -eq 2 ] || usage
    dir=$(cd "$1" && pwd)
    start_node "$dir" "$2"
    wait_health "$dir" "$2"
    n=$(ls -d "$dir"/node-* | wc -l)
    write_manifest "$dir" "$n" >/dev/null
    ;;
  *) usage ;;
esac
