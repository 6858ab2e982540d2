package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/worker"
	"golang.org/x/sys/unix"
)

// Real-process tests of --balance round-robin and least-conn: the master
// accepts, and workers linking package worker take the connections it
// hands them through worker.Listen.

func init() { helpers["balanced"] = balancedHelper }

// balancedHelper serves HTTP on worker.Listen of -addr (on -network):
//
//	GET /  "pid=P worker=W", after -hold when the worker is -hold-worker
func balancedHelper(args []string) int {
	fs := flag.NewFlagSet("balanced", flag.ContinueOnError)
	network := fs.String("network", "tcp", "network of -addr")
	addr := fs.String("addr", "127.0.0.1:0", "address to ask the master for")
	holdWorker := fs.Int("hold-worker", -1, "the slot whose requests take -hold")
	hold := fs.Duration("hold", 0, "how long -hold-worker holds each request")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	id, _ := worker.ID()
	worker.DrainOnSignal(syscall.SIGTERM)
	ln, err := worker.Listen(context.Background(), *network, *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "balanced helper: %v\n", err)
		return 1
	}
	if err := worker.Ready(); err != nil {
		fmt.Fprintf(os.Stderr, "balanced helper: %v\n", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if id == *holdWorker {
			// The slow worker is the behaviour under test, not a wait.
			time.Sleep(*hold)
		}
		fmt.Fprintf(w, "pid=%d worker=%d\n", os.Getpid(), id)
	})
	if err := worker.ServeHTTP(context.Background(), &http.Server{Handler: mux}, ln); err != nil {
		fmt.Fprintf(os.Stderr, "balanced helper: %v\n", err)
		return 1
	}
	return 0
}

// spread sends n requests, each on a new connection, from conc clients,
// and returns the answers per worker slot and the failures.
func spread(t *testing.T, url string, n, conc int) (perWorker map[string]int, failed int, firstErr error) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: failAfter(t)}
	return spreadWith(client, url, n, conc)
}

// spreadWith is spread with the given client.
func spreadWith(client *http.Client, url string, n, conc int) (perWorker map[string]int, failed int, firstErr error) {
	var (
		mu   sync.Mutex
		next atomic.Int64
		wg   sync.WaitGroup
	)
	perWorker = map[string]int{}
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				slot, err := getSlot(client, url)
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					perWorker[slot]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return perWorker, failed, firstErr
}

// getSlot does one GET and returns the "worker=W" of its answer.
func getSlot(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(string(body)) {
		if v, ok := strings.CutPrefix(f, "worker="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("answer %q", body)
}

func balancedCluster(t *testing.T, balance string, workers int, args ...string) (*cluster, string) {
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", fmt.Sprint(workers), "--ready", "ipc", "--balance", balance},
		helper:     "balanced",
		workerArgs: args,
	})
	addr, _ := c.waitStarted()
	return c, addr
}

func TestRoundRobinIsFair(t *testing.T) {
	c, addr := balancedCluster(t, "round-robin", 4)
	const n = 4000
	per, failed, err := spread(t, "http://"+addr+"/", n, 8)
	t.Logf("round-robin over 4 workers, %d connections: %v", n, per)
	if failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, n, err)
	}
	if len(per) != 4 {
		t.Errorf("answers came from %d workers, want 4: %v", len(per), per)
	}
	for slot, got := range per {
		// 25% ± 5% of the connections.
		if got < n*20/100 || got > n*30/100 {
			t.Errorf("worker %s got %d of %d connections (%.1f%%), want 20%% to 30%%", slot, got, n, 100*float64(got)/n)
		}
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
}

func TestLeastConnAvoidsSlowWorker(t *testing.T) {
	c, addr := balancedCluster(t, "least-conn", 4, "-hold-worker", "0", "-hold", "200ms")
	const n = 800
	per, failed, err := spread(t, "http://"+addr+"/", n, 16)
	t.Logf("least-conn over 4 workers, worker 0 holding each connection 200ms, %d connections: %v", n, per)
	if failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, n, err)
	}
	slow := per["0"]
	for slot, got := range per {
		if slot != "0" && got <= 2*slow {
			t.Errorf("worker %s got %d connections, the slow worker 0 %d; want the slow one to get well under half of any other's", slot, got, slow)
		}
	}
	if slow == 0 {
		// It still serves: least-conn counts open connections, it does not
		// shut a worker out.
		t.Errorf("the slow worker got no connection at all: %v", per)
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
}

