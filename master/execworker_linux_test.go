package master

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runError waits for the master helper to exit and returns its "run error:"
// line and exit code.
func runError(t *testing.T, m *runningMaster) (string, int) {
	t.Helper()
	code := m.wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.stderr {
		if s, ok := strings.CutPrefix(l, "run error: "); ok {
			return s, code
		}
	}
	return "", code
}

func TestRealExecFailureStopsCluster(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "not-a-program")
	if err := os.WriteFile(bad, []byte("\x7fELF but not really\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, ready := range []string{"exec", "ipc", "listening"} {
		t.Run(ready, func(t *testing.T) {
			t.Parallel()
			m := startMaster(t, masterConfig{
				Workers: 3, Listen: []string{"tcp://127.0.0.1:0"}, Ready: ready, Command: []string{bad},
			})
			line, code := runError(t, m)
			if code != 3 || !strings.Contains(line, "exec "+bad+": exec format error") {
				t.Errorf("master exit %d, error %q; want the run error naming %s and ENOEXEC", code, line, bad)
			}
			if n := m.count("all workers ready"); n != 0 {
				t.Errorf("\"all workers ready\" logged %d times for a command that never ran", n)
			}
			if n := m.count("worker command not executed", "@level", "error"); n != 1 {
				t.Errorf("%d error lines for the failed exec, want 1", n)
			}
			if n := m.count("restart delayed") + m.count("worker restarted"); n != 0 {
				t.Errorf("%d restarts of a command that cannot be executed, want none", n)
			}
		})
	}
}

func TestRealExecNotPermittedForUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dropping privileges needs root")
	}
	t.Parallel()
	exe := reachableTestBinary(t)
	// Executable by root only: the master's check passes, nobody's execve
	// fails with EACCES.
	private := filepath.Join(t.TempDir(), "private")
	if err := os.WriteFile(private, []byte("#!/bin/sh\nexit 0\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "exec", User: "nobody", Group: "nogroup",
		ExecPath: exe, Command: []string{private},
	})
	line, code := runError(t, m)
	if code != 3 || !strings.Contains(line, "exec "+private+": permission denied") {
		t.Errorf("master exit %d, error %q; want the run error naming %s and EACCES", code, line, private)
	}
	if n := m.count("all workers ready"); n != 0 {
		t.Errorf("\"all workers ready\" logged %d times for a command that never ran", n)
	}
}
