#!/usr/bin/env bash
# Sets up and runs Conifer on its embedded single-node default in ./conifer-data:
# installs dependencies, builds the release binary (the first build compiles RocksDB and
# FAISS and takes about half an hour on 2 cores), starts the node, waits until it serves,
# and prints how to call it. Stop it with: kill $(cat conifer-data/conifer.pid)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/conifer-target}"
echo "==> building conifer (release)"
cargo build --release --bin conifer
# The CLI on PATH: a copy of the release binary in CONIFER_BIN_DIR (default ~/.local/bin,
# which Debian's ~/.profile puts on PATH when it exists).
BIN_DIR="${CONIFER_BIN_DIR:-$HOME/.local/bin}"
mkdir -p "$BIN_DIR"
install -m 0755 "$CARGO_TARGET_DIR/release/conifer" "$BIN_DIR/conifer"
BIN="$BIN_DIR/conifer"
echo "==> conifer installed at $BIN"
on_path=1
case ":$PATH:" in *":$BIN_DIR:"*) ;; *) on_path=0 ;; esac

DATA="${CONIFER_DATA_DIR:-$PWD/conifer-data}"
API_ADDR="${CONIFER_API_ADDR:-127.0.0.1:7443}"
CLUSTER_ADDR="${CONIFER_CLUSTER_ADDR:-127.0.0.1:7444}"
# Each index gets its own port from this range, and its host is 127.0.0.1:<port>: no DNS.
# CONIFER_INDEX_PORT_RANGE= (empty) turns it off: index hosts are then host names.
INDEX_PORTS="${CONIFER_INDEX_PORT_RANGE-7500-7599}"
index_port_flags=()
[ -n "$INDEX_PORTS" ] && index_port_flags=(--index-port-range "$INDEX_PORTS")
mkdir -p "$DATA"
if [ -f "$DATA/conifer.pid" ] && kill -0 "$(cat "$DATA/conifer.pid")" 2>/dev/null; then
  echo "==> conifer already running (pid $(cat "$DATA/conifer.pid"))"
else
  echo "==> starting conifer in $DATA (log: $DATA/conifer.log)"
  nohup "$BIN" serve --data-dir "$DATA" --api-addr "$API_ADDR" --cluster-addr "$CLUSTER_ADDR" \
    "${index_port_flags[@]}" >>"$DATA/conifer.log" 2>&1 &
  echo $! >"$DATA/conifer.pid"
fi

echo -n "==> waiting for health"
for _ in $(seq 1 120); do
  if [ -f "$DATA/tls/ca.pem" ] && curl -sf --cacert "$DATA/tls/ca.pem" "https://$API_ADDR/health" >/dev/null 2>&1; then
    echo " ok"
    break
  fi
  if ! kill -0 "$(cat "$DATA/conifer.pid")" 2>/dev/null; then
    echo; echo "conifer exited; last log lines:" >&2; tail -20 "$DATA/conifer.log" >&2; exit 1
  fi
  echo -n "."; sleep 1
done
curl -sf --cacert "$DATA/tls/ca.pem" "https://$API_ADDR/health" >/dev/null || { echo "not healthy" >&2; exit 1; }

if [ "$on_path" = 0 ]; then
  echo "==> $BIN_DIR is not on PATH in this shell: export PATH=\"$BIN_DIR:\$PATH\""
fi
cat <<MSG

Conifer is serving.
  endpoint:     https://$API_ADDR
  index hosts:  ${INDEX_PORTS:+${API_ADDR%:*}:<port from $INDEX_PORTS> }(describe_index reports each)
  CA cert:      $DATA/tls/ca.pem
  credentials:  $DATA/bootstrap.json (mode 0600: admin_token, api_key, project_id, ...)

Try:
  curl --cacert $DATA/tls/ca.pem https://$API_ADDR/health
  export CONIFER_BOOTSTRAP=$DATA/bootstrap.json
  conifer index create docs --dimension 3
  echo '{"id": "a", "values": [0.1, 0.2, 0.3], "metadata": {"genre": "drama"}}' > records.jsonl
  conifer vectors upsert --index docs --file records.jsonl
  conifer vectors query --index docs --vector '[0.1, 0.2, 0.3]' --top-k 3 --include-metadata
  conifer project list
  conifer audit list
  sudo $BIN certs trust --bootstrap $DATA/bootstrap.json   # the CA into the system store + SSL_CERT_FILE line
The Python SDK, LangChain and LlamaIndex: README.md, "The first five minutes".
MSG