func TestBalancedRefusesUnmodifiedBinary(t *testing.T) {
	// A binary that does not speak IPC either waits (sleep) or, like a
	// server that finds no socket and fails to bind its default address,
	// crash-loops; start-up fails with one line that names the modes for
	// it, at --ready-timeout or sooner when the restarts run out.
	crash := []string{"sh", "-c", "echo 'cannot bind 0.0.0.0:8000' >&2; exit 1"}
	for _, tc := range []struct {
		name    string
		flags   []string
		command []string
		want    string
	}{
		{"waits", []string{"--ready", "exec", "--ready-timeout", "2s"}, []string{"sleep", "1000"}, "spoke the clusterd IPC protocol within --ready-timeout 2s"},
		{"crash-loops", []string{"--ready", "exec", "--ready-timeout", "2s", "--max-restarts", "-1"}, crash, "no worker spoke the clusterd IPC protocol within --ready-timeout 2s"},
		// The deadline far off: the restarts run out first.
		{"runs out of restarts", []string{"--ready-timeout", "1m", "--max-restarts", "2"}, crash, "restart intensity exceeded"},
	} {
		for _, balance := range []string{"round-robin", "least-conn"} {
			t.Run(tc.name+"/"+balance, func(t *testing.T) {
				flags := append([]string{listenAny, "-w", "2", "--balance", balance}, tc.flags...)
				c := startCluster(t, clusterConfig{flags: flags, command: tc.command})
				code, _ := c.wait()
				if code != 1 {
					t.Errorf("clusterd exited %d, want 1", code)
				}
				c.mu.Lock()
				defer c.mu.Unlock()
				var last string
				for _, e := range c.logs {
					if raw := e.str("@raw"); strings.HasPrefix(raw, "clusterd: ") {
						last = raw
					}
				}
				t.Logf("error line: %s", last)
				for _, want := range []string{tc.want, "IPC protocol", "--balance " + balance, "--balance shared", "--balance reuseport"} {
					if !strings.Contains(last, want) {
						t.Errorf("error line %q does not contain %q", last, want)
					}
				}
				if strings.Count(last, "\n") > 0 {
					t.Errorf("error is not one line: %q", last)
				}
			})
		}
	}
}

// waitFDs waits until the master's fd count is back at the baseline want
// (or under it: a baseline taken just after start may count a descriptor
// the master was about to close), and fails the test with the last count
// at the failure deadline. The count has no event to wait on: the master
// closes its copies of connections as the workers' reports arrive.
func waitFDs(t *testing.T, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(failAfter(t))
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got := countFDs(t, pid)
		if got <= want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("master has %d fds, %d at the baseline", got, want)
			return
		}
		<-tick.C
	}
}

func TestBalancedWorkerKilledDuringHandOff(t *testing.T) {
	for _, balance := range []string{"round-robin", "least-conn"} {
		t.Run(balance, func(t *testing.T) {
			const conc = 16
			c, addr := balancedCluster(t, balance, 4)
			baseline := countFDs(t, c.pid)
			c.mu.Lock()
			_, victim := findLog(c.logs, "worker ready", "worker", "2")
			c.mu.Unlock()
			l := startLoad(t, "http://"+addr+"/", conc, false)
			cursor := c.logLen()
			// Kill it while connections stream to it.
			waitServed(t, l.ok.Load, 500)
			if err := syscall.Kill(victim.int("pid"), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			c.waitLog(cursor, "worker exited", "pid", victim.int("pid"))
			c.waitLog(cursor, "worker ready", "worker", "2")
			served := l.ok.Load()
			waitServed(t, l.ok.Load, served+500)
			l.halt()
			ok, refused, hung, failed := l.ok.Load(), l.refused.Load(), l.hung.Load(), l.failed.Load()
			t.Logf("load: %d ok, %d refused, %d hung, %d failed; first errors %q", ok, refused, hung, failed, l.errors)
			// Only requests the killed worker had accepted can fail: at most
			// one per client.
			if refused+hung > 0 || failed > conc {
				t.Errorf("%d refused, %d hung, %d failed; want none refused or hung and at most %d failed (the killed worker's own)",
					refused, hung, failed, conc)
			}
			waitFDs(t, c.pid, baseline)
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
			}
		})
	}
}

func TestBalancedReloadUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		balance   string
		keepAlive bool
	}{
		{"round-robin", false}, {"least-conn", false},
		// Clients that reuse their connections: the old workers end them
		// with "Connection: close" after a request, or close them idle.
		{"round-robin", true}, {"least-conn", true},
	} {
		name := tc.balance
		if tc.keepAlive {
			name += "-keep-alive"
		}
		t.Run(name, func(t *testing.T) {
			c := startCluster(t, clusterConfig{
				flags:  []string{listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "10s", "--balance", tc.balance},
				helper: "balanced",
			})
			addr, _ := c.waitStarted()
			baseline := countFDs(t, c.pid)
			l := startLoad(t, "http://"+addr+"/", 16, tc.keepAlive)
			for i := range 5 {
				before := currentPIDs(c)
				cursor := c.logLen()
				served := l.ok.Load()
				c.signal(syscall.SIGHUP)
				c.waitLog(cursor, "reload done")
				for _, pid := range before {
					c.waitLog(cursor, "worker exited", "pid", pid)
				}
				if l.ok.Load() == served {
					t.Errorf("no request was served during reload %d", i+1)
				}
			}
			// Not one request may fail: a connection is served by the old
			// worker, given back by it, or taken by a new one.
			l.check(t)
			waitFDs(t, c.pid, baseline)
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
			}
		})
	}
}

// waitServed waits until served() reaches n (a count, checked every few
// milliseconds, with the failure deadline).
func waitServed(t *testing.T, served func() int64, n int64) {
	t.Helper()
	deadline := time.Now().Add(failAfter(t))
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for served() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests served, waited for %d", served(), n)
		}
		<-tick.C
	}
}

func TestBalancedSkipsWorkerThatStopsReading(t *testing.T) {
	const queue = 4
	c := startCluster(t, clusterConfig{
		flags:  []string{listenAny, "-w", "3", "--ready", "ipc", "--balance", "round-robin", "--conn-queue", fmt.Sprint(queue)},
		helper: "balanced",
	})
	addr, _ := c.waitStarted()
	c.mu.Lock()
	_, victim := findLog(c.logs, "worker ready", "worker", "1")
	c.mu.Unlock()
	vpid := victim.int("pid")
	baseline := countFDs(t, c.pid)
	// A stopped process reads nothing: not its IPC socket, not its
	// connections. The connections handed to it before the master sees
	// that wait for it; no more than the queue bound may.
	if err := syscall.Kill(vpid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(vpid, syscall.SIGCONT) })
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: failAfter(t)}
	var (
		stopped    atomic.Bool
		fromVictim atomic.Int64 // answers by the stopped worker to requests sent while it was stopped
		ok, failed atomic.Int64
		wg         sync.WaitGroup
		peakFDs    atomic.Int64
		next       atomic.Int64
		victimSlot = "1"
		total      = int64(2000)
	)
	stopped.Store(true)
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= total {
				whileStopped := stopped.Load()
				slot, err := getSlot(client, "http://"+addr+"/")
				switch {
				case err != nil:
					failed.Add(1)
				case slot == victimSlot && whileStopped:
					fromVictim.Add(1)
					ok.Add(1)
				default:
					ok.Add(1)
				}
			}
		})
	}
	// The other two workers carry the load while it is stopped.
	waitServed(t, ok.Load, total-2*queue)
	if n := int64(countFDs(t, c.pid)); n > peakFDs.Load() {
		peakFDs.Store(n)
	}
	stopped.Store(false)
	if err := syscall.Kill(vpid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	t.Logf("%d ok, %d failed; %d answered by the stopped worker after it resumed; master fds: %d at the baseline, %d while it was stopped",
		ok.Load(), failed.Load(), fromVictim.Load(), baseline, peakFDs.Load())
	if failed.Load() > 0 {
		t.Errorf("%d requests failed", failed.Load())
	}
	// Besides the unacknowledged ones (the bound), the worker may have taken
	// a few it had not answered yet as the signal stopped it: at most one
	// per client.
	if n := fromVictim.Load(); n > queue+16 {
		t.Errorf("the stopped worker was handed %d connections, want at most the queue bound %d and one per client (16)", n, queue)
	}
	if peakFDs.Load() > int64(baseline+queue+16) {
		t.Errorf("master had %d fds while a worker was stopped, %d at the baseline", peakFDs.Load(), baseline)
	}
	waitFDs(t, c.pid, baseline)
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
}

