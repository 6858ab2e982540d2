package master

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Real-process tests re-execute the test binary: as a master (a real master
// reaps with wait4(-1), so it must not share a process with tests that wait
// for their own children), as the exec-worker step, and as workers.
// Workers speak the ipc protocol directly: master and worker must not import
// each other, so these helpers do not link package worker.

const envHelper = "CLUSTERD_TEST_HELPER"

var (
	helpers     = map[string]func() int{}
	usedHelpers sync.Map
)

func registerHelper(name string, f func() int) {
	if _, dup := helpers[name]; dup {
		panic("duplicate helper " + name)
	}
	helpers[name] = f
}

func init() {
	registerHelper("master", helperMaster)
	registerHelper("worker", helperWorker)
}

func TestMain(m *testing.M) {
	// The exec-worker step comes first: nothing may open a file before it.
	DispatchExecWorker()
	if name := os.Getenv(envHelper); name != "" {
		f, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(f())
	}
	flag.Parse()
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && !testing.Short() {
		for name := range helpers {
			if _, ok := usedHelpers.Load(name); !ok {
				fmt.Fprintf(os.Stderr, "helper %q was never used\n", name)
				code = 1
			}
		}
	}
	if kids := children(); len(kids) > 0 {
		fmt.Fprintf(os.Stderr, "test binary left children behind: %v\n", kids)
		code = 1
	}
	os.Exit(code)
}

// children lists this process's children, zombies included.
func children() []string {
	var kids []string
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		if err == nil {
			kids = append(kids, strings.Fields(string(b))...)
		}
	}
	return kids
}

// masterConfig is what a test passes to the master helper (as JSON).
type masterConfig struct {
	Workers      int
	Listen       []string
	Balance      string
	Ready        string
	Restart      string
	MinUptime    time.Duration
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	MaxRestarts  int
	Window       time.Duration
	ReadyTimeout time.Duration
	KillTimeout  time.Duration
	ReloadBatch  int
	Output       string
	PIDFile      string
	User, Group  string
	ExecPath     string   // run the master from this copy of the test binary
	PID1         bool     // run the master as PID 1 of a new pid namespace
	Contain      bool     // Options.Contain
	MasterUID    int      // run the master helper itself as this uid and gid (0: as the test)
	Env          []string // added to the workers' environment
	WorkerMode   []string // behaviour of the worker helper
	Command      []string // instead of the worker helper
}

const envMasterConfig = "CLUSTERD_TEST_MASTER"

// helperMaster runs a real Master, logging JSON to stderr, with the process's
// signals wired to it as cmd/clusterd does.
func helperMaster() int {
	var c masterConfig
	if err := json.Unmarshal([]byte(os.Getenv(envMasterConfig)), &c); err != nil {
		fmt.Fprintln(os.Stderr, "master helper config:", err)
		return 2
	}
	os.Unsetenv(envMasterConfig)
	logger := hclog.New(&hclog.LoggerOptions{
		Name: "clusterd", Output: os.Stderr, JSONFormat: true, Level: hclog.Debug,
	})
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTTIN, syscall.SIGTTOU)
	opts := Options{
		Workers: c.Workers, MinUptime: c.MinUptime, BackoffMin: c.BackoffMin, BackoffMax: c.BackoffMax,
		MaxRestarts: c.MaxRestarts, RestartWindow: c.Window, ReadyTimeout: c.ReadyTimeout,
		KillTimeout: c.KillTimeout, ReloadBatch: c.ReloadBatch, PIDFile: c.PIDFile, User: c.User, Group: c.Group,
		Logger: logger, Signals: sigs, Subreaper: true, Contain: c.Contain,
	}
	var err error
	for _, l := range c.Listen {
		spec, perr := sockshare.ParseSpec(l)
		if perr != nil {
			fmt.Fprintln(os.Stderr, "master helper:", perr)
			return 2
		}
		opts.Listen = append(opts.Listen, spec)
	}
	if c.Balance != "" {
		if opts.Balance, err = ParseBalance(c.Balance); err != nil {
			fmt.Fprintln(os.Stderr, "master helper:", err)
			return 2
		}
	}
	if c.Ready != "" {
		if opts.Ready, err = ParseReadyMode(c.Ready); err != nil {
			fmt.Fprintln(os.Stderr, "master helper:", err)
			return 2
		}
	}
	if c.Restart != "" {
		if opts.Restart, err = ParseRestartPolicy(c.Restart); err != nil {
			fmt.Fprintln(os.Stderr, "master helper:", err)
			return 2
		}
	}
	if c.Output != "" {
		if opts.Output, err = ParseOutputMode(c.Output); err != nil {
			fmt.Fprintln(os.Stderr, "master helper:", err)
			return 2
		}
	}
	if len(c.Command) > 0 {
		opts.Command = c.Command
	} else {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, "master helper:", err)
			return 2
		}
		opts.Command = []string{exe}
		opts.Env = []string{envHelper + "=worker", envWorkerMode + "=" + strings.Join(c.WorkerMode, ",")}
	}
	opts.Env = append(opts.Env, c.Env...)
	m, err := New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "run error:", err)
		return 3
	}
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		printEvents(m, logger.Named("test"))
	}()
	err = m.Run(context.Background())
	<-printed
	if err != nil {
		fmt.Fprintln(os.Stderr, "run error:", err)
		return 3
	}
	return 0
}

