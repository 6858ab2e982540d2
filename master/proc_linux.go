package master

import (
	"bytes"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// What the master reads from /proc about its workers: the resident memory
// of each process group (Options.MaxMemory) and the kernel's OOM kill
// count (exit causes).

// pageSize converts /proc's rss in pages to bytes.
var pageSize = int64(os.Getpagesize())

// memorySampler sums the resident memory of process groups. Reading every
// /proc/PID/stat each sample would cost the master milliseconds per second
// on a busy host. Instead, every rescanEvery samples it lists /proc (one
// getdents pass) and reads the stat of each pid it has not seen before, to
// learn its process group; in between, it reads only the statm (cheap for
// the kernel: no walk over threads) of the known members of the groups
// asked for, and of each group's leader (the worker itself). So a worker's
// child forked since the last rescan is counted at the next one, at most
// rescanEvery samples later. It is used by the loop goroutine only.
type memorySampler struct {
	groups  map[int]int   // pid -> its process group, for every pid seen at a rescan
	members map[int][]int // process group -> its pids, as of the last rescan
	samples int
	seen    map[int]bool
	buf     []byte
	names   []byte
}

// rescanEvery is how often (in samples) the sampler lists /proc.
const rescanEvery = 8

func newMemorySampler() *memorySampler {
	return &memorySampler{
		groups: make(map[int]int), members: make(map[int][]int), seen: make(map[int]bool),
		buf: make([]byte, 1024), names: make([]byte, 32<<10),
	}
}

// sample returns the resident bytes of each process group in pgids.
func (ms *memorySampler) sample(pgids []int) (map[int]int64, error) {
	if ms.samples%rescanEvery == 0 {
		if err := ms.rescan(); err != nil {
			return nil, err
		}
	}
	ms.samples++
	rss := make(map[int]int64, len(pgids))
	for _, g := range pgids {
		pids := ms.members[g]
		if !slices.Contains(pids, g) {
			pids = append(pids, g) // a worker started since the rescan
		}
		for _, pid := range pids {
			if pages, ok := ms.readStatm(pid); ok {
				rss[g] += pages * pageSize
			}
		}
	}
	return rss, nil
}

// rescan lists /proc, learns the group of every new pid and forgets the
// pids that are gone.
func (ms *memorySampler) rescan() error {
	fd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: "/proc", Err: err}
	}
	defer unix.Close(fd)
	clear(ms.seen)
	for {
		n, err := unix.Getdents(fd, ms.names)
		if err != nil {
			return &os.PathError{Op: "getdents", Path: "/proc", Err: err}
		}
		if n == 0 {
			break
		}
		for b := ms.names[:n]; len(b) > 0; {
			// struct linux_dirent64: ino, off, reclen, type, name.
			reclen := int(b[16]) | int(b[17])<<8
			pid := dirPID(b[19:reclen])
			b = b[reclen:]
			if pid <= 0 {
				continue
			}
			ms.seen[pid] = true
			if _, known := ms.groups[pid]; known {
				continue
			}
			if pgid, _, ok := ms.readStat(pid); ok {
				ms.groups[pid] = pgid
			}
		}
	}
	clear(ms.members)
	for pid, g := range ms.groups {
		if !ms.seen[pid] {
			delete(ms.groups, pid)
			continue
		}
		ms.members[g] = append(ms.members[g], pid)
	}
	return nil
}

// dirPID parses a NUL-terminated /proc entry name as a pid; 0 if it is not
// one.
func dirPID(name []byte) int {
	pid := 0
	for _, c := range name {
		if c == 0 {
			break
		}
		if c < '0' || c > '9' {
			return 0
		}
		pid = pid*10 + int(c-'0')
	}
	return pid
}

// readStatm reads the resident pages (field 2) of /proc/PID/statm.
func (ms *memorySampler) readStatm(pid int) (int64, bool) {
	n, ok := ms.read("/proc/" + strconv.Itoa(pid) + "/statm")
	if !ok {
		return 0, false
	}
	f := bytes.Fields(ms.buf[:n])
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	return pages, err == nil && pages >= 0
}

// read reads the start of a /proc file into ms.buf.
func (ms *memorySampler) read(path string) (int, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	n, err := unix.Read(fd, ms.buf)
	unix.Close(fd)
	return n, err == nil && n > 0
}

// readStat reads /proc/PID/stat with plain system calls (os.Open would try
// to register the file with the runtime's poller).
func (ms *memorySampler) readStat(pid int) (pgid int, pages int64, ok bool) {
	n, ok := ms.read("/proc/" + strconv.Itoa(pid) + "/stat")
	if !ok {
		return 0, 0, false
	}
	return parseStat(ms.buf[:n])
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
