package master

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The readiness probe of ReadyListening. A starting worker is ready once
// it waits for connections on a listener it inherited, which /proc shows
// without the worker's help:
//
//   - a thread blocked in accept(2) or accept4(2) has that syscall's number
//     in /proc/PID/task/TID/syscall, followed by its first argument, the fd;
//   - a thread blocked in poll(2)/ppoll(2) or select(2)/pselect6(2) (gunicorn's
//     sync worker, puma) has the address of its pollfd array or read fd_set
//     there, which the master reads from /proc/PID/mem (the same ptrace
//     access check as the syscall file) to find the listener's fd in it;
//   - an event loop (Go's runtime, libuv, asyncio, lighttpd, nginx) has the
//     listener in an epoll set: /proc/PID/fdinfo/N of an anon_inode:[eventpoll]
//     fd lists every registered file as "tfd: N ... ino: X".
//
// Both are matched by the listener's inode (from fstat of the master's
// copy), not by fd number, so a worker that dups its fd is still seen, and
// the worker's descendants are searched too (servers that accept in forked
// children). A server that waits some other way (io_uring, a busy loop, a
// socket of its own) is ready after the fallback delay, as is a worker with
// no inherited listener.
//
// The probe runs in its own goroutine per starting worker and posts a ready
// event, so the loop never waits on /proc. It samples every
// probeFirstInterval at first and backs off to probeMaxInterval, and stops
// at readiness: an idle cluster costs nothing.

const (
	probeFirstInterval = 2 * time.Millisecond
	probeMaxInterval   = 50 * time.Millisecond
)

// waitKind is how a blocked syscall can wait on a listener.
type waitKind int

const (
	waitNone   waitKind = iota
	waitAccept          // accept, accept4: the fd is the first argument
	waitPoll            // poll, ppoll: an array of struct pollfd and its length
	waitSelect          // select, pselect6: nfds, then the read fd_set
)

// listenerInodes returns the inodes of the listeners handed to a worker.
func listenerInodes(fds []int) []uint64 {
	var inos []uint64
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			inos = append(inos, st.Ino)
		}
	}
	return inos
}

// probeListening waits until the worker p waits on one of inodes, or the
// fallback delay has passed, and posts its ready event. It gives up when the
// worker is released, the loop ends, or the worker said its IPC hello (it is
// then ready by its own word).
func (st *execStarter) probeListening(p *execProcess, inodes []uint64, log hclog.Logger) {
	defer st.ipcWG.Done()
	fallback := st.cfg.Ready.Delay
	started := time.Now()
	ready := func() { st.post(workerEvent{pid: p.pid, kind: evReady, source: ReadyListening}) }
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-p.done:
		case <-st.done:
		}
		return false
	}
	if len(inodes) == 0 {
		log.Info("worker has no inherited listener: ready after a delay", "delay", fallback.String())
		if wait(fallback) {
			ready()
		}
		return
	}
	interval := probeFirstInterval
	for {
		if p.said.Load() {
			log.Debug("worker speaks ipc: ready by its ready message")
			return
		}
		how, err := waitingOn(p.pid, inodes)
		switch {
		case how != "":
			log.Debug("worker waits on its listener", "how", how)
			ready()
			return
		case err != nil:
			log.Info("worker not inspectable in /proc: ready after a delay", "delay", fallback.String(), "error", err)
			if wait(max(fallback-time.Since(started), 0)) {
				ready()
			}
			return
		}
		left := fallback - time.Since(started)
		if left <= 0 {
			log.Info("worker not seen waiting on its listener: ready after a delay", "delay", fallback.String())
			ready()
			return
		}
		if !wait(min(interval, left)) {
			return
		}
		interval = min(interval*5/4, probeMaxInterval)
	}
}

// waitingOn reports how the process pid or one of its descendants waits on
// a file with one of inodes: "accept", "epoll", or "" when none does. A
// process that is gone is no error (its exit reaches the loop); one whose
// /proc entries the master may not read is.
func waitingOn(pid int, inodes []uint64) (string, error) {
	want := make(map[uint64]bool, len(inodes))
	for _, ino := range inodes {
		want[ino] = true
	}
	pids := []int{pid}
	for i := 0; i < len(pids) && i < 256; i++ {
		how, err := procWaitingOn(pids[i], want)
		if how != "" || err != nil {
			return how, err
		}
		pids = append(pids, procChildren(pids[i])...)
	}
	return "", nil
}

func procWaitingOn(pid int, want map[uint64]bool) (string, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	tasks, err := os.ReadDir(dir + "/task")
	if err != nil {
		return "", quietGone(err)
	}
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/task/" + t.Name() + "/syscall")
		if err != nil {
			if err := quietGone(err); err != nil {
				return "", err
			}
			continue
		}
		if how := syscallWaitsOn(dir, b, want); how != "" {
			return how, nil
		}
	}
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return "", quietGone(err)
	}
	for _, e := range fds {
		link, err := os.Readlink(dir + "/fd/" + e.Name())
		if err != nil || link != "anon_inode:[eventpoll]" {
			continue
		}
		b, err := os.ReadFile(dir + "/fdinfo/" + e.Name())
		if err == nil && epollHas(b, want) {
			return "epoll", nil
		}
	}
	return "", nil
}