// printEvents logs each of m's events as an "event" line (kind, and the
// log's keys: worker, pid, generation, exit_code, signal, reason, error),
// and "all-ready" once m.Ready is closed, for the tests to synchronise on.
// It returns when Run's events end.
func printEvents(m *Master, log hclog.Logger) {
	sub := m.Subscribe(1 << 16)
	logEvent := func(e Event) {
		kv := []any{"kind", e.Kind.String()}
		if e.Kind != EventReload {
			kv = append(kv, "worker", e.Slot, "pid", e.PID, "generation", e.Generation)
		}
		if e.Kind == EventExit {
			if e.Signal != 0 {
				kv = append(kv, "signal", signalName(e.Signal))
			} else {
				kv = append(kv, "exit_code", e.ExitCode)
			}
			kv = append(kv, "exited_after_disconnect", e.ExitedAfterDisconnect, "reason", e.Reason)
		}
		if e.Err != nil {
			kv = append(kv, "error", e.Err.Error())
		}
		log.Info("event", kv...)
	}
	ready := m.Ready()
	for {
		select {
		case e, ok := <-sub.C:
			if !ok {
				if n := sub.Dropped(); n > 0 {
					log.Error("events dropped", "count", n)
				}
				return
			}
			logEvent(e)
		case <-ready:
			ready = nil
			// The last worker's ready event was published before Ready
			// closed: print what is buffered first, to keep the order.
			for drained := false; !drained; {
				select {
				case e, ok := <-sub.C:
					if !ok {
						return
					}
					logEvent(e)
				default:
					drained = true
				}
			}
			log.Info("event", "kind", "all-ready")
		}
	}
}

const envWorkerMode = "CLUSTERD_TEST_WORKER_MODE"

