package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
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
	master.DispatchExecWorker()
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
// as `clusterd run --listen ... --ready ipc` does: they answer with their pid
// and slot, a reload replaces both, and a graceful stop ends them.
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

	res, err := c.Master().Reload(t.Context())
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if len(res.Slots) != 2 {
		t.Fatalf("reload replaced %d slots, want 2: %+v", len(res.Slots), res)
	}
	for _, s := range res.Slots {
		if !old[s.OldPID] || s.NewPID == 0 || old[s.NewPID] {
			t.Errorf("reload of slot %d: pid %d replaced by %d, want an old worker replaced by a new one", s.Slot, s.OldPID, s.NewPID)
		}
	}
	// Reload returns once the old workers were told to drain; until one
	// has acted on it (closed its listener) it may still accept on the
	// shared socket. Once they have exited, only the new ones can answer.
	for _, s := range res.Slots {
		c.WaitEvent(1, func(e master.Event) bool { return e.Kind == master.EventExit && e.PID == s.OldPID })
	}
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

// TestHelloListenFromMaster runs hello as `clusterd run -w 2 --ready ipc --
// hello -addr 127.0.0.1:0` does, with no --listen: each worker's
// worker.Listen asks the master, which creates one socket and passes it to
// both. /proc shows a single listening socket, held by the master (this
// process) and both workers, before and after a reload.
func TestHelloListenFromMaster(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m, err := master.New(master.Options{
		Command: []string{exe, "-addr", "127.0.0.1:0"},
		Env:     []string{helperEnv + "=hello"},
		Workers: 2,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
		Stdout:  io.Discard,
		Stderr:  io.Discard,
		// Often, so that the request counts reach the master quickly.
		HeartbeatInterval: 10 * time.Millisecond,
		// Not under test: three silent intervals (30ms) on a loaded
		// machine would make the workers hung and replace them.
		HeartbeatTimeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	runMaster(t, m)

	ino, port := sharedListener(t, m, 2)
	seen := map[int]bool{}
	fetched := 0
	for len(seen) < 2 {
		pid, _, _ := parseHello(t, fetch(t, fmt.Sprintf("127.0.0.1:%d", port)))
		seen[pid] = true
		fetched++
	}
	// Each worker counts its requests (worker.NewCounter) and its
	// heartbeats carry the count to the master's worker table.
	for {
		var total int64
		beats := 0
		for _, w := range m.Workers() {
			total += w.Stats["requests"]
			if !w.LastHeartbeat.IsZero() {
				beats++
			}
		}
		if total == int64(fetched) && beats == 2 {
			break
		}
		if total > int64(fetched) {
			t.Fatalf("workers counted %d requests, want %d", total, fetched)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("workers' stats never showed %d requests: %+v", fetched, m.Workers())
		case <-time.After(5 * time.Millisecond): // the next heartbeat is due within 10ms
		}
	}

	exits := m.Subscribe(0)
	defer exits.Close()
	res, err := m.Reload(t.Context())
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	for _, s := range res.Slots {
		if s.NewPID == 0 || seen[s.NewPID] {
			t.Errorf("reload of slot %d: new pid %d, want a new worker", s.Slot, s.NewPID)
		}
	}
	// As in TestHelloUnderClusterd: only once the old workers have exited
	// is the answer certainly a new one's.
	deadline := time.After(time.Minute)
	for gone := 0; gone < len(res.Slots); {
		select {
		case e, ok := <-exits.C:
			if !ok {
				t.Fatal("events ended before the old workers exited")
			}
			if e.Kind == master.EventExit && seen[e.PID] {
				gone++
			}
		case <-deadline:
			t.Fatalf("the reload's old workers did not exit within a minute: %+v", m.Workers())
		}
	}
	ino2, port2 := sharedListener(t, m, 2)
	if ino2 != ino || port2 != port {
		t.Errorf("after a reload the workers serve socket %d on port %d, want the master's %d on %d", ino2, port2, ino, port)
	}
	pid, _, gen := parseHello(t, fetch(t, fmt.Sprintf("127.0.0.1:%d", port)))
	if seen[pid] || gen != 2 {
		t.Errorf("after a reload, answer from pid %d generation %d, want a new worker of generation 2", pid, gen)
	}
}

// runMaster runs m until the test ends, then stops it gracefully and
// checks that Run returned nil.
func runMaster(t *testing.T, m *master.Master) {
	t.Helper()
	sub := m.Subscribe(0)
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			t.Errorf("stop master: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("master Run: %v", err)
		}
	})
	select {
	case <-m.Ready():
	case err := <-errc:
		t.Fatalf("master stopped before its workers were ready: %v", err)
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
	sub.Close()
}

// sharedListener checks through /proc that there is exactly one listening
// TCP socket held by this process (the master) and by each of the n ready
// workers, and returns its inode and port.
func sharedListener(t *testing.T, m *master.Master, n int) (inode uint64, port int) {
	t.Helper()
	listening := listeningSockets(t)
	holders := func(pid string) map[uint64]bool {
		held := map[uint64]bool{}
		for ino := range socketInodes(t, pid) {
			if _, ok := listening[ino]; ok {
				held[ino] = true
			}
		}
		return held
	}
	mine := holders("self")
	var workers []master.WorkerInfo
	for _, w := range m.Workers() {
		// Old workers draining after a reload have closed their listener.
		if w.State == master.WorkerReady {
			workers = append(workers, w)
		}
	}
	if len(workers) != n {
		t.Fatalf("master has %d ready workers, want %d: %+v", len(workers), n, m.Workers())
	}
	for _, w := range workers {
		held := holders(strconv.Itoa(w.PID))
		if len(held) != 1 {
			t.Fatalf("worker %d (pid %d) holds %d listening sockets, want 1", w.Slot, w.PID, len(held))
		}
		for ino := range held {
			if inode != 0 && ino != inode {
				t.Fatalf("workers hold listening sockets %d and %d, want one for both", inode, ino)
			}
			inode = ino
		}
	}
	if !mine[inode] {
		t.Fatalf("the master does not hold the workers' listening socket %d (it holds %v)", inode, mine)
	}
	return inode, listening[inode]
}

// listeningSockets returns the inode and port of every listening TCP
// socket of the host, from /proc/net/tcp and /proc/net/tcp6.
func listeningSockets(t *testing.T) map[uint64]int {
	t.Helper()
	out := map[uint64]int{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" { // 0A: TCP_LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			p, err1 := strconv.ParseUint(hexPort, 16, 16)
			ino, err2 := strconv.ParseUint(f[9], 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("%s: bad line %q", name, line)
			}
			out[ino] = int(p)
		}
	}
	return out
}

// socketInodes returns the inodes of the sockets process pid has open.
func socketInodes(t *testing.T, pid string) map[uint64]bool {
	t.Helper()
	dir := "/proc/" + pid + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed since ReadDir
		}
		if s, ok := strings.CutPrefix(link, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				out[ino] = true
			}
		}
	}
	return out
}
