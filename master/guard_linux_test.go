package master

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"golang.org/x/sys/unix"
)

// Tests of the master against hostile or broken workers: a worker that
// shuts the shared listening socket down, floods the IPC connection, or
// stops in the middle of a frame.

const envGuardMode = "CLUSTERD_TEST_GUARD_MODE"

func init() {
	registerHelper("guard-worker", helperGuardWorker)
	registerHelper("guard-ipc", helperGuardIPC)
}

// guardCommand is the worker command that runs helper name with the given
// mode: env(1) sets the helper variable over the master's own (the master
// helper's environment names the master helper), under the same pid, so
// LISTEN_PID still matches.
func guardCommand(t testing.TB, name, mode string) []string {
	t.Helper()
	usedHelpers.Store(name, true)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"/usr/bin/env", envHelper + "=" + name, envGuardMode + "=" + mode, exe}
}

// helperGuardWorker is an HTTP worker that says ready over IPC and, like
// most servers, exits when accept fails. Its mode (CLUSTERD_TEST_GUARD_MODE):
//
//	shutdown  GET /shutdown calls shutdown(SHUT_RD) on the listener
//	hijack    the same, then connect(2)s the listener to another socket,
//	          so that it can never listen again (or, where the kernel
//	          refuses that, binds it to another port: breakListener)
func helperGuardWorker() int {
	mode := os.Getenv(envGuardMode)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	n, _, err := sockshare.ParseListenEnv(os.LookupEnv, os.Getpid())
	if err != nil || n == 0 {
		fmt.Fprintln(os.Stderr, "guard worker: no listener:", err)
		return 2
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "guard worker:", err)
		return 2
	}
	id := os.Getenv("CLUSTERD_WORKER_ID")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %s\n", os.Getpid(), id)
	})
	mux.HandleFunc("/shutdown", func(w http.ResponseWriter, r *http.Request) {
		if want := r.URL.Query().Get("worker"); want != "" && want != id {
			http.Error(w, "not this worker", http.StatusConflict)
			return
		}
		how, err := breakListener(ln, mode == "hijack")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d %s %s\n", os.Getpid(), id, how)
	})
	var active sync.WaitGroup
	srv := &http.Server{Handler: mux, ConnState: func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			active.Add(1)
		case http.StateClosed, http.StateHijacked:
			active.Done()
		}
	}}
	srv.SetKeepAlivesEnabled(false)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if err := sayReady(false); err != nil {
		fmt.Fprintln(os.Stderr, "guard worker:", err)
		return 2
	}
	select {
	case err := <-served:
		// What servers do when accept fails for good, after finishing the
		// requests they have (the one that broke the listener among them).
		fmt.Fprintln(os.Stderr, "guard worker: serve:", err)
		_ = srv.Shutdown(context.Background())
		return 1
	case <-term:
		// Drain: stop accepting, answer every connection already accepted
		// (net/http's Shutdown alone drops a request that arrives on a
		// connection accepted just before it).
		ln.Close()
		active.Wait()
		return 0
	}
}

// breakListener shuts the listening socket down under every worker; with
// hijack it also connects it somewhere, which makes it a client socket that
// can never listen again. Linux 6.18 refuses (EINVAL) to connect a socket
// that listened; there the socket, whose port the shutdown released (it
// was bound to port 0), is bound to another port instead, where a listen
// in place would serve: the master must replace it all the same. how says
// which was done.
func breakListener(ln net.Listener, hijack bool) (how string, err error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return "", errors.New("listener has no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return "", err
	}
	var opErr error
	var target net.Listener
	if hijack {
		if target, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return "", err
		}
		defer target.Close()
	}
	how = "shut down"
	err = rc.Control(func(fd uintptr) {
		if opErr = unix.Shutdown(int(fd), unix.SHUT_RD); opErr != nil || !hijack {
			return
		}
		a := target.Addr().(*net.TCPAddr)
		sa := &unix.SockaddrInet4{Port: a.Port}
		copy(sa.Addr[:], a.IP.To4())
		how = "connected"
		err := unix.Connect(int(fd), sa)
		if err == unix.EINVAL {
			how = "bound elsewhere"
			err = unix.Bind(int(fd), &unix.SockaddrInet4{Addr: sa.Addr})
		}
		if err != nil && err != unix.EINPROGRESS {
			opErr = fmt.Errorf("%s: %w", how, err)
		}
	})
	if err != nil {
		return "", err
	}
	return how, opErr
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// answersWithin dials addr until an HTTP request succeeds, and reports how
// long that took, failing the test past limit.
func answersWithin(t *testing.T, addr string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		_, err := get(addr, "/")
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s still failing %v after the shutdown: %v", addr, limit, err)
		}
		time.Sleep(5 * time.Millisecond) // polling a port: no event says it listens again
	}
}

