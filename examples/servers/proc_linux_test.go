package servers_test

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// proc is what the test reads of a process in /proc.
type proc struct {
	cmd   string // argv, space-separated
	state byte   // R, S, Z, ...
	pgid  int
	mark  string // the value of markEnv in its environment, if any
}

func (p proc) String() string { return fmt.Sprintf("%q (state %c, group %d)", p.cmd, p.state, p.pgid) }

// readProc reads pid's command line, state, process group and mark. It
// returns false when the process does not exist (any more). A zombie has no
// environment left, so it never carries the mark.
func readProc(pid int) (proc, bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return proc{}, false
	}
	// pid (comm) state ppid pgrp ...: comm may hold spaces and parens, so
	// the fields start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return proc{}, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 3 {
		return proc{}, false
	}
	var p proc
	p.state = fields[0][0]
	p.pgid, _ = strconv.Atoi(fields[2])
	if cmd, err := os.ReadFile(dir + "/cmdline"); err == nil {
		p.cmd = strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	if env, err := os.ReadFile(dir + "/environ"); err == nil {
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte(markEnv+"=")); ok {
				p.mark = string(v)
			}
		}
	}
	return p, true
}

// markedProcs returns every live process whose environment carries the
// mark: the workers and whatever they started, wherever it was reparented.
func markedProcs(mark string) (map[int]proc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int]proc{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok && p.mark == mark {
			out[pid] = p
		}
	}
	return out, nil
}

// socketInode returns the inode of the socket at fd of process pid, as
// /proc/PID/fd/FD names it ("socket:[INODE]").
func socketInode(pid, fd int) (uint64, error) {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		return 0, err
	}
	v, ok := strings.CutPrefix(link, "socket:[")
	if !ok || !strings.HasSuffix(v, "]") {
		return 0, fmt.Errorf("fd %d of pid %d is %s, not a socket", fd, pid, link)
	}
	return strconv.ParseUint(strings.TrimSuffix(v, "]"), 10, 64)
}

// inEpoll reports whether the socket with inode ino is registered in one of
// pid's epoll sets: the fdinfo of an eventpoll fd has a line "tfd: N
// events: ... ino:HEX ..." per registered file. A process that is gone is
// not.
func inEpoll(pid int, ino uint64) bool {
	dir := fmt.Sprintf("/proc/%d", pid)
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return false
	}
	for _, e := range fds {
		if link, err := os.Readlink(dir + "/fd/" + e.Name()); err != nil || link != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile(dir + "/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if !strings.HasPrefix(line, "tfd:") {
				continue
			}
			for _, f := range strings.Fields(line) {
				if hex, ok := strings.CutPrefix(f, "ino:"); ok {
					if v, err := strconv.ParseUint(hex, 16, 64); err == nil && v == ino {
						return true
					}
				}
			}
		}
	}
	return false
}
