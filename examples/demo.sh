#!/usr/bin/env bash
# Builds clusterd and examples/hello into bin/ and runs a demo cluster of two
# hello workers on 127.0.0.1:8080 (ADDR=host:port to change it); Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
addr=${ADDR:-127.0.0.1:8080}
go build -o bin/ ./cmd/clusterd ./examples/hello
cat <<TRY
clusterd demo: 2 workers of examples/hello on http://$addr (Ctrl-C stops the cluster)
Try, from another terminal:
  curl http://$addr/
      answered by one worker: its pid, slot and generation
  kill -HUP \$(cat bin/clusterd.pid)
      rolling reload: every worker replaced, no request lost
  kill -TTIN \$(cat bin/clusterd.pid)
      one worker more (kill -TTOU: one fewer)
  kill -9 PID
      crash one worker, by a pid from a "worker ready" line of the log below:
      its slot is refilled with a new generation
  pkill -9 -x hello -P \$(cat bin/clusterd.pid)
      crash them all: only this master's workers, not other users' processes
TRY
exec bin/clusterd run --listen "tcp://$addr" --workers 2 --ready ipc --pid-file bin/clusterd.pid -- bin/hello
