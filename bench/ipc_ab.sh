#!/usr/bin/env bash
# Compares two or more builds of bench/ipc's benchmarks in one run: each
# REV (a commit, tag or branch) is built as a test binary, and the
# binaries run BENCH in turn, ROUNDS times, so that the machine's load
# falls on all of them alike. Each line is one binary's round: the rate,
# the CPU time per operation of the master and of the workers, and Node's
# figures measured right after it (bench/ipc/node_*.js), with ours / Node.
# Figures in docs/BENCHMARKS.md.
#   bench/ipc_ab.sh ROUNDS BENCH REV...
#   bench/ipc_ab.sh 3 Dispatch 7aaf8a7 HEAD
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bench/ipc_ab.sh ROUNDS BENCH REV... (ROUNDS a positive number)" >&2
  exit 2
fi
rounds=$1 bench=$2
shift 2
work=$(mktemp -d)
trap 'git worktree prune; rm -rf "$work"' EXIT
bins=()
for rev in "$@"; do
  name=$(git rev-parse --short "$rev^{commit}") || {
    echo "ipc_ab.sh: $rev: not a commit" >&2
    exit 2
  }
  git worktree add -q --detach "$work/$name" "$name"
  (cd "$work/$name" && go test -c -o "$work/$name.test" ./bench/ipc)
  git worktree remove --force "$work/$name"
  bins+=("$name")
done
# The benchmarks find node_*.js in their package directory.
cd bench/ipc
for _ in $(seq "$rounds"); do
  for name in "${bins[@]}"; do
    "$work/$name.test" -test.run '^$' -test.bench "$bench" -test.benchtime 2s |
      awk -v rev="$name" '/^Benchmark/ {
        printf "%s %s", rev, $1
        for (i = 3; i <= NF; i++) if ($i ~ /\/s$|cpu-us|x-node/) printf " %s=%s", $i, $(i-1)
        printf "\n"
      }'
  done
done