// quietGone turns "the process is gone" into no error.
func quietGone(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// parseSyscall parses /proc/PID/task/TID/syscall: "NR ARG0 ... ARG5 SP PC"
// with the arguments in hex while the thread is blocked in a syscall, and
// "running" or "-1 SP PC" otherwise.
func parseSyscall(b []byte) (nr uint64, args [6]uint64, ok bool) {
	f := bytes.Fields(b)
	if len(f) < 1+len(args) {
		return 0, args, false
	}
	nr, err := strconv.ParseUint(string(f[0]), 10, 64)
	if err != nil {
		return 0, args, false
	}
	for i := range args {
		if args[i], err = strconv.ParseUint(strings.TrimPrefix(string(f[1+i]), "0x"), 16, 64); err != nil {
			return 0, args, false
		}
	}
	return nr, args, true
}

// maxPollFDs bounds what is read of a poll or select set.
const maxPollFDs = 1 << 16

// syscallWaitsOn reports how a thread (its syscall file b) of the process
// at dir waits on a wanted inode: "accept", "poll", "select" or "".
func syscallWaitsOn(dir string, b []byte, want map[uint64]bool) string {
	nr, args, ok := parseSyscall(b)
	if !ok {
		return ""
	}
	switch syscallWait(nr) {
	case waitAccept:
		if args[0] < maxPollFDs && want[socketInode(dir, int(args[0]))] {
			return "accept"
		}
	case waitPoll:
		if args[0] != 0 && args[1] > 0 && args[1] <= maxPollFDs && pollHas(dir, args[0], int(args[1]), want) {
			return "poll"
		}
	case waitSelect:
		if args[1] != 0 && args[0] > 0 && args[0] <= maxPollFDs && selectHas(dir, args[1], int(args[0]), want) {
			return "select"
		}
	}
	return ""
}

// readMem reads n bytes of a process's memory at addr; nil if it cannot.
func readMem(dir string, addr uint64, n int) []byte {
	if addr > math.MaxInt64 {
		return nil
	}
	f, err := os.Open(dir + "/mem")
	if err != nil {
		return nil
	}
	defer f.Close() // read-only
	b := make([]byte, n)
	if _, err := f.ReadAt(b, int64(addr)); err != nil {
		return nil
	}
	return b
}

// pollHas reports whether the nfds struct pollfd at addr (int fd, short
// events, short revents) ask for input on a wanted socket.
func pollHas(dir string, addr uint64, nfds int, want map[uint64]bool) bool {
	b := readMem(dir, addr, nfds*8)
	for i := 0; i+8 <= len(b); i += 8 {
		fd := int32(binary.NativeEndian.Uint32(b[i:]))
		events := binary.NativeEndian.Uint16(b[i+4:])
		if fd >= 0 && events&(unix.POLLIN|unix.POLLPRI) != 0 && want[socketInode(dir, int(fd))] {
			return true
		}
	}
	return false
}

// selectHas reports whether the read fd_set at addr (nfds bits, in words
// of the native long) holds a wanted socket.
func selectHas(dir string, addr uint64, nfds int, want map[uint64]bool) bool {
	b := readMem(dir, addr, (nfds+63)/64*8)
	for w := 0; w*8 < len(b); w++ {
		word := binary.NativeEndian.Uint64(b[w*8:])
		for word != 0 {
			i := bits.TrailingZeros64(word)
			word &^= 1 << i
			if fd := w*64 + i; fd < nfds && want[socketInode(dir, fd)] {
				return true
			}
		}
	}
	return false
}

// socketInode returns the inode of a process's socket fd, from its
// /proc/PID/fd link "socket:[INODE]"; 0 if it is not a socket.
func socketInode(dir string, fd int) uint64 {
	link, err := os.Readlink(dir + "/fd/" + strconv.Itoa(fd))
	if err != nil {
		return 0
	}
	v, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		return 0
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(v, "]"), 10, 64)
	if err != nil {
		return 0
	}
	return ino
}

// epollHas reports whether an eventpoll's fdinfo registers a file with one
// of the wanted inodes. Its lines read
// "tfd:        5 events:       19 data: 5  pos:0 ino:2f1a sdev:8", the
// inode in hex.
func epollHas(b []byte, want map[uint64]bool) bool {
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		if !bytes.HasPrefix(line, []byte("tfd:")) {
			continue
		}
		_, rest, ok := bytes.Cut(line, []byte(" ino:"))
		if !ok {
			continue
		}
		if i := bytes.IndexByte(rest, ' '); i >= 0 {
			rest = rest[:i]
		}
		ino, err := strconv.ParseUint(string(rest), 16, 64)
		if err == nil && want[ino] {
			return true
		}
	}
	return false
}

// procChildren lists the children of a process (of all its threads).
func procChildren(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var kids []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(b) {
			if k, err := strconv.Atoi(string(f)); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}
