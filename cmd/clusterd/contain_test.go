package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// `clusterd run` contains its cluster: a worker's child that called setsid
// dies with a SIGKILLed master, within a second, and the port binds again.
func TestKilledMasterLeavesNoEscapedChild(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := `p=$(setsid -f sh -c 'echo $$; exec sleep 300 >/dev/null 2>&1'); echo "escaped: $p"; exec "$0"`
	c := startCluster(t, clusterConfig{
		flags:   []string{listenAny, "-w", "1", "--ready", "ipc"},
		command: []string{"/bin/sh", "-c", script, exe},
		env:     []string{"GORACE=atexit_sleep_ms=0"},
	})
	addr, _ := c.waitStarted()
	_, mech := c.waitLog(0, "containment")
	if mech.str("mechanism") != "cgroup and guardian" {
		msg := "no cgroup for the cluster here (" + mech.str("cgroup_error") + ")"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	line := c.waitStdout("escaped: ")
	prefix, v, _ := strings.Cut(line, "escaped: ")
	escaped, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		t.Fatalf("escaped pid %q: %v", v, err)
	}
	var slot, worker int
	if _, err := fmt.Sscanf(prefix, "[w%d pid %d]", &slot, &worker); err != nil {
		t.Fatalf("worker pid in %q: %v", line, err)
	}
	// Opened before the kill: the pids cannot be reused under the test.
	// Both hold the listening socket (the escaped one inherited it).
	pidfd := func(pid int) int {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatalf("pidfd_open(%d): %v", pid, err)
		}
		t.Cleanup(func() {
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			unix.Close(fd)
		})
		return fd
	}
	escapedFD, workerFD := pidfd(escaped), pidfd(worker)

	c.signal(syscall.SIGKILL)
	if !pidfdExited(escapedFD, time.Second) {
		t.Fatalf("escaped process %d still running 1s after the master was killed", escaped)
	}
	if !pidfdExited(workerFD, time.Second) {
		t.Fatalf("worker %d still running 1s after the master was killed", worker)
	}
	// The master's own copy of the socket goes with it.
	c.wait()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("bind %s after the cluster died: %v", addr, err)
	}
	ln.Close()
}
