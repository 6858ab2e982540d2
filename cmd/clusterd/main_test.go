package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/worker"
)

// helperEnv names the helper a re-executed test binary runs instead of the
// tests.
const helperEnv = "CLUSTERD_TEST_HELPER"

// helpers are the roles the test binary plays when re-executed: the real
// clusterd command, and workers that link package worker and behave like
// real servers (or misbehave on purpose).
var helpers = map[string]func(args []string) int{
	"clusterd": func(args []string) int {
		return execute(context.Background(), args, os.Stdout, os.Stderr)
	},
	"worker": workerHelper,
	"serial": serialHelper,
	// "nobody" runs clusterd as the user nobody (uid 65534), to be refused
	// by the control socket.
	"nobody": func(args []string) int {
		if err := syscall.Setgroups(nil); err != nil {
			fmt.Fprintln(os.Stderr, "setgroups:", err)
			return 1
		}
		if err := syscall.Setgid(65534); err != nil {
			fmt.Fprintln(os.Stderr, "setgid:", err)
			return 1
		}
		if err := syscall.Setuid(65534); err != nil {
			fmt.Fprintln(os.Stderr, "setuid:", err)
			return 1
		}
		return execute(context.Background(), args, os.Stdout, os.Stderr)
	},
	"crash": func([]string) int { return 3 },
	// bind binds its own port, args[0], as a server not written for
	// socket activation does, and fails as one does when it is taken.
	"bind": func(args []string) int {
		ln, err := net.Listen("tcp", args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting up")
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ln.Close()
		return 0
	},
}

var (
	usedMu      sync.Mutex
	usedHelpers = map[string]bool{}
)

// useHelper records that a test started helper name, which must exist.
func useHelper(t testing.TB, name string) {
	t.Helper()
	if _, ok := helpers[name]; !ok {
		t.Fatalf("unknown test helper %q", name)
	}
	usedMu.Lock()
	usedHelpers[name] = true
	usedMu.Unlock()
}

// startFDs are the fds this process inherited: those open without
// close-on-exec when package initialisation runs, before anything of its
// own (the runtime opens its epoll and cgroup fds close-on-exec).
var startFDs = inheritedFDs()

func TestMain(m *testing.M) {
	// The master starts each worker as `<this binary> exec-worker -- ...`.
	master.DispatchExecWorker()
	if name := os.Getenv(helperEnv); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown test helper %q\n", name)
			os.Exit(exitExecFailed)
		}
		os.Exit(h(os.Args[1:]))
	}
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && !testing.Short() {
		for name := range helpers {
			if !usedHelpers[name] {
				fmt.Fprintf(os.Stderr, "test helper %q was never used\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// inheritedFDs lists the open fds of this process that are not
// close-on-exec.
func inheritedFDs() []int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil
	}
	var fds []int
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err == nil && flags&unix.FD_CLOEXEC == 0 {
			fds = append(fds, fd)
		}
	}
	sort.Ints(fds)
	return fds
}

// workerHelper is an HTTP server on package worker, with flags that make it
// misbehave the ways a test needs:
//
//	GET /      "pid=P worker=W gen=G"
//	GET /slow  prints "slow request started" to stdout, answers after 2s
//	GET /fds   the fds the process inherited and its protocol variables
func workerHelper(args []string) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	neverReady := fs.Bool("never-ready", false, "never report ready")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM and the drain message; serve until killed")
	crashAfter := fs.Int("crash-after", 0, "exit with code 3 after answering this many requests (0: never)")
	exitGens := fs.String("exit-gens", "", "FIRST-LAST: exit 0 right after ready when the generation is in the range")
	failGens := fs.String("fail-gens", "", "FIRST-LAST: exit 1 at once, before touching any inherited fd, when the generation is in the range")
	grow := fs.Int("grow", 0, "once ready, allocate (and touch) this many MiB every 20ms, for ever")
	watchdog := fs.String("watchdog", "", "once: send WATCHDOG=1 once; keep: send it every WATCHDOG_USEC/4")
	watchdogSlot := fs.Int("watchdog-slot", -1, "only the worker of this slot does -watchdog (-1: all)")
	oomCgroup := fs.String("oom-cgroup", "", "once ready, join this memory cgroup (write cgroup.procs) and allocate until killed")
	neverReadyGens := fs.String("never-ready-gens", "", "FIRST-LAST: never report ready when the generation is in the range")
	say := fs.String("say", "", "print this line to stdout once ready")
	noIPC := fs.Bool("no-ipc", false, "ignore the IPC connection, as a binary that does not link package worker")
	spew := fs.Int("spew", 0, "write this many bytes of 64-byte lines to stdout once ready, then say so on stderr")
	spewGens := fs.String("spew-gens", "1-1", "FIRST-LAST: the generations that -spew")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *noIPC {
		os.Unsetenv(ipc.EnvIPCFD)
	}
	gen := worker.Generation()
	if inRange(*failGens, gen) {
		fmt.Fprintf(os.Stderr, "worker helper: generation %d fails on purpose\n", gen)
		return 1
	}
	id, _ := worker.ID()
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		worker.DrainOnSignal(syscall.SIGTERM)
	}
	lns, err := worker.Listeners()
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker helper: %v\n", err)
		return 1
	}
	if len(lns) == 0 {
		fmt.Fprintln(os.Stderr, "worker helper: no inherited listeners")
		return 1
	}
	if !*neverReady && !inRange(*neverReadyGens, gen) {
		if err := worker.Ready(); err != nil {
			fmt.Fprintf(os.Stderr, "worker helper: %v\n", err)
			return 1
		}
	}
	if inRange(*exitGens, gen) {
		return 0
	}
	if *grow > 0 {
		go growMemory(*grow, 20*time.Millisecond)
	}
	if *watchdog != "" && (*watchdogSlot < 0 || *watchdogSlot == id) {
		if err := sendWatchdog(*watchdog == "keep"); err != nil {
			fmt.Fprintf(os.Stderr, "worker helper: %v\n", err)
			return 1
		}
	}
	if *oomCgroup != "" {
		procs := filepath.Join(*oomCgroup, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "worker helper: %v\n", err)
			return 1
		}
		fmt.Printf("joined memory cgroup pid=%d\n", os.Getpid())
		growMemory(16, 0) // until the kernel's OOM killer ends it
	}
	if *say != "" {
		fmt.Println(*say)
	}
	if *spew > 0 && inRange(*spewGens, gen) {
		go func() {
			w := bufio.NewWriterSize(os.Stdout, 64<<10)
			line := strings.Repeat("spew ", 12) + "spew..\n" // 64 bytes
			n := 0
			for ; n < *spew; n += len(line) {
				w.WriteString(line)
			}
			if err := w.Flush(); err != nil {
				fmt.Fprintf(os.Stderr, "worker helper: spew: %v\n", err)
				return
			}
			fmt.Fprintf(os.Stderr, "spewed %d bytes\n", n)
		}()
	}

	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid=%d worker=%d gen=%d\n", os.Getpid(), id, gen)
		if n := served.Add(1); *crashAfter > 0 && n >= int64(*crashAfter) {
			w.(http.Flusher).Flush()
			os.Exit(3)
		}
	})
	mux.HandleFunc("/print", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.URL.Query().Get("text"))
		fmt.Fprintf(w, "pid=%d worker=%d gen=%d\n", os.Getpid(), id, gen)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("slow request started pid=%d\n", os.Getpid())
		// The slow request is the behaviour under test, not a wait.
		time.Sleep(2 * time.Second)
		fmt.Fprintf(w, "slow done pid=%d\n", os.Getpid())
	})
	mux.HandleFunc("/orphan", func(w http.ResponseWriter, r *http.Request) {
		// A grandchild of the master that outlives its parent: sh starts a
		// subshell blocked reading the fifo and exits, so the subshell is
		// orphaned to the nearest subreaper (the master, or PID 1).
		out, err := exec.Command("/bin/sh", "-c", `(read x < "$0") >/dev/null 2>&1 & echo $!`, r.URL.Query().Get("fifo")).Output()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "orphan=%s", out)
	})
	mux.HandleFunc("/fds", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "fds=%s\n", joinInts(startFDs))
		for _, fd := range startFDs {
			target, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			fmt.Fprintf(w, "fd%d=%s\n", fd, target)
		}
		fmt.Fprintf(w, "runtime.GOMAXPROCS=%d\n", runtime.GOMAXPROCS(0))
		for _, k := range []string{ipc.EnvIPCFD, "CLUSTERD_WORKERS", "GOMAXPROCS"} {
			v, ok := os.LookupEnv(k)
			if !ok {
				v = "(unset)"
			}
			fmt.Fprintf(w, "%s=%s\n", k, v)
		}
	})
	srv := &http.Server{Handler: mux}
	if *ignoreTerm {
		// A stuck worker: it never drains, only SIGKILL ends it.
		errs := make(chan error, len(lns))
		for _, ln := range lns {
			go func(ln net.Listener) { errs <- srv.Serve(ln) }(ln)
		}
		fmt.Fprintf(os.Stderr, "worker helper: %v\n", <-errs)
		return 1
	}
	if err := worker.ServeHTTP(context.Background(), srv, lns...); err != nil {
		fmt.Fprintf(os.Stderr, "worker helper: %v\n", err)
		return 1
	}
	return 0
}