// helperWorker behaves like a server under clusterd, as CLUSTERD_TEST_WORKER_MODE
// says (comma-separated):
//
//	fds          report the inherited fds first ("fds: 0 1 2 3 4")
//	crash        exit 1 at once
//	never-ready  serve but never say ready
//	ready-late   say ready after 200ms
//	reload-never-ready  never say ready from generation 2 on
//	notify       say ready with sd_notify instead of IPC, with a client
//	             that only understands a socket path (like Debian's
//	             sd_notify gem): an abstract "@" address is an error
//	notify-env   print "notify_socket: " and $NOTIFY_SOCKET quoted ("" when unset)
//	notify-forge worker 0 sends READY=1 on its own NOTIFY_SOCKET with the
//	             credentials of worker 1's pid (needs root), then READY=1
//	             as itself; worker 1 never says ready
//	notify-flood send 400 "X=1" datagrams before READY=1
//	listen-stamp print "listen_at: UNIXMICRO" just before it takes its listeners
//	accept       serve fd 3 with a blocking accept(2) on a dup of it (the
//	             listener is made blocking: one worker only)
//	ignore-term  ignore SIGTERM (only SIGKILL stops it)
//	hello        print "hello from worker N" on stdout and stderr
//	ids          print "ids: UID GID GROUPS"
//	orphan       start "sleep 0.5" in its own session (out of reach of the
//	             process-group kill), print "orphan: PID", and serve
//	escape       start "sleep 300" in its own session, holding the worker's
//	             stdout and stderr, and print "escaped: PID"
//	escape-stubborn  the same, ignoring SIGTERM
//	escape-bare  the same as escape, with an empty environment: no
//	             CLUSTERD_WORKER_ID or CLUSTERD_WORKER_GEN to be known by
func helperWorker() int {
	var mode []string
	if v := os.Getenv(envWorkerMode); v != "" {
		mode = strings.Split(v, ",")
	}
	has := func(m string) bool { return slices.Contains(mode, m) }
	if has("fds") {
		// Before anything else opens a file (the runtime's poller included),
		// probe descriptors without opening one.
		var fds []string
		for fd := range 256 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
				continue
			}
			// The Go runtime (1.25+) keeps the cgroup CPU limit files open
			// from before main: the worker's own, not inherited.
			buf := make([]byte, 256)
			n, _ := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), buf)
			if strings.HasPrefix(string(buf[:max(n, 0)]), "/sys/fs/cgroup/") {
				continue
			}
			fds = append(fds, strconv.Itoa(fd))
		}
		fmt.Printf("fds: %s\n", strings.Join(fds, " "))
	}
	if has("notify-env") {
		fmt.Printf("notify_socket: %q\n", os.Getenv("NOTIFY_SOCKET"))
	}
	if has("ids") {
		groups, _ := unix.Getgroups()
		fmt.Printf("ids: %d %d %v\n", os.Getuid(), os.Getgid(), groups)
	}
	if has("crash") {
		fmt.Fprintln(os.Stderr, "crashing on purpose")
		return 1
	}
	id := os.Getenv(ipc.EnvWorkerID)
	gen := os.Getenv(ipc.EnvWorkerGen)
	if has("hello") {
		fmt.Printf("hello from worker %s\n", id)
		fmt.Fprintf(os.Stderr, "hello on stderr from worker %s\n", id)
	}
	if has("orphan") {
		cmd := exec.Command("/bin/sleep", "0.5")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return 2
		}
		// Never waited for: it becomes the master's orphan.
		fmt.Printf("orphan: %d\n", cmd.Process.Pid)
	}
	for _, m := range []string{"escape", "escape-stubborn", "escape-bare"} {
		if !has(m) {
			continue
		}
		script := "exec sleep 300"
		if m == "escape-stubborn" {
			script = "trap '' TERM; exec sleep 300" // ignored signals stay ignored across exec
		}
		cmd := exec.Command("/bin/sh", "-c", script)
		if m == "escape-bare" {
			cmd = exec.Command("/bin/sleep", "300")
			cmd.Env = []string{}
		}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return 2
		}
		if m == "escape-stubborn" && !termIgnored(cmd.Process.Pid) {
			fmt.Fprintln(os.Stderr, "worker: escaped process never ignored SIGTERM")
			return 2
		}
		fmt.Printf("escaped: %d\n", cmd.Process.Pid) // never waited for: it outlives the worker
	}
	term := make(chan os.Signal, 1)
	if has("ignore-term") {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(term, syscall.SIGTERM)
	}

	n, _, err := sockshare.ParseListenEnv(os.LookupEnv, os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	if has("listen-stamp") {
		fmt.Printf("listen_at: %d\n", time.Now().UnixMicro())
	}
	if has("accept") {
		go acceptBlocking()
		n = 0 // fd 3 is served by acceptBlocking alone
	}
	var lns []net.Listener
	for i := range n {
		ln, err := net.FileListener(os.NewFile(uintptr(3+i), "listener"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return 2
		}
		lns = append(lns, ln)
	}
	var active sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %s %s\n", os.Getpid(), id, gen)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		// Headers first: a client that has them knows the request is in
		// this worker's hands, which tests synchronise on.
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		time.Sleep(d) // the request's own duration, part of the behaviour under test
		fmt.Fprintf(w, "%d %s %s slow\n", os.Getpid(), id, gen)
	})
	srv := &http.Server{Handler: mux, ConnState: func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			active.Add(1)
		case http.StateClosed, http.StateHijacked:
			active.Done()
		}
	}}
	srv.SetKeepAlivesEnabled(false)
	for _, ln := range lns {
		go srv.Serve(ln)
	}

	if has("reload-never-ready") && gen != "1" {
		mode = append(mode, "never-ready")
	}
	if has("notify-forge") {
		if id != "0" {
			mode = append(mode, "never-ready")
		} else if err := forgeNotify(); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return 2
		}
	}
	if has("notify-flood") {
		for range 400 {
			if err := sdNotify("X=1"); err != nil {
				fmt.Fprintln(os.Stderr, "worker:", err)
				return 2
			}
		}
	}
	if !has("never-ready") {
		if has("ready-late") {
			time.Sleep(200 * time.Millisecond) // a slow start-up is the behaviour under test
		}
		if err := sayReady(has("notify")); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			return 2
		}
	}
	<-term
	// Drain: stop accepting, answer every connection already accepted
	// (keep-alive is off, so each closes after its response), then leave.
	for _, ln := range lns {
		ln.Close()
	}
	active.Wait()
	return 0
}