func TestRealListenerShutdownHeals(t *testing.T) {
	for _, tc := range []struct {
		name, balance string
		port          bool // an explicit port, not port 0
	}{
		{"shared-port0", "shared", false},
		{"shared-explicit-port", "shared", true},
		{"reuseport", "reuseport", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			listen := "tcp://127.0.0.1:0"
			if tc.port {
				listen = fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
			}
			m := startMaster(t, masterConfig{
				Workers: 2, Listen: []string{listen}, Balance: tc.balance, Ready: "ipc",
				Command: guardCommand(t, "guard-worker", "shutdown"), MinUptime: time.Millisecond,
			})
			addr := m.addr()
			m.next("all workers ready")
			// Any worker answers; with reuseport, keep asking until slot 0
			// does (the others refuse), whose socket is then the one shut
			// down.
			path := "/shutdown"
			if tc.balance == "reuseport" {
				path += "?worker=0"
			}
			var who string
			for range 1000 {
				resp, err := client.Get("http://" + addr + path)
				if err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 128)
				k, _ := resp.Body.Read(b)
				resp.Body.Close()
				who = string(b[:k])
				if resp.StatusCode == 200 {
					break
				}
				if resp.StatusCode != http.StatusConflict {
					t.Fatalf("shutdown: %s %s", resp.Status, who)
				}
			}
			if !strings.Contains(who, "shut down") {
				t.Fatalf("no worker of slot 0 answered: %q", who)
			}
			took := answersWithin(t, addr, time.Second)
			healed := m.first("listener stopped listening; listening again")
			if healed["worker"] == nil || healed["pid"] == nil {
				t.Errorf("heal log %v does not name the worker and pid", healed)
			}
			if tc.balance == "reuseport" {
				if field(healed, "worker") != 0 {
					t.Errorf("heal log names worker %v, want slot 0", healed["worker"])
				}
				if n := m.count("listener stopped listening; listening again"); n != 1 {
					t.Errorf("%d reuseport sockets healed, want only slot 0's", n)
				}
			}
			t.Logf("port answered again %v after the shutdown (%s)", took, strings.TrimSpace(who))
			// The crashed workers come back on the healed socket.
			m.waitFor("two workers serving again", func() bool {
				return m.countLocked("worker ready") >= 3
			})
			pidsServing(t, addr, 2)
			n := underLoad(t, addr, func() {
				m.signal(syscall.SIGHUP)
				m.next("reload done")
			})
			t.Logf("%d requests, none failed, across a reload after the heal", n)
			if c := m.count("listener stopped listening; replaced by a new socket"); c != 0 {
				t.Errorf("%d listeners replaced, want healed in place", c)
			}
		})
	}
}

func TestRealListenerHijackReplaced(t *testing.T) {
	for _, balance := range []string{"shared", "reuseport"} {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			m := startMaster(t, masterConfig{
				Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Balance: balance, Ready: "ipc",
				Command: guardCommand(t, "guard-worker", "hijack"), MinUptime: time.Millisecond,
			})
			addr := m.addr()
			m.next("all workers ready")
			// With reuseport, only slot 0's socket is hijacked.
			var who string
			for i := 0; ; i++ {
				resp, err := client.Get("http://" + addr + "/shutdown?worker=0")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				who = strings.TrimSpace(string(b))
				if resp.StatusCode == 200 {
					break
				}
				if resp.StatusCode != http.StatusConflict || i > 1000 {
					t.Fatalf("shutdown: %s %s", resp.Status, who)
				}
			}
			r := m.first("listener stopped listening; replaced by a new socket")
			if r["worker"] == nil || r["pid"] == nil {
				t.Errorf("replace log %v does not name the worker and pid", r)
			}
			t.Logf("listener %s; replaced: %v", who, r["reason"])
			if balance == "reuseport" && field(r, "worker") != 0 {
				t.Errorf("replace log names worker %v, want slot 0", r["worker"])
			}
			m.first("restarting workers onto a replaced listener")
			answersWithin(t, addr, failDeadline(t))
			m.next("reload done")
			pidsServing(t, addr, 2)
			if n := m.count("listener stopped listening; replaced by a new socket"); n != 1 {
				t.Errorf("%d sockets replaced, want 1", n)
			}
		})
	}
}

// countLocked counts log lines with msg; for waitFor conditions, which run
// under the lock.
func (m *runningMaster) countLocked(msg string, kv ...any) int {
	n := 0
	for _, l := range m.logs {
		if logMatches(l, msg, kv) {
			n++
		}
	}
	return n
}

