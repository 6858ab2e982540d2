package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fileHas reports whether the file at path holds s.
func fileHas(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), s)
}

// TestLogFileReopenedOnUSR1 is logrotate's move-then-signal: the log file
// is renamed, SIGUSR1 makes clusterd open the path anew, and from then on
// the master's log and the workers' output go to the new file only.
func TestLogFileReopenedOnUSR1(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "clusterd.log")
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc", "--log-file", path}})
	waitUntil(t, "all workers ready in the log file", func() bool { return fileHas(path, "all workers ready") })
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("log file %v (%v), want it unreadable by others", fi.Mode(), err)
	}
	if n := c.logLen(); n != 0 {
		t.Errorf("%d lines on stderr with --log-file, want none", n)
	}
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	c.signal(syscall.SIGUSR1)
	waitUntil(t, "the log file reopened", func() bool { return fileHas(path, "log file reopened") })
	if fileHas(rotated, "log file reopened") {
		t.Errorf("the reopen was logged to the moved file")
	}

	c.signal(syscall.SIGHUP)
	waitUntil(t, "the reload in the new file", func() bool { return fileHas(path, "reload done") })
	c.signal(syscall.SIGTERM)
	if code, _ := c.wait(); code != 0 {
		b, _ := os.ReadFile(path)
		t.Fatalf("clusterd exited %d, want 0; log:\n%s", code, b)
	}
	if !fileHas(path, `"stopped"`) && !fileHas(path, " stopped") {
		t.Errorf("\"stopped\" not in the new log file")
	}
	for _, s := range []string{"reload", "stopped"} {
		if fileHas(rotated, s) {
			t.Errorf("%q written to the moved file after the reopen", s)
		}
	}
	// A USR1 to a master without --log-file must not kill it (the
	// default action of SIGUSR1).
	c2 := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1", "--ready", "ipc"}})
	c2.waitStarted()
	from := c2.logLen()
	c2.signal(syscall.SIGUSR1)
	c2.waitLog(from, "no log file to reopen")
	c2.signal(syscall.SIGTERM)
	if code, last := c2.wait(); code != 0 {
		t.Fatalf("clusterd without --log-file exited %d after USR1 (%s), want 0", code, last)
	}
}

// TestLogFileUnwritable: a --log-file that cannot be opened is one line and
// exit 1, before anything starts.
func TestLogFileUnwritable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "clusterd.log")
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1", "--log-file", path}})
	code, last := c.wait()
	if code != 1 || !strings.HasPrefix(last, "clusterd: log file: open "+path) {
		t.Errorf("exit %d, last line %q; want 1 and clusterd: log file: open %s: ...", code, last, path)
	}
}
