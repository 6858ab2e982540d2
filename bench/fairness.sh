#!/usr/bin/env bash
# How evenly each of clusterd's balancing modes spreads requests over the
# workers: examples/hello answers with its pid, and wrk counts the responses
# of each pid (bench/fairness.lua). For every worker count and mode, one
# cluster serves two wrk runs one after the other: keep-alive connections,
# then a new connection per request ("Connection: close"). Each row gives
# the rate, max/min of the requests per worker (1.00 is even; "inf" when a
# worker got none), the counts, and the connections each worker held one
# second into the run (ss -p: with keep-alive, the balancer's decision;
# with close, a snapshot). Figures in docs/BENCHMARKS.md.
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
# Each master's log stays in bench/results/fairness/WORKERS-MODE.log.
logs=bench/results/fairness
mkdir -p "$logs"
out=$(mktemp)
trap 'rm -f "$out" "$out.ss"' EXIT
# wait_ready waits for the master's "all workers ready": the port answers
# as soon as the first worker asked for it, and keep-alive connections
# opened then would all go to the workers ready at that moment.
wait_ready() {
  for _ in $(seq 600); do
    if grep -q 'all workers ready' "$log"; then return 0; fi
    sleep 0.05
  done
  echo "fairness.sh: the workers on $port were not ready within 30s:" >&2
  cat "$log" >&2
  return 1
}
run_wrk() { # workers, then wrk's extra arguments; prints the row's last columns
  local workers=$1; shift
  FAIR_WORKERS=$workers wrk -t 2 -c "$conns" -d "$dur" -s bench/fairness.lua "$@" "http://127.0.0.1:$port/" >"$out" &
  local wrk=$!
  # One second in, the connections each worker holds (ss -p names the
  # process of every socket): with keep-alive, what the balancer decided.
  sleep 1
  ss -tnpH state established "( sport = :$port )" | grep -o 'pid=[0-9]*' >"$out.ss" || true
  wait "$wrk"
  awk 'FNR == NR && /^Requests\/sec/ {rps = $2}
       FNR == NR && /^pid / {pids[++n] = $2; c = c (c == "" ? "" : " / ") $4}
       FNR == NR && /^workers / {ratio = $12; if ($14 != 0) c = c " (" $14 " unparsed)"}
       FNR != NR {sub("pid=", ""); held[$0]++}
       END {
         for (i = 1; i <= n; i++) h = h (i > 1 ? " / " : "") held[pids[i]] + 0
         printf "%s | %s | %s | %s", rps, ratio, c, h
       }' "$out" "$out.ss"
}
echo "| workers | mode | connections | req/s | max/min | requests per worker | connections held, 1 s in |"
echo "|---|---|---|---|---|---|---|"
for w in $counts; do
  for mode in shared reuseport round-robin least-conn; do
    log=$logs/$w-$mode.log
    bench/bin/clusterd run -w "$w" --ready ipc --balance "$mode" -- bench/bin/hello -addr "127.0.0.1:$port" >"$log" 2>&1 &
    pid=$!
    wait_ready
    echo "| $w | $mode | keep-alive | $(run_wrk "$w") |"
    echo "| $w | $mode | close | $(run_wrk "$w" -H 'Connection: close') |"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    port=$((port + 1))
  done
done