// helperGuardIPC is a worker that says ready over IPC, then misbehaves on
// the IPC connection in its first generation, as CLUSTERD_TEST_GUARD_MODE
// says:
//
//	flood       send heartbeats as fast as it can, until the connection ends
//	flood-fds   the same with 16 descriptors on each
//	half-frame  send half of a 1 MiB frame and stop; print "misbehaved"
//	            once it is in the kernel
//
// Then it waits for SIGTERM.
func helperGuardIPC() int {
	mode := os.Getenv(envGuardMode)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	fd, err := strconv.Atoi(os.Getenv(ipc.EnvIPCFD))
	if err != nil {
		fmt.Fprintln(os.Stderr, "guard ipc worker: no ipc fd")
		return 2
	}
	raw, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) // for bytes beside the Conn's
	if err != nil {
		fmt.Fprintln(os.Stderr, "guard ipc worker:", err)
		return 2
	}
	if err := sayReady(false); err != nil {
		fmt.Fprintln(os.Stderr, "guard ipc worker:", err)
		return 2
	}
	if os.Getenv(ipc.EnvWorkerGen) == "1" {
		if err := misbehave(mode, raw); err != nil {
			fmt.Fprintln(os.Stderr, "guard ipc worker:", err)
			return 2
		}
		fmt.Println("misbehaved")
	}
	<-term
	return 0
}

func misbehave(mode string, raw int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch mode {
	case "flood", "flood-fds":
		m := &ipc.Message{Kind: ipc.KindHeartbeat}
		if mode == "flood-fds" {
			m.FDs = make([]*os.File, 16)
			for i := range m.FDs {
				m.FDs[i] = os.Stdin // /dev/null; Send sends duplicates
			}
		}
		for workerConn.Send(m) == nil {
		}
		return nil // the master ended the connection
	case "half-frame":
		if err := workerConn.Flush(ctx); err != nil {
			return err
		}
		// A length prefix for a frame just under the limit, then half of it.
		const size = ipc.DefaultMaxFrameSize - 16
		frame := make([]byte, 4+size/2)
		binary.BigEndian.PutUint32(frame, size)
		for len(frame) > 0 {
			n, err := unix.Write(raw, frame)
			if err == unix.EAGAIN {
				// The Conn made the socket non-blocking: wait until writable.
				if _, err := unix.Poll([]unix.PollFd{{Fd: int32(raw), Events: unix.POLLOUT}}, -1); err != nil && err != unix.EINTR {
					return err
				}
				continue
			}
			if err != nil {
				return err
			}
			frame = frame[n:]
		}
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// quietFor lets d pass while something goes on (a flood being measured):
// the one place these tests sleep on purpose.
func quietFor(d time.Duration) { time.Sleep(d) }

// cpuTicks returns the user and system time of pid in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

func TestRealIPCFlood(t *testing.T) {
	for _, mode := range []string{"flood", "flood-fds"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			m := startMaster(t, masterConfig{
				Workers: 1, Ready: "ipc", Command: guardCommand(t, "guard-ipc", mode),
			})
			ready := m.next("worker ready", "worker", 0)
			l := m.next("ipc flood: reading the worker's messages at the limit", "worker", 0, "pid", field(ready, "pid"))
			// The flood goes on: measure what it costs the master, and that
			// it is logged once however long it lasts.
			start, ticks := time.Now(), cpuTicks(t, m.pid)
			quietFor(2 * time.Second)
			took, used := time.Since(start), cpuTicks(t, m.pid)-ticks
			t.Logf("%s: logged %v; master CPU %.0f%% of one CPU (%d ticks in %v) while paced", mode, l["what"],
				float64(used)/clockTicks/took.Seconds()*100, used, took.Round(time.Millisecond))
			want := map[string]string{"flood": "messages", "flood-fds": "descriptors"}[mode]
			if l["what"] != want {
				t.Errorf("flood log says %v, want %s", l["what"], want)
			}
			if n := m.count("ipc flood: reading the worker's messages at the limit"); n != 1 {
				t.Errorf("one flood logged %d times, want once", n)
			}
			if n := m.count("ipc protocol error"); n != 0 {
				t.Errorf("a flood was %d protocol errors, want a paced worker", n)
			}
		})
	}
}

