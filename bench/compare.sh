#!/usr/bin/env bash
# The reproducible comparison of docs/BENCHMARKS.md: the same 2-worker HTTP
# server as one process, under a bare launcher (the floor), under clusterd
# (shared, reuseport, the library worker on the shared socket and with
# --balance round-robin and least-conn, a Node server on fd 3), Node's
# cluster module (round-robin and SCHED_NONE), PM2's cluster mode and
# gunicorn, interleaved round by round. Run from anywhere, as root (it
# installs what is missing: Debian's wrk, gunicorn and nodejs, and PM2 from
# npm into bench/.pm2-prefix with its own PM2_HOME):
#   bench/compare.sh                      # 3 rounds, about 13 minutes on 2 cores
#   bench/compare.sh -rounds 1 -d 2s      # a short run; flags go to clusterbench
# Results: bench/results/compare.json and compare.md (the table), and the
# charts docs/compare-*.png. Everything runs on 127.0.0.1; every process it
# starts is stopped by pid, also when it is interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v gunicorn >/dev/null || need+=(gunicorn)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
pm2=$root/bench/.pm2-prefix/node_modules/.bin/pm2
if [[ ! -x $pm2 ]]; then
  npm install --prefix "$root/bench/.pm2-prefix" --no-audit --no-fund --loglevel=error pm2@7.0.4 >/dev/null
fi
export PM2_HOME=$root/bench/.pm2-home

go build -o bench/bin/ ./cmd/clusterd ./examples/hello ./bench/clusterbench ./bench/goserver ./bench/launcher

# Every process of the run inherits this mark; the trap finds by it, and
# kills by pid, whatever is left.
mark="compare-$$-$(date +%s)"
bench_pid=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $bench_pid ]] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$bench_pid" 2>/dev/null || true
  fi
  "$pm2" kill >/dev/null 2>&1 || true
  local left=()
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    if { tr "\0" "\n" <"$env"; } 2>/dev/null | grep -qxF "CLUSTERBENCH_MARK=$mark"; then
      left+=("$pid")
    fi
  done
  if ((${#left[@]})); then
    echo "compare.sh: killing ${#left[@]} leftover processes: ${left[*]}" >&2
    kill -KILL "${left[@]}" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "# $(date -u +%FT%TZ) uptime: $(uptime)"
CLUSTERBENCH_MARK=$mark bench/bin/clusterbench -bin bench/bin -run compare -src "$root" -pm2 "$pm2" -pm2-home "$PM2_HOME" \
  -d 4s -out bench/results/compare.json "$@" &
bench_pid=$!
wait "$bench_pid"
bench_pid=
echo "# $(date -u +%FT%TZ) uptime: $(uptime)"
bench/bin/clusterbench -run charts -in bench/results/compare.json -charts-dir docs >bench/results/compare.md
cat bench/results/compare.md