var workerConn *ipc.Conn // kept open for the worker's life

// acceptBlocking answers every connection on fd 3 (through a dup of it)
// with a fixed HTTP response, from a thread blocked in accept(2).
func acceptBlocking() {
	fd, err := unix.Dup(3)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	for {
		c, _, err := unix.Accept(fd)
		if err != nil {
			continue
		}
		body := strconv.Itoa(os.Getpid()) + " accept\n"
		unix.Write(c, []byte("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body))
		unix.Close(c)
	}
}

// notifyPath returns $NOTIFY_SOCKET as a path-only sd_notify client sees it.
func notifyPath() (string, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if !strings.HasPrefix(addr, "/") {
		return "", fmt.Errorf("NOTIFY_SOCKET %q: this client handles only an absolute path", addr)
	}
	return addr, nil
}

// sdNotify sends one datagram to $NOTIFY_SOCKET, as a path-only client.
func sdNotify(state string) error {
	addr, err := notifyPath()
	if err != nil {
		return err
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// forgeNotify finds worker 1 (a sibling under the same master) and sends
// READY=1 on this worker's socket with worker 1's pid as SCM_CREDENTIALS,
// which only root may claim.
func forgeNotify() error {
	// Any address form: the forgery, not the client, is under test
	// (SockaddrUnix takes a leading "@" as the abstract namespace).
	addr := os.Getenv("NOTIFY_SOCKET")
	sibling := 0
	deadline := time.Now().Add(20 * time.Second)
	for sibling == 0 {
		if time.Now().After(deadline) {
			return errors.New("worker 1 not found")
		}
		for _, kid := range procChildren(os.Getppid()) {
			env, _ := os.ReadFile("/proc/" + strconv.Itoa(kid) + "/environ")
			if kid != os.Getpid() && slices.Contains(strings.Split(string(env), "\x00"), ipc.EnvWorkerID+"=1") {
				sibling = kid
			}
		}
		time.Sleep(5 * time.Millisecond) // polling /proc: no event announces a sibling
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	cred := unix.UnixCredentials(&unix.Ucred{Pid: int32(sibling), Uid: 0, Gid: 0})
	if err := unix.Sendmsg(fd, []byte("READY=1"), cred, &unix.SockaddrUnix{Name: addr}, 0); err != nil {
		return fmt.Errorf("forged sd_notify: %w", err)
	}
	fmt.Printf("forged: %d\n", sibling)
	return nil
}

func sayReady(notify bool) error {
	if notify {
		return sdNotify("STATUS=up\nREADY=1")
	}
	fd, err := strconv.Atoi(os.Getenv(ipc.EnvIPCFD))
	if err != nil {
		return errors.New("no ipc fd")
	}
	unix.CloseOnExec(fd)
	conn, err := ipc.NewConn(os.NewFile(uintptr(fd), "ipc"), ipc.Options{})
	if err != nil {
		return err
	}
	id, _ := strconv.Atoi(os.Getenv(ipc.EnvWorkerID))
	gen, _ := strconv.Atoi(os.Getenv(ipc.EnvWorkerGen))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Handshake(ctx, ipc.Hello{PID: os.Getpid(), WorkerID: id, Generation: gen}); err != nil {
		return err
	}
	workerConn = conn
	return conn.Send(&ipc.Message{Kind: ipc.KindReady})
}

// termIgnored waits (10 s at most) until process pid ignores SIGTERM, as
// /proc/PID/status's SigIgn mask shows: a stop signal sent before its shell
// ran the trap would end it, and the test would count one stubborn process
// too few.
func termIgnored(pid int) bool {
	for range 10000 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return false
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
				mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if err == nil && mask&(1<<(uint(syscall.SIGTERM)-1)) != 0 {
					return true
				}
			}
		}
		time.Sleep(time.Millisecond) // polling /proc: the helper has no other event to wait on
	}
	return false
}