func TestRealIPCHalfFrame(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Ready: "ipc", Command: guardCommand(t, "guard-ipc", "half-frame"),
	})
	ready := m.next("worker ready", "worker", 0)
	pid := field(ready, "pid")
	m.stdoutLine("misbehaved")
	sent := time.Now()
	e := m.next("ipc protocol error", "worker", 0, "pid", pid)
	took := time.Since(sent)
	if msg, _ := e["error"].(string); !strings.Contains(msg, "frame timed out") {
		t.Errorf("protocol error %q, want a frame timeout", msg)
	}
	if took > ipc.DefaultFrameTimeout+5*time.Second {
		t.Errorf("half-sent frame was an error after %v, want within %v", took, ipc.DefaultFrameTimeout)
	}
	t.Logf("half-sent frame: protocol error %v after the worker sent it", took.Round(time.Millisecond))
	m.next("worker exited", "worker", 0, "pid", pid)
	m.next("worker ready", "worker", 0, "generation", 2)
	if n := m.count("ipc protocol error"); n != 1 {
		t.Errorf("%d protocol errors logged, want 1", n)
	}
}

// unixClient sends HTTP requests over the unix socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}
}

func getUnix(path, urlPath string) error {
	resp, err := unixClient(path).Get("http://unix" + urlPath)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// TestRealUnixListener: a unix listener with mode=0660 has that mode, and its
// file is gone after every kind of stop.
func TestRealUnixListener(t *testing.T) {
	for _, stop := range []string{"term", "quit", "intensity"} {
		t.Run(stop, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "app.sock")
			c := masterConfig{Workers: 1, Listen: []string{"unix://" + path + "?mode=0660"}, Ready: "ipc"}
			if stop == "intensity" {
				c.WorkerMode, c.Ready, c.MaxRestarts, c.BackoffMin, c.BackoffMax = []string{"crash"}, "exec", 2, time.Millisecond, time.Millisecond
			}
			m := startMaster(t, c)
			m.next("listening")
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
				t.Errorf("socket file mode %v, want a socket with 0660", fi.Mode())
			}
			switch stop {
			case "term", "quit":
				m.next("all workers ready")
				if err := getUnix(path, "/"); err != nil {
					t.Fatalf("request over %s: %v", path, err)
				}
				sig := map[string]syscall.Signal{"term": syscall.SIGTERM, "quit": syscall.SIGQUIT}[stop]
				m.signal(sig)
				if code := m.wait(); code != 0 {
					t.Errorf("master exit code %d after %s, want 0", code, stop)
				}
			case "intensity":
				if code := m.wait(); code == 0 {
					t.Errorf("master exit code 0 after restart intensity exceeded, want non-zero")
				}
				m.first("restart intensity exceeded")
			}
			if _, err := os.Lstat(path); !os.IsNotExist(err) {
				t.Errorf("socket file after the master's %s stop: %v, want it removed", stop, err)
			}
		})
	}
}

// TestRealUnixSocketFileNotOurs: a file that replaced the master's socket
// at its path is not removed at stop.
func TestRealUnixSocketFileNotOurs(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app.sock")
	m := startMaster(t, masterConfig{Workers: 1, Listen: []string{"unix://" + path}, Ready: "ipc"})
	m.next("all workers ready")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("someone else's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(); code != 0 {
		t.Errorf("master exit code %d, want 0", code)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "someone else's\n" {
		t.Errorf("file that replaced the socket after stop: %q, %v; want it left alone", b, err)
	}
}

// TestInProcessActivatedUnixKept: the file of a unix socket from socket
// activation belongs to whoever activated it and stays after Run.
func TestInProcessActivatedUnixKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "activated.sock")
	spec, err := sockshare.ParseSpec("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	_, _, stop := runActivated(t, spec)
	if err := getUnix(path, "/"); err != nil {
		t.Errorf("request to the activated unix socket: %v", err)
	}
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("activated socket file after Run: %v, %v; want it left in place", fi, err)
	}
}

// TestRealUnixListenerShutdownReplaced: a unix listener that a worker shut
// down cannot listen again; the periodic check replaces it and restarts the
// workers onto the new one.
func TestRealUnixListenerShutdownReplaced(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app.sock")
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"unix://" + path + "?mode=0600"}, Ready: "ipc",
		Command: guardCommand(t, "guard-worker", "shutdown"),
	})
	m.next("all workers ready")
	if err := getUnix(path, "/shutdown"); err != nil {
		t.Fatal(err)
	}
	r := m.next("listener stopped listening; replaced by a new socket")
	if r["cause"] != "periodic check" {
		t.Errorf("replace log %v, want the periodic check", r)
	}
	m.next("reload done")
	for range 10 {
		if err := getUnix(path, "/"); err != nil {
			t.Fatalf("request after the replacement: %v", err)
		}
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("replaced socket file: %v, %v; want mode 0600", fi, err)
	}
	m.signal(syscall.SIGTERM)
	m.wait()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("replaced socket file after stop: %v, want it removed", err)
	}
}
