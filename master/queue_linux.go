package master

import (
	"os"

	"golang.org/x/sys/unix"
)

// The accept queues of the master's TCP listeners, for autoscaling. On a
// listening socket, TCP_INFO's tcpi_unacked is the number of connections
// waiting in the accept queue and tcpi_sacked the queue's limit (the
// backlog), so the master reads the load waiting for its workers without
// touching a connection.

// acceptQueue sums the accept queues of every TCP listener of cs (shared,
// per slot and run-time ones). ok is false when none is TCP.
func (cs *clusterSockets) acceptQueue() (queued, limit int, ok bool) {
	add := func(f *os.File) {
		if f == nil {
			return
		}
		q, l, isTCP := listenQueue(f)
		if isTCP {
			queued, limit, ok = queued+q, limit+l, true
		}
	}
	for _, f := range cs.shared {
		add(f)
	}
	for _, files := range cs.slots {
		for i, f := range files {
			if i < len(cs.perTCP) && cs.perTCP[i] {
				add(f)
			}
		}
	}
	for _, rl := range cs.uniqueRuntime() {
		add(rl.shared)
		for _, f := range rl.slots {
			add(f)
		}
	}
	return queued, limit, ok
}

// listenQueue reads TCP_INFO of the listening socket f. It goes through
// SyscallConn, not f.Fd(): Fd would switch the socket, shared with every
// worker, to blocking mode.
func listenQueue(f *os.File) (queued, limit int, ok bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		return 0, 0, false // not TCP (a unix socket), or closed
	}
	if info.State != unix.BPF_TCP_LISTEN {
		return 0, 0, false
	}
	return int(info.Unacked), int(info.Sacked), true
}
