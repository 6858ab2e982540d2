package master

import (
	"syscall"
	"testing"
	"time"
)

// TestRealTermTwiceIsOneStop signals the master as coreutils timeout does:
// the master, then its process group. That is one graceful stop: the
// workers (which ignore TERM here) get their kill timeout, not SIGKILL at
// once.
func TestRealTermTwiceIsOneStop(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", KillTimeout: time.Second,
		WorkerMode: []string{"ignore-term"},
	})
	m.next("all workers ready")
	m.signal(syscall.SIGTERM)
	m.next("stopping")
	if err := syscall.Kill(-m.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	m.next("stop signal repeated too soon to stop at once")
	if code := m.wait(); code != 0 {
		t.Fatalf("master exit code %d, want 0", code)
	}
	if n := m.count("stopping at once"); n != 0 {
		t.Errorf("%d \"stopping at once\" lines, want a graceful stop", n)
	}
	if n := m.count("worker killed after kill timeout"); n != 2 {
		t.Errorf("%d workers killed after their kill timeout, want 2", n)
	}
}
