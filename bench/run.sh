#!/usr/bin/env bash
# Drives real load (wrk) against examples/hello under clusterd and prints the
# figures recorded in docs/BENCHMARKS.md. Run from the repository root:
#   bench/run.sh                        # every scenario (about 10 minutes)
#   bench/run.sh -run throughput -d 5s  # one scenario; flags go to clusterbench
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
go build -o bench/bin/ ./cmd/clusterd ./examples/hello ./bench/clusterbench
exec bench/bin/clusterbench -bin bench/bin "$@"
