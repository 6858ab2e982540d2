package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/sockshare"
	"golang.org/x/sys/unix"
)

// Tests of the master against hostile or broken workers: a worker that
// shuts the shared listening socket down, floods the IPC connection, or
// stops in the middle of a frame.

const envGuardMode = "CLUSTERD_TEST_GUARD_MODE"

func init() {
	registerHelper("guard-worker", helperGuardWorker)
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
//	          so that it can never listen again
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
		if err := breakListener(ln, mode == "hijack"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d %s shut down\n", os.Getpid(), id)
	})
	srv := &http.Server{Handler: mux}
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
		return 0
	}
}

// breakListener shuts the listening socket down under every worker; with
// hijack it also connects it somewhere, which makes it a client socket.
func breakListener(ln net.Listener, hijack bool) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return errors.New("listener has no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	var target net.Listener
	if hijack {
		if target, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
		defer target.Close()
	}
	err = rc.Control(func(fd uintptr) {
		if opErr = unix.Shutdown(int(fd), unix.SHUT_RD); opErr != nil || !hijack {
			return
		}
		a := target.Addr().(*net.TCPAddr)
		sa := &unix.SockaddrInet4{Port: a.Port}
		copy(sa.Addr[:], a.IP.To4())
		if err := unix.Connect(int(fd), sa); err != nil && err != unix.EINPROGRESS {
			opErr = fmt.Errorf("connect: %w", err)
		}
	})
	if err != nil {
		return err
	}
	return opErr
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
			// does, whose socket is then the one shut down.
			var who string
			for range 1000 {
				resp, err := client.Get("http://" + addr + "/shutdown")
				if err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 128)
				k, _ := resp.Body.Read(b)
				resp.Body.Close()
				who = string(b[:k])
				if resp.StatusCode != 200 {
					t.Fatalf("shutdown: %s %s", resp.Status, who)
				}
				if tc.balance == "shared" || strings.Fields(who)[1] == "0" {
					break
				}
			}
			took := answersWithin(t, addr, time.Second)
			healed := m.first("listener stopped listening; listening again")
			if healed["worker"] == nil || healed["pid"] == nil {
				t.Errorf("heal log %v does not name the worker and pid", healed)
			}
			if tc.balance == "reuseport" && field(healed, "worker") != 0 {
				t.Errorf("heal log names worker %v, want slot 0", healed["worker"])
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
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc",
		Command: guardCommand(t, "guard-worker", "hijack"), MinUptime: time.Millisecond,
	})
	addr := m.addr()
	m.next("all workers ready")
	if _, err := get(addr, "/shutdown"); err != nil {
		t.Fatal(err)
	}
	r := m.first("listener stopped listening; replaced by a new socket")
	if r["worker"] == nil || r["pid"] == nil {
		t.Errorf("replace log %v does not name the worker and pid", r)
	}
	m.first("restarting workers onto a replaced listener")
	answersWithin(t, addr, failDeadline(t))
	m.next("reload done")
	pidsServing(t, addr, 2)
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
