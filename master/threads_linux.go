package master

import (
	"os"
	"sort"
	"strconv"
	"strings"
)

// threadState is what one thread of a worker was doing, from
// /proc/PID/task/TID: the scheduler state (status), the kernel function it
// sleeps in (wchan) and the system call it is in with its arguments
// (syscall; "running" when it is on a CPU).
type threadState struct {
	tid            int
	name, state    string
	wchan, syscall string
}

// maxThreadsRecorded bounds what one kill records.
const maxThreadsRecorded = 64

// workerThreads reads the state of each thread of pid (at most
// maxThreadsRecorded, in tid order). A process that is gone has none.
func workerThreads(pid int) []threadState {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	tids := make([]int, 0, len(names))
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil {
			tids = append(tids, tid)
		}
	}
	sort.Ints(tids)
	if len(tids) > maxThreadsRecorded {
		tids = tids[:maxThreadsRecorded]
	}
	var out []threadState
	for _, tid := range tids {
		t := threadState{tid: tid}
		base := dir + "/" + strconv.Itoa(tid) + "/"
		if b, err := os.ReadFile(base + "status"); err == nil {
			t.name, t.state = statusField(b, "Name"), statusField(b, "State")
		}
		if b, err := os.ReadFile(base + "wchan"); err == nil {
			t.wchan = strings.TrimSpace(string(b))
		}
		if b, err := os.ReadFile(base + "syscall"); err == nil {
			t.syscall = strings.TrimSpace(string(b))
		}
		out = append(out, t)
	}
	return out
}

// statusField returns the value of key in the text of /proc/.../status.
func statusField(b []byte, key string) string {
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// recordThreads logs what each thread of w is doing, before a kill.
func recordThreads(w *worker, why string) {
	for _, t := range workerThreads(w.pid) {
		w.log.Warn("worker thread before kill", "reason", why, "tid", t.tid, "name", t.name,
			"state", t.state, "wchan", t.wchan, "syscall", t.syscall)
	}
}
