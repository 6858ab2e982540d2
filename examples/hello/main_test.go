package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/master/mastertest"
)

// helperEnv makes the re-executed test binary run the hello server.
const helperEnv = "CLUSTERD_TEST_HELPER"

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	mastertest.DispatchExecWorker()
	if os.Getenv(helperEnv) == "hello" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
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
	// The master listens on mastertest's default, tcp://127.0.0.1:0.
	c := mastertest.Start(t, master.Options{
		Command: []string{exe},
		Env:     []string{helperEnv + "=hello"},
		Workers: 2,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
	})
	addr := c.Addr()

	old := map[int]bool{}
	for len(old) < 2 {
		pid, id, gen := parseHello(t, fetch(t, addr))
		if id < 0 || id > 1 || gen != 1 {
			t.Fatalf("first answer from worker %d generation %d, want slot 0 or 1, generation 1", id, gen)
		}
		old[pid] = true
	}

	if err := c.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c.WaitLog("reload done", 1)
	c.WaitLog("worker exited", 2)
	pid, _, gen := parseHello(t, fetch(t, addr))
	if old[pid] || gen != 2 {
		t.Errorf("after a reload, answer from pid %d generation %d, want a new worker of generation 2", pid, gen)
	}

	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
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
