// Package node_test runs examples/node/server.js, an unmodified Node.js
// server, under package master.
package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/sockshare"
)

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	if len(os.Args) > 1 && os.Args[1] == master.ExecWorkerArg {
		err := master.ExecWorker(os.Args[2:])
		fmt.Fprintln(os.Stderr, "clusterd:", err)
		os.Exit(127)
	}
	os.Exit(m.Run())
}

// logSink collects the master's JSON log lines for tests to wait on.
type logSink struct {
	mu      sync.Mutex
	lines   []map[string]any
	partial []byte
	changed chan struct{}
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		i := strings.IndexByte(string(s.partial), '\n')
		if i < 0 {
			break
		}
		e := map[string]any{}
		if json.Unmarshal(s.partial[:i], &e) == nil {
			s.lines = append(s.lines, e)
		}
		s.partial = s.partial[i+1:]
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

// wait waits until n lines with message msg have been logged.
func (s *logSink) wait(t *testing.T, msg string, n int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		s.mu.Lock()
		count := 0
		for _, e := range s.lines {
			if e["@message"] == msg {
				count++
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if count >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %d log lines %q", n, msg)
		}
	}
}

func fetch(t *testing.T, addr string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / = %d, %q, %v", resp.StatusCode, b, err)
	}
	return string(b)
}

// TestNodeServer runs server.js as `clusterd run --ready delay=300ms` does:
// two workers serve on the inherited fd, a reload replaces them, and SIGTERM
// stops them gracefully.
func TestNodeServer(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("node is not installed: .ci/run installs it under CI (%v)", err)
		}
		t.Skipf("node is not on PATH (%v): install Node.js to run examples/node", err)
	}
	spec, err := sockshare.ParseSpec("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogSink()
	sigs := make(chan os.Signal, 1)
	m, err := master.New(master.Options{
		Command:         []string{node, "server.js"},
		Workers:         2,
		Listen:          []sockshare.Spec{spec},
		Ready:           master.ReadyMode{Kind: master.ReadyDelay, Delay: 300 * time.Millisecond},
		Signals:         sigs,
		Logger:          hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: logs, Level: hclog.Debug}),
		Stdout:          io.Discard,
		Stderr:          io.Discard,
		ReapOnlyWorkers: true, // this test binary waits for its own children too
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-done:
		t.Fatalf("master stopped before its workers were ready: %v", err)
	}
	addr := m.Addrs()[0].String()

	var first int
	body := fetch(t, addr)
	if _, err := fmt.Sscanf(body, "hello from node pid %d", &first); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}

	sigs <- syscall.SIGHUP
	logs.wait(t, "reload done", 1)
	logs.wait(t, "worker exited", 2)
	var pid int
	body = fetch(t, addr)
	if _, err := fmt.Sscanf(body, "hello from node pid %d", &pid); err != nil || pid == first {
		t.Errorf("after a reload: %q, want a node worker other than pid %d", body, first)
	}

	sigs <- syscall.SIGTERM
	if err := <-done; err != nil {
		t.Errorf("master after graceful stop: %v", err)
	}
}
