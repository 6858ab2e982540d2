package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sdSocket is a test-owned NOTIFY_SOCKET: it records every datagram the
// master sends its service manager, in order.
type sdSocket struct {
	t    *testing.T
	path string
	msgs chan string
}

func newSDSocket(t *testing.T) *sdSocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &sdSocket{t: t, path: path, msgs: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return // closed by the cleanup
			}
			s.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return s
}

// next returns the next datagram that is not a STATUS= line, collecting
// the STATUS= texts seen on the way into statuses.
func (s *sdSocket) next(statuses *[]string) string {
	s.t.Helper()
	for {
		select {
		case m := <-s.msgs:
			if text, ok := strings.CutPrefix(m, "STATUS="); ok {
				*statuses = append(*statuses, text)
				continue
			}
			return m
		case <-time.After(failAfter(s.t)):
			s.t.Fatalf("no sd_notify datagram (statuses so far: %q)", *statuses)
			return ""
		}
	}
}

// TestNotifyLifecycle runs clusterd under a test-owned NOTIFY_SOCKET and
// checks what a Type=notify unit sees, in order: READY=1 only once every
// worker is ready, RELOADING=1 with MONOTONIC_USEC= and READY=1 around a
// SIGHUP reload, STOPPING=1 on SIGTERM, and STATUS= lines between them.
func TestNotifyLifecycle(t *testing.T) {
	sd := newSDSocket(t)
	c := startCluster(t, clusterConfig{
		flags: []string{listenAny, "-w", "2", "--ready", "ipc"},
		env:   []string{"NOTIFY_SOCKET=" + sd.path},
	})
	var statuses []string
	if m := sd.next(&statuses); m != "READY=1" {
		t.Fatalf("first sd_notify %q, want READY=1", m)
	}
	// READY=1 went out in the loop iteration that saw the second worker
	// ready, after one status line per earlier iteration, and the log
	// agrees (it is written asynchronously, so it is read afterwards).
	if want := []string{"0/2 workers ready", "1/2 workers ready"}; !slices.Equal(statuses, want) {
		t.Errorf("statuses before READY=1 %q, want %q", statuses, want)
	}
	end, _ := c.waitLog(0, "all workers ready")
	c.mu.Lock()
	readyLogged := 0
	for _, e := range c.logs[:end] {
		if e.msg() == "worker ready" {
			readyLogged++
		}
	}
	c.mu.Unlock()
	if readyLogged != 2 {
		t.Errorf("%d workers ready before \"all workers ready\", want 2", readyLogged)
	}

	before := monotonicUsec(t)
	c.signal(syscall.SIGHUP)
	m := sd.next(&statuses)
	usec, ok := strings.CutPrefix(m, "RELOADING=1\nMONOTONIC_USEC=")
	if !ok {
		t.Fatalf("sd_notify %q after SIGHUP, want RELOADING=1 with MONOTONIC_USEC=", m)
	}
	if v, err := strconv.ParseInt(usec, 10, 64); err != nil || v < before || v > monotonicUsec(t) {
		t.Errorf("MONOTONIC_USEC=%s, want a CLOCK_MONOTONIC time in microseconds after %d", usec, before)
	}
	if m := sd.next(&statuses); m != "READY=1" {
		t.Fatalf("sd_notify %q after the reload, want READY=1", m)
	}
	c.signal(syscall.SIGTERM)
	if m := sd.next(&statuses); m != "STOPPING=1" {
		t.Fatalf("sd_notify %q after SIGTERM, want STOPPING=1", m)
	}
	if code, last := c.wait(); code != 0 {
		t.Fatalf("clusterd exited %d (%s), want 0", code, last)
	}
	for len(sd.msgs) > 0 {
		if m := <-sd.msgs; strings.HasPrefix(m, "STATUS=") {
			statuses = append(statuses, strings.TrimPrefix(m, "STATUS="))
		} else {
			t.Errorf("sd_notify %q after STOPPING=1", m)
		}
	}
	for _, want := range []string{"2/2 workers ready", "reloading 0/2", "reloading 1/2", "stopping: 2 workers left", "stopping: 0 workers left"} {
		found := false
		for _, s := range statuses {
			found = found || s == want
		}
		if !found {
			t.Errorf("no STATUS=%s among %q", want, statuses)
		}
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock of
// MONOTONIC_USEC=.
func monotonicUsec(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// TestSystemdSocketActivate drives clusterd through systemd's own
// implementation of socket activation: systemd-socket-activate listens,
// waits for the first connection, then execs clusterd with the socket at
// fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=web). The --listen of the same unix
// path is matched to it by address, so nothing is bound twice, and the
// connection that woke the service is answered by a worker.
func TestSystemdSocketActivate(t *testing.T) {
	activate := needTool(t, "systemd-socket-activate")
	path := filepath.Join(t.TempDir(), "web.sock")
	c := startCluster(t, clusterConfig{
		launcher: []string{activate, "-l", path, "--fdname=web", "-E", helperEnv},
		flags:    []string{"--listen", "unix://" + path, "-w", "2", "--ready", "ipc"},
	})
	// systemd-socket-activate prints its "Listening on" line before it
	// waits; the socket exists once it can be dialled.
	var conn net.Conn
	deadline := time.Now().Add(failAfter(t))
	for {
		var err error
		if conn, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("activation socket %s never accepted: %v", path, err)
		}
		// Polling for a file another process creates: there is no event
		// to wait on, and this is a failure deadline, not a delay.
		time.Sleep(10 * time.Millisecond)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_, l := c.waitLog(0, "listening")
	if l.str("name") != "web" || l.str("addr") != path {
		t.Errorf("listening on %v, want the activated socket web at %s", l, path)
	}
	_, pids := c.waitStarted()
	if len(pids) != 2 {
		t.Errorf("%d workers ready, want 2", len(pids))
	}
	if err := conn.SetReadDeadline(time.Now().Add(failAfter(t))); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("answer to the connection that activated the service: %v", err)
	}
	_, payload, _ := strings.Cut(string(body), "\r\n\r\n")
	if !slices.Contains(pids, pidOf(t, payload)) {
		t.Errorf("answer %q from none of the workers %v", body, pids)
	}
	if n := c.countLogs(0, "activated socket matches no listen address: serving it as well"); n != 0 {
		t.Errorf("the activated socket was not matched to --listen by its address")
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Fatalf("clusterd exited %d (%s), want 0", code, last)
	}
}

// verifyUnits runs systemd-analyze verify on the named units of dir.
// systemd-analyze exits 0 on many problems it only warns about ("Unknown
// key", "Failed to parse"), so any output at all counts as a failure.
func verifyUnits(t *testing.T, analyze, dir string, units ...string) string {
	t.Helper()
	args := []string{"verify", "--man=no"}
	for _, u := range units {
		args = append(args, filepath.Join(dir, u))
	}
	cmd := exec.Command(analyze, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		out = []byte(err.Error())
	}
	return strings.TrimSpace(string(out))
}

// installUnits copies the units of systemd/ into a fresh directory, with
// ExecStart's /usr/local/bin/clusterd replaced by this test binary
// (systemd-analyze checks that the command exists), renamed by rename.
func installUnits(t *testing.T, rename map[string]string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for src, dst := range rename {
		b, err := os.ReadFile(filepath.Join("..", "..", "systemd", src))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "/usr/local/bin/clusterd ", exe+" ")
		if err := os.WriteFile(filepath.Join(dir, dst), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// unitValue returns the value of the first KEY= line of a unit file.
func unitValue(t *testing.T, unit, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	t.Fatalf("%s has no %s=", unit, key)
	return ""
}

// TestUnitFiles checks the shipped units with systemd-analyze verify, and
// that what they say agrees with clusterd: the stop timeout leaves room for
// the workers' --kill-timeout, and the template's env file holds only
// variables run understands.
func TestUnitFiles(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	dir := installUnits(t, map[string]string{
		"clusterd@.service":        "clusterd@.service",
		"clusterd-example.service": "clusterd-example.service",
		"clusterd-example.socket":  "clusterd-example.socket",
	})
	for _, units := range [][]string{{"clusterd@web.service"}, {"clusterd-example.socket", "clusterd-example.service"}} {
		if out := verifyUnits(t, analyze, dir, units...); out != "" {
			t.Errorf("systemd-analyze verify %v:\n%s", units, out)
		}
	}

	// The check can fail: a misspelt Type= leaves systemd-analyze's exit
	// status 0, but not its output.
	bad := installUnits(t, map[string]string{"clusterd-example.service": "bad.service"})
	b, err := os.ReadFile(filepath.Join(bad, "bad.service"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "bad.service"), []byte(strings.Replace(string(b), "Type=notify\n", "Type=notify-relaod\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := verifyUnits(t, analyze, bad, "bad.service"); !strings.Contains(out, "notify-relaod") {
		t.Errorf("systemd-analyze verify let a bad Type= pass: %q", out)
	}

	env := map[string]string{}
	b, err = os.ReadFile(filepath.Join("..", "..", "systemd", "example.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	if env["CLUSTERD_COMMAND"] == "" {
		t.Errorf("example.env sets no CLUSTERD_COMMAND")
	}
	delete(env, "CLUSTERD_COMMAND") // ExecStart's, not a flag
	run := newRunCommand()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := applyEnv(run.Flags(), lookup, func(k string) error { delete(env, k); return nil }); err != nil {
		t.Errorf("example.env: %v", err)
	}
	for k := range env {
		t.Errorf("example.env sets %s, which no flag of run reads", k)
	}
	killTimeout, err := run.Flags().GetDuration("kill-timeout")
	if err != nil {
		t.Fatal(err)
	}

	for unit, kill := range map[string]time.Duration{"clusterd@.service": killTimeout, "clusterd-example.service": 0} {
		if kill == 0 {
			start := unitValue(t, unit, "ExecStart")
			_, after, ok := strings.Cut(start, "--kill-timeout ")
			if !ok {
				t.Fatalf("%s: ExecStart has no --kill-timeout: %s", unit, start)
			}
			if kill, err = time.ParseDuration(strings.Fields(after)[0]); err != nil {
				t.Fatalf("%s: %v", unit, err)
			}
		}
		stop, err := time.ParseDuration(unitValue(t, unit, "TimeoutStopSec"))
		if err != nil {
			t.Fatalf("%s: TimeoutStopSec: %v", unit, err)
		}
		if stop <= kill {
			t.Errorf("%s: TimeoutStopSec=%v leaves the workers' --kill-timeout %v no room", unit, stop, kill)
		}
		if got := unitValue(t, unit, "KillMode"); got != "mixed" {
			t.Errorf("%s: KillMode=%s, want mixed (SIGTERM to the master alone, which drains)", unit, got)
		}
		if unitValue(t, unit, "FileDescriptorStoreMax") == "0" {
			t.Errorf("%s: the fd store is off", unit)
		}
	}
}

// TestUnitReloadCommand: the units' ExecReload= is `clusterd reload
// --wait` on the control socket their ExecStart= opens, and it reports the
// outcome: run against a live cluster (its control socket in place of the
// unit's path), it exits 0 once the reload completed and 3 when it was
// aborted, so `systemctl reload` fails then.
func TestUnitReloadCommand(t *testing.T) {
	var reload []string
	for _, unit := range []string{"clusterd@.service", "clusterd-example.service"} {
		start := strings.Fields(unitValue(t, unit, "ExecStart"))
		args := strings.Fields(unitValue(t, unit, "ExecReload"))
		if len(args) < 2 || args[0] != "/usr/local/bin/clusterd" || args[1] != "reload" || !slices.Contains(args, "--wait") {
			t.Fatalf("%s: ExecReload=%s, want /usr/local/bin/clusterd reload --wait ...", unit, strings.Join(args, " "))
		}
		i, j := slices.Index(args, "--control"), slices.Index(start, "--control")
		if i < 0 || j < 0 || i+1 >= len(args) || j+1 >= len(start) || args[i+1] != start[j+1] {
			t.Errorf("%s: ExecReload= and ExecStart= do not name the same --control socket: %q, %q", unit, args, start)
		}
		reload = args[1:]
	}
	withControl := func(path string) []string {
		out := slices.Clone(reload)
		out[slices.Index(out, "--control")+1] = path
		return out
	}
	for _, tc := range []struct {
		name       string
		workerArgs []string
		code       int
		out        string
	}{
		{"completed", nil, 0, "reload completed: 2 workers replaced"},
		{"aborted", []string{"-fail-gens", "2-99"}, exitReloadAborted, "exited with code 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}, workerArgs: tc.workerArgs})
			c.waitStarted()
			code, out, errs := client(t.Context(), withControl(c.controlPath())...)
			if code != tc.code || !strings.Contains(out, tc.out) {
				t.Errorf("ExecReload %q: exit %d, %q, %q; want exit %d and %q", reload, code, out, errs, tc.code, tc.out)
			}
		})
	}
}
