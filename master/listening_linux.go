package master

import (
	"bytes"
	"errors"
	"io/fs"
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
//   - an event loop (Go's runtime, libuv, asyncio, lighttpd, nginx) has the
//     listener in an epoll set: /proc/PID/fdinfo/N of an anon_inode:[eventpoll]
//     fd lists every registered file as "tfd: N ... ino: X".
//
// Both are matched by the listener's inode (from fstat of the master's
// copy), not by fd number, so a worker that dups its fd is still seen, and
// the worker's descendants are searched too (servers that accept in forked
// children). A server that waits in select(2) or poll(2) shows neither; it
// is ready after the fallback delay, as is a worker with no inherited
// listener.
//
// The probe runs in its own goroutine per starting worker and posts a ready
// event, so the loop never waits on /proc. It samples every
// probeFirstInterval at first and backs off to probeMaxInterval, and stops
// at readiness: an idle cluster costs nothing.

const (
	probeFirstInterval = 2 * time.Millisecond
	probeMaxInterval   = 50 * time.Millisecond
)

// acceptSyscalls are the syscall numbers of accept and accept4 on this
// architecture (x/sys/unix names them per GOARCH).
var acceptSyscalls = [...]uint64{unix.SYS_ACCEPT, unix.SYS_ACCEPT4}

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
		if p.helloOK.Load() {
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
			log.Info("worker not seen waiting on its listener (a select or poll server?): ready after a delay",
				"delay", fallback.String())
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
		if fd, ok := acceptFD(b); ok && want[socketInode(dir, fd)] {
			return "accept", nil
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

// acceptFD parses /proc/PID/task/TID/syscall ("NR ARG0 ARG1 ... SP PC", the
// arguments in hex, or "running" / "-1 ...") and returns the fd argument
// when the thread is blocked in accept or accept4.
func acceptFD(b []byte) (int, bool) {
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0, false
	}
	nr, err := strconv.ParseUint(string(f[0]), 10, 64)
	if err != nil || (nr != acceptSyscalls[0] && nr != acceptSyscalls[1]) {
		return 0, false
	}
	fd, err := strconv.ParseUint(strings.TrimPrefix(string(f[1]), "0x"), 16, 31)
	if err != nil {
		return 0, false
	}
	return int(fd), true
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
