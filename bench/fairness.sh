#!/usr/bin/env bash
# How evenly each of clusterd's balancing modes spreads requests over the
# workers: examples/hello answers with its pid, and wrk counts the responses
# of each pid (bench/fairness.lua). For every worker count and mode, one
# cluster serves two wrk runs one after the other: keep-alive connections,
# then a new connection per request ("Connection: close"). Each row gives
# the rate, max/min of the requests per worker (1.00 is even; "inf" when a
# worker got none) and the counts. Figures in docs/BENCHMARKS.md.
#   bench/fairness.sh [WORKER COUNTS] [DURATION] [CONNECTIONS]
#   bench/fairness.sh "2 4" 3s 64
set -euo pipefail
cd "$(dirname "$0")/.."
counts=${1:-2 4} dur=${2:-3s} conns=${3:-64}
for w in $counts; do
  if ! [[ $w =~ ^[1-9][0-9]*$ ]]; then
    echo "fairness.sh: worker count \"$w\": want a positive number" >&2
    exit 2
  fi
done
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
go build -o bench/bin/ ./cmd/clusterd ./examples/hello
port=19431
wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "fairness.sh: nothing listens on $port" >&2
  return 1
}
run_wrk() { # workers, then wrk's extra arguments; prints "rate ratio counts"
  local workers=$1; shift
  FAIR_WORKERS=$workers wrk -t 2 -c "$conns" -d "$dur" -s bench/fairness.lua "$@" "http://127.0.0.1:$port/" |
    awk '/^Requests\/sec/ {rps = $2}
         /^pid / {c = c (c == "" ? "" : " / ") $4}
         /^workers / {ratio = $12; if ($14 != 0) c = c " (" $14 " unparsed)"}
         END {printf "%s | %s | %s", rps, ratio, c}'
}
echo "| workers | mode | connections | req/s | max/min | requests per worker |"
echo "|---|---|---|---|---|---|"
for w in $counts; do
  for mode in shared reuseport round-robin least-conn; do
    bench/bin/clusterd run -w "$w" --ready ipc --balance "$mode" -- bench/bin/hello -addr "127.0.0.1:$port" >/dev/null 2>&1 &
    pid=$!
    wait_port
    echo "| $w | $mode | keep-alive | $(run_wrk "$w") |"
    echo "| $w | $mode | close | $(run_wrk "$w" -H 'Connection: close') |"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    port=$((port + 1))
  done
done
