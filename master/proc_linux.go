package master

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// What the master reads from /proc about its workers: the resident memory
// of each process group (Options.MaxMemory) and the kernel's OOM kill
// count (exit causes).

// pageSize converts /proc's rss in pages to bytes.
var pageSize = int64(os.Getpagesize())

// memoryByGroup returns the resident memory in bytes of every process
// group, summed over its processes, from one pass over /proc/*/stat. A
// process that exits during the pass is skipped.
func memoryByGroup() (map[int]int64, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	rss := make(map[int]int64)
	buf := make([]byte, 1024)
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		pgid, pages, ok := readStat("/proc/"+n+"/stat", buf)
		if ok {
			rss[pgid] += pages * pageSize
		}
	}
	return rss, nil
}

// readStat reads a /proc/PID/stat file into buf and returns its process
// group and resident pages.
func readStat(path string, buf []byte) (pgid int, pages int64, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, false
	}
	n, err := f.Read(buf)
	f.Close()
	if err != nil || n == 0 {
		return 0, 0, false
	}
	return parseStat(buf[:n])
}

// parseStat takes the process group (field 5) and rss (field 24) from the
// text of /proc/PID/stat. The command name (field 2) is in parentheses and
// may hold spaces and parentheses itself: fields are counted from the last
// ')'.
func parseStat(b []byte) (pgid int, pages int64, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state): field k is fields[k-3].
	if len(fields) < 22 {
		return 0, 0, false
	}
	g, err1 := strconv.Atoi(string(fields[2]))
	p, err2 := strconv.ParseInt(string(fields[21]), 10, 64)
	if err1 != nil || err2 != nil || p < 0 {
		return 0, 0, false
	}
	return g, p, true
}

// oomKillCount reads the system's OOM kill counter (oom_kill in
// /proc/vmstat, Linux 4.13+), which counts kills inside memory cgroups
// too; ok is false where it is missing.
func oomKillCount() (uint64, bool) {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, false
	}
	return parseVMStat(b, "oom_kill")
}

// parseVMStat returns the value of key in the text of /proc/vmstat.
func parseVMStat(b []byte, key string) (uint64, bool) {
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(bytes.TrimSpace(line), []byte{' '})
		if ok && string(k) == key {
			n, err := strconv.ParseUint(string(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
