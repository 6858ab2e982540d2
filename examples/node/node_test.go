// Package node_test runs examples/node/server.js, an unmodified Node.js
// server, under package master.
package node_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/master/mastertest"
)

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	mastertest.DispatchExecWorker()
	os.Exit(m.Run())
}

// get requests / on a connection of its own, so that each request may
// reach another worker, and returns the body of a 200 answer.
func get(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / = %d, %q, %v", resp.StatusCode, body, err)
	}
	return string(body)
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
	// The master listens on mastertest's default, tcp://127.0.0.1:0.
	c := mastertest.Start(t, master.Options{
		Command: []string{node, "server.js"},
		Workers: 2,
		Ready:   master.ReadyMode{Kind: master.ReadyDelay, Delay: 300 * time.Millisecond},
	})
	addr := c.Addr()

	var first int
	body := get(t, addr)
	if _, err := fmt.Sscanf(body, "hello from node pid %d", &first); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}

	if err := c.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c.WaitLog("reload done", 1)
	c.WaitLog("worker exited", 2)
	var pid int
	body = get(t, addr)
	if _, err := fmt.Sscanf(body, "hello from node pid %d", &pid); err != nil || pid == first {
		t.Errorf("after a reload: %q, want a node worker other than pid %d", body, first)
	}

	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("master after graceful stop: %v", err)
	}
}