// held keeps growMemory's allocations reachable.
var held [][]byte

// growMemory allocates mib MiB, touching every page, every step, for ever.
func growMemory(mib int, step time.Duration) {
	for {
		b := make([]byte, mib<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		held = append(held, b)
		if step > 0 {
			time.Sleep(step) // the pace of the growth under test
		}
	}
}

// sendWatchdog sends WATCHDOG=1 on NOTIFY_SOCKET once, or (keep) from a
// goroutine every quarter of WATCHDOG_USEC for ever.
func sendWatchdog(keep bool) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if addr == "" || err != nil || usec <= 0 {
		return fmt.Errorf("watchdog: NOTIFY_SOCKET=%q WATCHDOG_USEC=%q", addr, os.Getenv("WATCHDOG_USEC"))
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	if _, err := c.Write([]byte("WATCHDOG=1")); err != nil {
		c.Close()
		return fmt.Errorf("watchdog: %w", err)
	}
	if !keep {
		return c.Close()
	}
	go func() {
		t := time.NewTicker(time.Duration(usec) * time.Microsecond / 4)
		for range t.C {
			if _, err := c.Write([]byte("WATCHDOG=1")); err != nil {
				fmt.Fprintf(os.Stderr, "worker helper: watchdog: %v\n", err)
				return
			}
		}
	}()
	return nil
}

// serialHelper is a server that handles one connection at a time and
// takes -d (default 20ms) per request, like a single-threaded server: it
// accepts the next connection only when done with the last, so the load it
// cannot take waits in the kernel's accept queue, where the master sees it.
// Every answer is "pid=P ...", with Connection: close.
func serialHelper(args []string) int {
	fs := flag.NewFlagSet("serial", flag.ContinueOnError)
	d := fs.Duration("d", 20*time.Millisecond, "time per request")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	lns, err := worker.Listeners()
	if err != nil || len(lns) == 0 {
		fmt.Fprintf(os.Stderr, "serial helper: listeners: %v (%d)\n", err, len(lns))
		return 1
	}
	ln := lns[0]
	worker.DrainOnSignal(syscall.SIGTERM)
	if err := worker.Ready(); err != nil {
		fmt.Fprintf(os.Stderr, "serial helper: %v\n", err)
		return 1
	}
	go func() {
		<-worker.Drain()
		// Stop accepting: what waits in the shared queue goes to the others.
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0 // closed by the drain
		}
		serveOne(c, *d)
	}
}

// serveOne answers the one request of c after d.
func serveOne(c net.Conn, d time.Duration) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, req.Body)
	time.Sleep(d) // the request's cost, the behaviour under test
	body := fmt.Sprintf("pid=%d serial\n", os.Getpid())
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

// inRange reports whether n is within "FIRST-LAST".
func inRange(r string, n int) bool {
	first, last, ok := strings.Cut(r, "-")
	if !ok {
		return false
	}
	a, err1 := strconv.Atoi(first)
	b, err2 := strconv.Atoi(last)
	return err1 == nil && err2 == nil && n >= a && n <= b
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
