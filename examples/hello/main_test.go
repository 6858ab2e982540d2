package main

import (
	"bufio"
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

// helperEnv makes the re-executed test binary run the hello server.
const helperEnv = "CLUSTERD_TEST_HELPER"

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	if len(os.Args) > 1 && os.Args[1] == master.ExecWorkerArg {
		err := master.ExecWorker(os.Args[2:])
		fmt.Fprintln(os.Stderr, "clusterd:", err)
		os.Exit(127)
	}
	if os.Getenv(helperEnv) == "hello" {
		main()
		os.Exit(0)
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

// fetch gets / with a new connection and returns the answer.
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

func parseHello(t *testing.T, body string) (pid, id, gen int) {
	t.Helper()
	if _, err := fmt.Sscanf(body, "hello from pid %d, worker %d, generation %d", &pid, &id, &gen); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	return pid, id, gen
}

// TestHelloUnderClusterd supervises two hello workers with package master,
// as `clusterd run --ready ipc` does: they answer with their pid and slot,
// a reload replaces both, and a graceful stop ends them.
func TestHelloUnderClusterd(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := sockshare.ParseSpec("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogSink()
	sigs := make(chan os.Signal, 1)
	m, err := master.New(master.Options{
		Command:         []string{exe},
		Env:             []string{helperEnv + "=hello"},
		Workers:         2,
		Listen:          []sockshare.Spec{spec},
		Ready:           master.ReadyMode{Kind: master.ReadyIPC},
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

	old := map[int]bool{}
	for len(old) < 2 {
		pid, id, gen := parseHello(t, fetch(t, addr))
		if id < 0 || id > 1 || gen != 1 {
			t.Fatalf("first answer from worker %d generation %d, want slot 0 or 1, generation 1", id, gen)
		}
		old[pid] = true
	}

	sigs <- syscall.SIGHUP
	logs.wait(t, "reload done", 1)
	logs.wait(t, "worker exited", 2)
	pid, _, gen := parseHello(t, fetch(t, addr))
	if old[pid] || gen != 2 {
		t.Errorf("after a reload, answer from pid %d generation %d, want a new worker of generation 2", pid, gen)
	}

	sigs <- syscall.SIGTERM
	if err := <-done; err != nil {
		t.Errorf("master after graceful stop: %v", err)
	}
}

// TestHelloAlone runs hello outside clusterd: it listens on -addr itself and
// exits 0 on SIGTERM.
func TestHelloAlone(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), helperEnv+"=hello")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if cmd.ProcessState == nil {
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil {
		t.Fatalf("hello said %q: %v", line, err)
	}
	_, addr, ok := strings.Cut(strings.TrimSpace(line), "serving on ")
	if !ok {
		t.Fatalf("hello said %q, want `... serving on ADDR`", line)
	}
	if body := fetch(t, addr); body != fmt.Sprintf("hello from pid %d (not under clusterd)\n", cmd.Process.Pid) {
		t.Errorf("GET / = %q", body)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("hello after SIGTERM: %v, want exit 0", err)
	}
}
