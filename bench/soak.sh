#!/usr/bin/env bash
# The soak of docs/BENCHMARKS.md (not run by CI): examples/hello under
# clusterd with 2 workers for 10 minutes, a rolling reload every 5 s and a
# kill -9 of a random worker every 20 s, while two clients that never retry
# (keep-alive and Connection: close) keep it busy; the master's RSS, PSS, fd
# and thread counts are sampled every 30 s. Run from anywhere:
#   bench/soak.sh               # 10 minutes
#   bench/soak.sh -soak 1m      # shorter; flags go to clusterbench
# It exits non-zero when a request failed that no kill explains.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bench/bin/ ./cmd/clusterd ./examples/hello ./bench/clusterbench
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
echo "# $(date -u +%FT%TZ) uptime: $(uptime)"
exec bench/bin/clusterbench -bin bench/bin -run soak "$@"
