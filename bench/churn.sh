#!/usr/bin/env bash
# The master's memory under worker churn: one clusterd master with two
# examples/hello workers, a worker SIGKILLed every 300 ms, the master's RSS
# sampled every 10 s. Run from the repository root:
#   bench/churn.sh              # 10 minutes
#   bench/churn.sh 60           # 60 seconds
# Prints one CSV line per sample: elapsed seconds, restarts so far, VmRSS,
# RssAnon and RssFile in KiB, open fds and threads of the master.
# CHURN_GCTRACE=FILE writes the master's stderr with GODEBUG=gctrace=1 there:
# the Go heap's live size after each collection.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
interval=${CHURN_INTERVAL:-0.3}
sample=${CHURN_SAMPLE:-10}

go build -o bin/ ./cmd/clusterd ./examples/hello

errlog=/dev/null
if [[ -n "${CHURN_GCTRACE:-}" ]]; then
  errlog=$CHURN_GCTRACE
  export GODEBUG=gctrace=1
fi
bin/clusterd run --listen tcp://127.0.0.1:0 -w 2 --ready ipc --max-restarts -1 \
  --min-uptime 1ms --backoff-min 1ms --backoff-max 1ms --log-level error \
  -- bin/hello >/dev/null 2>"$errlog" &
unset GODEBUG
master=$!
trap 'kill -TERM $master 2>/dev/null; wait $master 2>/dev/null || true' EXIT

# workers lists the master's children that run examples/hello.
workers() {
  local kids pid
  kids=$(cat /proc/"$master"/task/*/children 2>/dev/null || true)
  for pid in $kids; do
    [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == hello ]] && echo "$pid"
  done
  return 0
}

status() { awk -v k="$1:" '$1 == k { print $2 }' /proc/"$master"/status; }

print_sample() {
  local fds threads
  fds=$(ls /proc/"$master"/fd | wc -l)
  threads=$(status Threads)
  echo "$1,$2,$(status VmRSS),$(status RssAnon),$(status RssFile),$fds,$threads"
}

# Wait for both workers.
for _ in $(seq 100); do
  pids=$(workers)
  [[ $(wc -w <<<"$pids") -ge 2 ]] && break
  sleep 0.1
done

echo "seconds,restarts,vmrss_kib,rssanon_kib,rssfile_kib,fds,threads"
start=$(date +%s)
next=$start
kills=0
while :; do
  now=$(date +%s)
  if (( now >= next )); then
    print_sample $((now - start)) "$kills"
    next=$((next + sample))
  fi
  (( now - start >= duration )) && break
  pids=$(workers)
  pid=${pids%%$'\n'*}
  if [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null; then
    kills=$((kills + 1))
  fi
  sleep "$interval"
done
