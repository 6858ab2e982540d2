#!/usr/bin/env bash
# New-connection rate (every request on a new connection: "Connection:
# close") of examples/hello under clusterd's four balancing modes, alone, and
# of an equivalent Node cluster in round-robin mode, with the same number of
# workers, one after the other in one run. Figures in docs/BENCHMARKS.md.
#   bench/balance.sh [WORKERS] [DURATION] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-2} dur=${2:-5s} conns=${3:-64}
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if ! command -v node >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
fi
go build -o bench/bin/ ./cmd/clusterd ./examples/hello
port=19411
wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $port" >&2
  return 1
}
measure() { # name, then the server command
  local name=$1; shift
  "$@" >/dev/null 2>&1 &
  local pid=$!
  wait_port
  local rps
  rps=$(wrk -t 2 -c "$conns" -d "$dur" -H 'Connection: close' "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  printf '%-22s %10s req/s\n' "$name" "$rps"
  port=$((port + 1))
}
for mode in shared reuseport round-robin least-conn; do
  measure "clusterd $mode" bench/bin/clusterd run -w "$workers" --ready ipc --balance "$mode" -- bench/bin/hello -addr "127.0.0.1:$port"
done
measure "one process" bench/bin/hello -addr "127.0.0.1:$port"
measure "node cluster rr" node bench/node_cluster_rr.js "$port" "$workers"