// stealListener returns a copy (pidfd_getfd) of the socket of process pid,
// the master, that listens on the address match accepts: in the balanced
// modes no worker holds it, so a test breaks it from outside, as an
// operator's tool could.
func stealListener(t *testing.T, pid int, match func(unix.Sockaddr) bool) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed since
		}
		sa, err := unix.Getsockname(fd)
		acc, aerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err == nil && aerr == nil && acc == 1 && match(sa) {
			return fd
		}
		unix.Close(fd)
	}
	t.Fatalf("master pid %d has no socket listening on that address", pid)
	return -1
}

// A static listener that stops listening is healed by the master: a TCP
// socket shut down listens again in place; a unix one cannot, and is
// replaced by a new socket on the same path. The master's accepter follows
// it in both cases, without restarting the workers (they hold no listener
// in these modes), and keeps no descriptor of the old socket.
func TestBalancedListenerHeals(t *testing.T) {
	for _, tc := range []struct {
		name, network string
		log           string
	}{
		{"tcp-in-place", "tcp", "listener stopped listening; listening again"},
		{"unix-replaced", "unix", "listener stopped listening; replaced by a new socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen, args := listenAny, []string(nil)
			path := t.TempDir() + "/web.sock"
			if tc.network == "unix" {
				listen, args = "--listen=unix://"+path, []string{"-network", "unix", "-addr", path}
			}
			c := startCluster(t, clusterConfig{
				flags:      []string{listen, "-w", "2", "--ready", "ipc", "--balance", "round-robin"},
				helper:     "balanced",
				workerArgs: args,
			})
			addr, _ := c.waitStarted()
			url := "http://" + addr + "/"
			tr := &http.Transport{DisableKeepAlives: true}
			match := func(sa unix.Sockaddr) bool {
				in4, ok := sa.(*unix.SockaddrInet4)
				return ok && fmt.Sprintf("127.0.0.1:%d", in4.Port) == addr
			}
			if tc.network == "unix" {
				url = "http://web/"
				tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				}
				match = func(sa unix.Sockaddr) bool {
					un, ok := sa.(*unix.SockaddrUnix)
					return ok && un.Name == path
				}
			}
			client := &http.Client{Transport: tr, Timeout: failAfter(t)}
			if _, failed, err := spreadWith(client, url, 20, 2); failed > 0 {
				t.Fatalf("%d requests failed before the listener broke; first: %v", failed, err)
			}
			pids := currentPIDs(c)
			baseline := countFDs(t, c.pid)
			fd := stealListener(t, c.pid, match)
			cursor := c.logLen()
			err := unix.Shutdown(fd, unix.SHUT_RD)
			unix.Close(fd) // the master's copies keep the socket
			if err != nil {
				t.Fatal(err)
			}
			if tc.network == "tcp" {
				// The accepter sees it at once (accept4 fails with EINVAL)
				// and has the loop check its listeners then. A unix
				// listener shut down only refuses connections, and waits
				// for the periodic check.
				c.waitLog(cursor, "balanced listener stopped listening; accepting again once it is healed", "addr", addr)
			}
			c.waitLog(cursor, tc.log, "addr", addr)
			per, failed, err := spreadWith(client, url, 200, 4)
			t.Logf("after the heal: %v, %d failed", per, failed)
			if failed > 0 {
				t.Errorf("%d of 200 requests failed after the heal; first: %v", failed, err)
			}
			if len(per) != 2 {
				t.Errorf("answers came from %d workers, want 2: %v", len(per), per)
			}
			if n := c.countLogs(cursor, "restarting workers onto a replaced listener"); n != 0 {
				t.Errorf("workers restarted for a healed listener (%d times); they hold none", n)
			}
			if after := currentPIDs(c); fmt.Sprint(after) != fmt.Sprint(pids) {
				t.Errorf("workers %v after the heal, %v before; want the same", after, pids)
			}
			waitFDs(t, c.pid, baseline)
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
			}
		})
	}
}

