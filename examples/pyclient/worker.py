#!/usr/bin/env python3
"""A clusterd worker in Python: no Go, only docs/PROTOCOL.md.

    go build -o bin/ ./cmd/clusterd
    bin/clusterd run -w 2 --ready ipc -- python3 examples/pyclient/worker.py tcp://127.0.0.1:9000

It says hello and ready, sends the master a user message and a request, and
prints the reply; it echoes the master's user messages, answers its requests,
sends heartbeats at the interval the master asks for, and exits 0 when the
master drains it. Given a listen address, it asks the master for that socket
(passed over the IPC socket with SCM_RIGHTS) and answers HTTP on it.
"""

import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterd_worker as cw  # noqa: E402


def serve_http(listener):
    """Answers one connection of the listener with a one-line HTTP reply."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        body = ("hello from python pid %d\n" % os.getpid()).encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))


def main():
    conn = cw.Conn.from_env()
    if conn is None:
        print("pyclient: not started by clusterd (no CLUSTERD_IPC_FD)", file=sys.stderr)
        return 2
    slot, gen = cw.worker_env()
    master = conn.handshake(slot, gen)
    listener, addr = None, ""
    if len(sys.argv) > 1:
        listener, addr = conn.listen(sys.argv[1])
        listener.setblocking(False)
    conn.send(cw.READY, {"listeners": 1 if listener else 0})
    conn.send(cw.USER, {"hello": "from python", "pid": os.getpid(), "worker": slot, "addr": addr})
    try:
        reply = conn.request({"op": "ping", "pid": os.getpid()})
    except cw.RemoteError as e:
        reply = {"error": e.code}
    # The reply goes back as a user message too, so the master sees that the
    # round trip worked.
    conn.send(cw.USER, {"reply": reply})
    print("pyclient: worker %d pid %d: master replied %r" % (slot, os.getpid(), reply), flush=True)

    interval = master.get("heartbeat_ms", 0) / 1000.0
    seq = 0
    next_beat = time.monotonic()
    while True:
        timeout = None
        if interval > 0:
            now = time.monotonic()
            if now >= next_beat:
                seq += 1
                conn.send(cw.STATS, {"counters": {"heartbeats": seq}})
                conn.send(cw.HEARTBEAT, {"seq": seq})
                next_beat = now + interval
            timeout = max(0.0, next_beat - time.monotonic())
        if not conn.buffered():
            watch = [conn.sock] + ([listener] if listener else [])
            readable, _, _ = select.select(watch, [], [], timeout)
            if listener in readable:
                try:
                    serve_http(listener)
                except (BlockingIOError, socket.timeout, ConnectionError):
                    pass  # another worker took it, or the client left
            if conn.sock not in readable:
                continue
        try:
            m = conn.recv()
        except EOFError:
            return 0  # the master is gone
        for fd in m.fds:
            os.close(fd)  # nothing here keeps descriptors
        if m.kind == cw.HELLO:
            conn.master_hello(m)  # the master pauses or resumes us (an upgrade)
            continue
        if m.kind == cw.DRAIN:
            print("pyclient: draining until %s" % m.body.get("deadline"), flush=True)
            return 0
        if m.kind == cw.USER:
            conn.send(cw.USER, {"echo": m.body})
        elif m.kind == cw.REQUEST:
            conn.send(cw.RESPONSE, {"pong": m.body}, reply_to=m.id)


if __name__ == "__main__":
    sys.exit(main())
