package main

import (
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
	_, v, _ := strings.Cut(c.waitStdout("escaped: "), "escaped: ")
	escaped, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		t.Fatalf("escaped pid %q: %v", v, err)
	}
	// Opened before the kill: the pid cannot be reused under the test.
	fd, err := unix.PidfdOpen(escaped, 0)
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", escaped, err)
	}
	defer unix.Close(fd)
	t.Cleanup(func() { _ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) })

	c.signal(syscall.SIGKILL)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, int(time.Second.Milliseconds())); err != nil || n != 1 {
		t.Fatalf("escaped process %d still running 1s after the master was killed (poll %d, %v)", escaped, n, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("bind %s after the cluster died: %v", addr, err)
	}
	ln.Close()
	c.wait()
}
