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
