#!/usr/bin/env bash
# Measures what relaying worker output costs the master (docs/BENCHMARKS.md,
# "Output relay"): workers writing short lines as fast as they can under
# clusterd with its stdout on /dev/null, --output prefix beside --output raw.
# Run from the repository root:
#   bench/relay.sh                          # this tree, 3 rounds of 5 s
#   BEFORE=HEAD~3 bench/relay.sh -rounds 5  # and a clusterd built from another commit, in the same run
# Other flags go to relaybench (-w workers, -line bytes, -rate MB/s, -d window).
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bench/bin/ ./cmd/clusterd ./bench/relaybench
args=()
if [[ -n "${BEFORE:-}" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git archive "$BEFORE" | tar -x -C "$tmp"
  (cd "$tmp" && go build -o clusterd ./cmd/clusterd)
  cp "$tmp/clusterd" bench/bin/clusterd-before
  args+=(-before bench/bin/clusterd-before)
fi
exec bench/bin/relaybench -bin bench/bin "${args[@]}" "$@"
