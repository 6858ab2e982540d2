package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/clusterd/clusterd/sockshare"
	"golang.org/x/sys/unix"
)

// How a listener is healed, found by trying it on Linux 6.x:
//
//   - shutdown(SHUT_RD) of a listening TCP socket disconnects it (state
//     CLOSE, SO_ACCEPTCONN 0). An explicitly bound port stays bound, and
//     listen(2) on the same socket makes it listen again for every holder.
//     A port the kernel chose (port 0) is released, although getsockname
//     still reports it; bind(2) to the same address then takes it back
//     (bind fails with EINVAL on a socket whose port is still bound, which
//     tells the two cases apart), and listen(2) restores the socket for
//     every holder as well. Neither needs a worker restart.
//   - A socket that a worker then also connect(2)ed is a client socket:
//     listen(2) fails with EINVAL. (Linux 6.18 refuses connect(2) on a
//     socket that listened, with EINVAL.) A released socket that a worker
//     bound to another address would listen there: it is not restored
//     either. So does everything on a unix listener
//     after shutdown(SHUT_RD): it keeps SO_ACCEPTCONN 1 but refuses every
//     connection, and poll(2) reports POLLRDHUP. Such a socket is replaced by
//     a new one on the same address, and the workers that hold the old one
//     are restarted onto it.

// errNotSocket is a path that holds something other than a socket.
var errNotSocket = errors.New("not a socket")

// errCannotRelisten marks a socket that cannot listen again in place.
var errCannotRelisten = errors.New("the socket cannot listen again")

// check probes every stream listener; one that no longer listens is made to
// listen again, or replaced when that fails. exited is the worker whose exit
// prompted the check (nil for the periodic one) and running the live
// workers, for the log. It reports whether a socket was replaced: the
// workers must then restart to get it. Only the loop goroutine calls check.
func (ls *listeners) check(exited *worker, running []*worker) (replaced bool) {
	for i, f := range ls.shared {
		if f != nil && ls.probeOne(f, i, -1, exited, running) {
			replaced = true
		}
	}
	for slot, files := range ls.slots {
		for i, f := range files {
			if f != nil && i < len(ls.perTCP) && ls.perTCP[i] && ls.probeOne(f, i, slot, exited, running) {
				replaced = true
			}
		}
	}
	return replaced
}

// probeOne checks the listener of address i (slot -1: the shared one),
// heals it if it stopped listening, and reports whether it was replaced.
func (ls *listeners) probeOne(f *os.File, i, slot int, exited *worker, running []*worker) (replaced bool) {
	if i >= len(ls.watched) || !ls.watched[i] || ls.broken[f] {
		return false
	}
	_, isUnix := streamKind(ls.addrs[i])
	ok, err := listening(f, isUnix)
	if err != nil {
		ls.log.Warn("check listener", "addr", ls.addrs[i].String(), "name", ls.names[i], "error", err)
		return false
	}
	if ok {
		return false
	}
	kv := []any{"addr", ls.addrs[i].String(), "name", ls.names[i]}
	if !ls.cfg.Balance.overIPC() {
		// In the balanced modes no worker holds the socket: none to name.
		kv = append(kv, culprit(slot, exited, running)...)
	}
	err = relisten(f, ls.addrs[i], ls.backlog(), isUnix)
	if err == nil {
		ls.log.Warn("listener stopped listening; listening again", kv...)
		if slot < 0 && ls.restore != nil {
			ls.restore(i)
		}
		if ls.healed != nil {
			ls.healed(f, f)
		}
		return false
	}
	nf, rerr := ls.replace(i, slot)
	if rerr != nil {
		ls.log.Error("listener stopped listening and cannot be restored", append(kv, "error",
			fmt.Sprintf("%v; replace: %v", err, rerr))...)
		if ls.broken == nil {
			ls.broken = make(map[*os.File]bool)
		}
		ls.broken[f] = true // said once; the operator has to act
		return false
	}
	if slot < 0 {
		ls.shared[i] = nf
	} else {
		ls.slots[slot][i] = nf
	}
	if ls.healed != nil {
		ls.healed(f, nf)
	}
	if cerr := f.Close(); cerr != nil {
		ls.log.Warn("close replaced listener", "addr", ls.addrs[i].String(), "error", cerr)
	}
	ls.log.Warn("listener stopped listening; replaced by a new socket", append(kv, "reason", err.Error())...)
	if slot < 0 && ls.restore != nil {
		ls.restore(i)
	}
	return true
}

// culprit names the worker that ran on a listener when it was found dead:
// the slot's worker for a reuseport socket; for a shared one the worker
// whose exit prompted the check, or else every running worker. cause says
// what prompted the check: a worker's exit or the periodic check.
func culprit(slot int, exited *worker, running []*worker) []any {
	cause := "periodic check"
	if exited != nil {
		cause = "worker exited"
	}
	if slot >= 0 {
		if exited != nil && exited.slot.id == slot {
			return []any{"worker", slot, "pid", exited.pid, "cause", cause}
		}
		for _, w := range running {
			if w.slot.id == slot {
				return []any{"worker", slot, "pid", w.pid, "cause", cause}
			}
		}
		return []any{"worker", slot, "cause", cause}
	}
	if exited != nil {
		return []any{"worker", exited.slot.id, "pid", exited.pid, "cause", "worker exited"}
	}
	slots := make([]int, 0, len(running))
	pids := make([]int, 0, len(running))
	for _, w := range running {
		slots = append(slots, w.slot.id)
		pids = append(pids, w.pid)
	}
	return []any{"workers", slots, "pids", pids, "cause", "periodic check"}
}

