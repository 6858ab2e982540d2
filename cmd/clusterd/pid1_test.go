package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childrenOf lists the children of pid (host pids), from every thread's
// /proc children file.
func childrenOf(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, w := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(w); err == nil {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// nsPID returns pid's pid in its innermost PID namespace (NSpid's last).
func nsPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	t.Fatalf("pid %d: no NSpid in /proc status", pid)
	return 0
}

// waitUntil polls cond with a failure deadline: /proc has no event to
// wait on.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(failAfter(t))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPID1InNamespace runs clusterd as a container entrypoint does: PID 1
// of a new PID namespace (unshare --pid --fork --mount-proc). A worker's
// orphaned grandchild is reparented to it and reaped when it exits (no
// zombie), and SIGTERM drains every worker before clusterd exits 0.
func TestPID1InNamespace(t *testing.T) {
	unshare := needTool(t, "unshare")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("unshare --pid needs root, which CI has")
		}
		t.Skip("unshare --pid needs root")
	}
	const n = 3
	c := startCluster(t, clusterConfig{
		launcher: []string{unshare, "--pid", "--fork", "--mount-proc", "--kill-child"},
		flags:    []string{listenAny, "-w", strconv.Itoa(n), "--ready", "ipc"},
	})
	addr, pids := c.waitStarted()
	if len(pids) != n {
		t.Fatalf("%d workers ready, want %d", len(pids), n)
	}
	// c.pid is unshare; its one child is clusterd.
	kids := childrenOf(c.pid)
	if len(kids) != 1 {
		t.Fatalf("unshare %d has children %v, want clusterd alone", c.pid, kids)
	}
	master := kids[0]
	if got := nsPID(t, master); got != 1 {
		t.Fatalf("clusterd is pid %d in its namespace, want 1", got)
	}
	workers := childrenOf(master)

	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	body := get(t, "http://"+addr+"/orphan?fifo="+fifo)
	if !strings.HasPrefix(body, "orphan=") {
		t.Fatalf("worker answer %q, want orphan=PID", body)
	}
	var orphan int
	waitUntil(t, "the orphan to be reparented to clusterd", func() bool {
		for _, k := range childrenOf(master) {
			if !slices.Contains(workers, k) {
				orphan = k
				return true
			}
		}
		return false
	})
	if got := strings.TrimSpace(strings.TrimPrefix(body, "orphan=")); got != strconv.Itoa(nsPID(t, orphan)) {
		t.Fatalf("clusterd's new child is pid %d in the namespace, the worker's orphan %s", nsPID(t, orphan), got)
	}
	// Let it exit: clusterd, PID 1, must reap it.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("go\n"))
	w.Close()
	waitUntil(t, "the orphan to be reaped", func() bool { return !slices.Contains(childrenOf(master), orphan) })
	for _, k := range childrenOf(master) {
		if isZombie(k) {
			t.Errorf("zombie child %d of clusterd", k)
		}
	}

	from := c.logLen()
	if err := syscall.Kill(master, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, last := c.wait()
	if code != 0 {
		t.Fatalf("clusterd exited %d (%s), want 0", code, last)
	}
	c.mu.Lock()
	drained := 0
	for _, e := range c.logs[from:] {
		if e.msg() == "worker exited" && e.str("reason") == "stop" && e.int("exit_code") == 0 && e.str("signal") == "" {
			drained++
		}
	}
	c.mu.Unlock()
	if drained != n {
		t.Errorf("%d workers drained and exited 0 on SIGTERM, want %d", drained, n)
	}
	if c.countLogs(from, "stopped") != 1 {
		t.Errorf("clusterd did not log \"stopped\"")
	}
}