// lowestFreeFD returns the lowest descriptor number process pid has not
// open: the number its next open or accept would get.
func lowestFreeFD(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	open := map[int]bool{}
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			open[n] = true
		}
	}
	n := 0
	for open[n] {
		n++
	}
	return n
}

// When the master runs out of descriptors, accept fails (EMFILE) with the
// connection still queued: the master says so once for the whole burst,
// backs off rather than spinning on the readable socket, keeps running, and
// serves the queued connections once descriptors are there again. The
// limit is the real one, lowered on the running master with prlimit(2).
func TestBalancedAcceptErrorsBackOff(t *testing.T) {
	c, addr := balancedCluster(t, "round-robin", 2)
	url := "http://" + addr + "/"
	baseline := countFDs(t, c.pid)
	if _, failed, err := spread(t, url, 20, 2); failed > 0 {
		t.Fatalf("%d requests failed before the limit; first: %v", failed, err)
	}
	// The master's copies of those connections are closed: no descriptor
	// it frees from here on could let one accept through.
	waitFDs(t, c.pid, baseline)
	var saved unix.Rlimit
	if err := unix.Prlimit(c.pid, unix.RLIMIT_NOFILE, nil, &saved); err != nil {
		t.Fatal(err)
	}
	restore := sync.OnceFunc(func() {
		if err := unix.Prlimit(c.pid, unix.RLIMIT_NOFILE, &saved, nil); err != nil {
			t.Errorf("restore the master's RLIMIT_NOFILE: %v", err)
		}
	})
	t.Cleanup(restore)
	low := uint64(lowestFreeFD(t, c.pid))
	cursor := c.logLen()
	if err := unix.Prlimit(c.pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: low, Max: saved.Max}, nil); err != nil {
		t.Fatal(err)
	}
	const n = 40
	type result struct {
		per    map[string]int
		failed int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		per, failed, err := spread(t, url, n, 8)
		done <- result{per, failed, err}
	}()
	_, warned := c.waitLog(cursor, "accept failed; backing off", "addr", addr)
	t.Logf("while the master could open no descriptor: %s", warned.str("error"))
	if !strings.Contains(warned.str("error"), "too many open files") {
		t.Errorf("accept error %q, want EMFILE's", warned.str("error"))
	}
	// Every client's connection waits in the kernel's accept queue
	// (TCP_INFO of a listener: tcpi_unacked is its length), none refused.
	ln := stealListener(t, c.pid, func(sa unix.Sockaddr) bool {
		in4, ok := sa.(*unix.SockaddrInet4)
		return ok && fmt.Sprintf("127.0.0.1:%d", in4.Port) == addr
	})
	defer unix.Close(ln)
	deadline := time.Now().Add(failAfter(t))
	for {
		info, err := unix.GetsockoptTCPInfo(ln, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		if info.Unacked >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections queued on the listener, want the 8 clients'", info.Unacked)
		}
		time.Sleep(5 * time.Millisecond) // a kernel counter: no event to wait on
	}
	restore()
	r := <-done
	t.Logf("%d requests, %d failed, answered by %v", n, r.failed, r.per)
	if r.failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", r.failed, n, r.err)
	}
	_, again := c.waitLog(cursor, "accepting again", "addr", addr)
	failedAccepts := again.int("failed_accepts")
	warnedAt, _ := time.Parse(time.RFC3339Nano, warned.str("@timestamp"))
	againAt, _ := time.Parse(time.RFC3339Nano, again.str("@timestamp"))
	window := againAt.Sub(warnedAt)
	t.Logf("%d failed accepts in %v", failedAccepts, window)
	if k := c.countLogs(cursor, "accept failed; backing off"); k != 1 {
		t.Errorf("%d accept failures logged, want 1 for the burst", k)
	}
	// The back-off doubles from 5 ms to 1 s: some ten tries, then one a
	// second. An accepter that retried at once would fail thousands of
	// times.
	if limit := 10 + 2*int(window/time.Second); failedAccepts < 1 || failedAccepts > limit {
		t.Errorf("%d failed accepts in %v, want 1 to %d", failedAccepts, window, limit)
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
}