// watchable reports whether check should watch the listener f bound to a:
// a stream socket that listens now.
func watchable(f *os.File, a net.Addr) bool {
	stream, isUnix := streamKind(a)
	if !stream {
		return false
	}
	ok, err := listening(f, isUnix)
	return err == nil && ok
}

// streamKind reports whether a listener's address is a stream socket's, and
// whether it is a unix one.
func streamKind(a net.Addr) (stream, isUnix bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		return true, false
	case *net.UnixAddr:
		return a.Net == "unix", true
	}
	return false, false
}

// backlog is the listen(2) backlog of the master's sockets.
func (ls *listeners) backlog() int {
	if b := ls.cfg.ListenOptions.Backlog; b > 0 {
		return b
	}
	return 1<<31 - 1 // the kernel caps it at net.core.somaxconn
}

// listening reports whether f still accepts connections: SO_ACCEPTCONN for
// TCP, and for a unix socket also no shutdown of its receive side.
func listening(f *os.File, isUnix bool) (bool, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var ok bool
	var opErr error
	err = rc.Control(func(fd uintptr) {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			opErr = os.NewSyscallError("getsockopt SO_ACCEPTCONN", err)
			return
		}
		ok = v == 1
		if !ok || !isUnix {
			return
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if _, err := unix.Poll(pfd, 0); err != nil {
			opErr = os.NewSyscallError("poll", err)
			return
		}
		ok = pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) == 0
	})
	if err == nil {
		err = opErr
	}
	return ok, err
}

// relisten makes a TCP socket that stopped listening listen again on addr,
// in place, so that every process holding it is served again.
func relisten(f *os.File, addr net.Addr, backlog int, isUnix bool) error {
	if isUnix {
		return errCannotRelisten
	}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return errCannotRelisten
	}
	sa, err := tcpSockaddr(ta)
	if err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var bindErr error
	err = rc.Control(func(fd uintptr) { bindErr = unix.Bind(int(fd), sa) })
	if err != nil {
		return err
	}
	switch {
	case bindErr == unix.EINVAL:
		// The socket is bound already: to addr (an explicit port stays
		// bound), which is what we want, or, when a worker bound the
		// released socket since, somewhere else, where listen would serve.
		got, err := sockshare.Addr(f)
		if err != nil {
			return err
		}
		if ga, ok := got.(*net.TCPAddr); !ok || ga.Port != ta.Port || !ga.IP.Equal(ta.IP) {
			return fmt.Errorf("%w: it is bound to %s now", errCannotRelisten, got)
		}
	case bindErr != nil:
		// EADDRINUSE: someone took the port.
		return fmt.Errorf("%w: %w", errCannotRelisten, os.NewSyscallError("bind", bindErr))
	}
	var opErr error
	err = rc.Control(func(fd uintptr) {
		if err := unix.Listen(int(fd), backlog); err != nil {
			opErr = fmt.Errorf("%w: %w", errCannotRelisten, os.NewSyscallError("listen", err))
		}
	})
	if err == nil {
		err = opErr
	}
	return err
}

func tcpSockaddr(a *net.TCPAddr) (unix.Sockaddr, error) {
	if ip4 := a.IP.To4(); ip4 != nil && len(a.IP) == net.IPv4len {
		sa := &unix.SockaddrInet4{Port: a.Port}
		copy(sa.Addr[:], ip4)
		return sa, nil
	}
	ip6 := a.IP.To16()
	if ip6 == nil {
		return nil, fmt.Errorf("address %s: not an IP address", a)
	}
	sa := &unix.SockaddrInet6{Port: a.Port}
	copy(sa.Addr[:], ip6)
	if a.Zone != "" {
		if n, err := strconv.Atoi(a.Zone); err == nil {
			sa.ZoneId = uint32(n)
		} else if ifi, err := net.InterfaceByName(a.Zone); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return sa, nil
}

// replace opens a new socket on the address of listener i (for slot, or
// shared when slot is -1), bound to the port the old one had.
func (ls *listeners) replace(i, slot int) (*os.File, error) {
	spec := ls.specs[i]
	if spec.Network == "" {
		return nil, errors.New("a socket from socket activation is not replaced: restart the socket unit")
	}
	spec = withPort(spec, ls.addrs[i])
	opts := ls.cfg.ListenOptions
	opts.ReusePort = slot >= 0
	f, err := sockshare.Listen(spec, opts)
	if err != nil {
		return nil, err
	}
	ls.created(spec)
	return f, nil
}

// fileID returns the device and inode of the file at path (not following a
// symbolic link).
func fileID(path string) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return 0, 0, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return uint64(st.Dev), st.Ino, fmt.Errorf("%s: %w", path, errNotSocket)
	}
	return uint64(st.Dev), st.Ino, nil
}
