package master

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// execStarter starts real worker processes: the master's own binary in
// exec-worker mode, which execs the command under the same pid.
//
// Fds are handed over by number with syscall.ForkExec. Never through
// os.File.Fd() (or exec.Cmd.ExtraFiles, which calls it): Fd() switches the
// open file description to blocking mode, and that description is shared
// by the master and every worker holding the socket.
type execStarter struct {
	cfg        *config
	log        hclog.Logger
	argv       []string // ExecWorker prefix, "--", resolved command, its args
	env        []string // base environment of every worker
	devNull    int      // stdin of workers; owned, closed by close
	stdout     int      // raw fds for OutputRaw, or -1 to use pipes
	stderr     int
	out        *outputs
	reaper     *reaper
	contain    *containment
	events     chan<- workerEvent
	cmds       chan<- command  // the loop's commands (listen requests)
	done       <-chan struct{} // closed when the loop has ended
	notify     *notifyDir      // nil: workers get no NOTIFY_SOCKET
	balance    *balancer       // balanced modes; nil otherwise
	announced  []ipc.Listener  // balanced modes: the listeners each hello names
	dispatcher *dispatcher
	dispatch   func(ctx context.Context, job any, skip *jobTarget) (JobResult, error) // a worker's Submit
	logs       *logRing                                                               // the last lines of output, for the control socket; nil: none
	ipc        *ipcTotals                                                             // IPC counters; nil: none
	slots      *slotTotals                                                            // per-slot counters

	boot    int64 // this image's start, the Boot of its hellos
	jobs    chan spawnJob
	spawnWG sync.WaitGroup
	ipcWG   sync.WaitGroup
}

var _ starter = (*execStarter)(nil)

type spawnJob struct {
	argv  []string
	attr  *syscall.ProcAttr
	exec  func() error // not nil: run this (the upgrade's execve) instead of a fork
	reply chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

// protocolEnv are variables the master sets for every worker; inherited
// values of them are dropped first.
var protocolEnv = []string{
	"LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=", "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=",
	"EINHORN_FD_", "EINHORN_SOCK_", envExecFD + "=", envNoPdeath + "=", ipc.EnvIPCFD + "=", ipc.EnvWorkerID + "=", ipc.EnvWorkerGen + "=",
}

func newExecStarter(cfg *config, log hclog.Logger, notify *notifyDir, out *outputs, r *reaper,
	cont *containment, events chan<- workerEvent, cmds chan<- command, done <-chan struct{}) (*execStarter, error) {
	st := &execStarter{
		cfg: cfg, log: log, out: out, reaper: r, contain: cont, events: events, cmds: cmds, done: done, notify: notify,
		stdout: -1, stderr: -1, devNull: -1,
		jobs: make(chan spawnJob),
		boot: time.Now().UnixNano(),
	}
	st.argv = append(append(append([]string(nil), cfg.ExecWorker...), "--", cfg.path), cfg.Command[1:]...)
	// Options.Env overrides inherited variables: with duplicate keys most
	// programs (Go's os.Getenv among them) would see the first one.
	override := make(map[string]bool)
	for _, kv := range cfg.Env {
		k, _, _ := strings.Cut(kv, "=")
		override[k] = true
	}
	gomaxprocs := cfg.gomaxprocsEnv()
	if gomaxprocs != "" {
		override[envGOMAXPROCS] = true
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !isProtocolEnv(kv) && !override[k] {
			st.env = append(st.env, kv)
		}
	}
	for _, kv := range cfg.Env {
		if !isProtocolEnv(kv) {
			st.env = append(st.env, kv)
		}
	}
	if gomaxprocs != "" {
		st.env = append(st.env, gomaxprocs)
	}
	fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s for worker stdin: %w", os.DevNull, err)
	}
	st.devNull = fd
	if cfg.Output == OutputRaw {
		if f, ok := cfg.Stdout.(*os.File); ok {
			if st.stdout, err = rawFD(f); err != nil {
				st.close()
				return nil, fmt.Errorf("worker stdout: %w", err)
			}
		}
		if f, ok := cfg.Stderr.(*os.File); ok {
			if st.stderr, err = rawFD(f); err != nil {
				st.close()
				return nil, fmt.Errorf("worker stderr: %w", err)
			}
		}
	}
	st.spawnWG.Add(1)
	go st.spawner()
	return st, nil
}

func isProtocolEnv(kv string) bool {
	for _, p := range protocolEnv {
		if strings.HasPrefix(kv, p) {
			return true
		}
	}
	return false
}

// spawner forks every worker from one goroutine locked to its OS thread for
// the master's life: the kernel sends a child's Pdeathsig when the thread
// that forked it exits, not the process, and Go may retire an unlocked
// goroutine's thread at any time.
func (st *execStarter) spawner() {
	defer st.spawnWG.Done()
	runtime.LockOSThread()
	// Never unlocked: when Run ends (every worker reaped) the goroutine
	// returns and the runtime ends its thread with it.
	for job := range st.jobs {
		if job.exec != nil {
			job.reply <- spawnResult{err: job.exec()}
			continue
		}
		pid, err := syscall.ForkExec(job.argv[0], job.argv, job.attr)
		job.reply <- spawnResult{pid: pid, err: err}
	}
}

// rawFD returns the descriptor number of c (a file, a socket, a listener)
// without changing its mode (unlike os.File.Fd, which makes it blocking).
// The number stays valid while c is open.
func rawFD(c syscall.Conn) (int, error) {
	fd := -1
	rc, err := c.SyscallConn()
	if err == nil {
		err = rc.Control(func(u uintptr) { fd = int(u) })
	}
	if err != nil {
		if f, ok := c.(interface{ Name() string }); ok {
			err = fmt.Errorf("%s: %w", f.Name(), err)
		}
		return -1, err
	}
	return fd, nil
}

// pipe makes a pipe for a worker's output. Both ends are close-on-exec;
// the write end stays blocking (a worker's stdout must not be
// non-blocking, which os.Pipe would make it), the relay makes its read end
// non-blocking.
func pipe() (r, w int, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return -1, -1, os.NewSyscallError("pipe2", err)
	}
	return p[0], p[1], nil
}

func (st *execStarter) start(req spawnRequest) (int, process, error) {
	parent, child, err := ipc.Pair()
	if err != nil {
		return 0, nil, fmt.Errorf("ipc socketpair: %w", err)
	}
	var cleanup []func()
	fail := func(err error) (int, process, error) {
		for _, f := range cleanup {
			f()
		}
		return 0, nil, err
	}
	cleanup = append(cleanup, func() { parent.Close(); child.Close() })

	outFD, errFD := st.stdout, st.stderr
	outR, errR := -1, -1
	if outFD < 0 {
		r, w, err := pipe()
		if err != nil {
			return fail(fmt.Errorf("stdout pipe: %w", err))
		}
		outR, outFD = r, w
		cleanup = append(cleanup, func() { unix.Close(r); unix.Close(w) })
	}
	if errFD < 0 {
		r, w, err := pipe()
		if err != nil {
			return fail(fmt.Errorf("stderr pipe: %w", err))
		}
		errR, errFD = r, w
		cleanup = append(cleanup, func() { unix.Close(r); unix.Close(w) })
	}

	files := []uintptr{uintptr(st.devNull), uintptr(outFD), uintptr(errFD)}
	listenFDs := make([]int, 0, len(req.files))
	for _, f := range req.files {
		fd, err := rawFD(f)
		if err != nil {
			return fail(fmt.Errorf("listener: %w", err))
		}
		files = append(files, uintptr(fd))
		listenFDs = append(listenFDs, fd)
	}
	var inodes []uint64
	if st.cfg.Ready.Kind == ReadyListening {
		inodes = listenerInodes(listenFDs)
	}
	ipcFD, err := rawFD(child)
	if err != nil {
		return fail(fmt.Errorf("ipc: %w", err))
	}
	files = append(files, uintptr(ipcFD))
	// The exec-outcome pipe: the exec-worker step gets the write end, which
	// its execve closes (end-of-file: the command runs) or to which it
	// writes the errno of a failed exec.
	execR, execW, err := pipe()
	if err != nil {
		return fail(fmt.Errorf("exec outcome pipe: %w", err))
	}
	cleanup = append(cleanup, func() { unix.Close(execR); unix.Close(execW) })
	execFD := len(files)
	files = append(files, uintptr(execW))

	n := len(req.files)
	env := append([]string(nil), st.env...)
	env = append(env, sockshare.ListenEnv(req.names)...)
	env = append(env, "EINHORN_FD_COUNT="+strconv.Itoa(n))
	for i := range n {
		env = append(env, "EINHORN_FD_"+strconv.Itoa(i)+"="+strconv.Itoa(3+i))
	}
	env = append(env, ipc.Env{IPCFD: 3 + n, WorkerID: req.slot, Generation: req.gen}.Environ()...)
	env = append(env, envExecFD+"="+strconv.Itoa(execFD))
	if len(st.cfg.UpgradeArgs) > 0 {
		env = append(env, envNoPdeath+"=1")
	}
	var ns *notifySocket
	if st.notify != nil {
		if ns, err = st.notify.listen(req.slot, req.gen); err != nil {
			return fail(err)
		}
		cleanup = append(cleanup, ns.close)
		env = append(env, "NOTIFY_SOCKET="+ns.path)
		if st.cfg.Watchdog > 0 {
			// As systemd does for WatchdogSec=; WATCHDOG_PID is left unset
			// (sd_watchdog_enabled then accepts any pid): the worker's pid
			// is not known before the fork.
			env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(st.cfg.Watchdog.Microseconds(), 10))
		}
	}

	attr := &syscall.ProcAttr{
		Dir:   st.cfg.Dir,
		Env:   env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Setpgid:    true,
			Pdeathsig:  syscall.SIGKILL,
			Credential: st.cfg.credential,
		},
	}
	if len(st.cfg.UpgradeArgs) > 0 {
		// See doc.go: the guardian, not the parent-death signal, ends
		// the workers of a master that dies.
		attr.Sys.Pdeathsig = 0
	}
	reply := make(chan spawnResult, 1)
	st.contain.forkAttr(attr.Sys)
	st.jobs <- spawnJob{argv: st.argv, attr: attr, reply: reply}
	res := <-reply
	if res.err != nil && st.contain.forkFailed(res.err) {
		st.contain.forkAttr(attr.Sys)
		st.jobs <- spawnJob{argv: st.argv, attr: attr, reply: reply}
		res = <-reply
	}
	// The fds were used by number: keep their files alive until the fork.
	runtime.KeepAlive(req.files)
	runtime.KeepAlive(child)
	if res.err != nil {
		return fail(fmt.Errorf("fork/exec %s: %w", st.argv[0], res.err))
	}
	pid := res.pid
	st.reaper.watch(pid)
	st.contain.started(pid)

	// The child holds its copies; the master keeps only its own ends.
	child.Close()
	unix.Close(execW)
	p := st.newProcess(pid)
	p.notify = ns
	if outR >= 0 {
		unix.Close(outFD)
	}
	if errR >= 0 {
		unix.Close(errFD)
	}
	st.relayOutput(p, req.slot, outR, errR)
	wlog := st.log.With("worker", req.slot, "pid", pid, "generation", req.gen)
	st.serveNotify(p, wlog)
	st.ipcWG.Add(1)
	go st.awaitExec(p, execR)
	if st.cfg.Ready.Kind == ReadyListening {
		st.ipcWG.Add(1)
		go st.probeListening(p, inodes, wlog)
	}
	st.openIPC(p, parent, req)
	return pid, p, nil
}

// newProcess returns the execProcess of worker pid (a new one, or one taken
// over from a previous image).
func (st *execStarter) newProcess(pid int) *execProcess {
	return &execProcess{pid: pid, done: make(chan struct{}), out: st.out, outR: -1, errR: -1, pausedAck: make(chan struct{}, 1)}
}

// relayOutput relays the read ends of a worker's stdout and stderr pipes
// (-1: not relayed), owned from here, and records them in p.
func (st *execStarter) relayOutput(p *execProcess, slot, outR, errR int) {
	prefix := st.relayPrefix(fmt.Sprintf("[w%d pid %d] ", slot, p.pid))
	var t *tail
	if outR >= 0 || errR >= 0 {
		t = st.out.newTail(p.pid)
	}
	for _, r := range []struct {
		fd   int
		to   *sink
		name string
		keep *int
	}{{outR, st.out.stdout, "stdout", &p.outR}, {errR, st.out.stderr, "stderr", &p.errR}} {
		if r.fd < 0 {
			continue
		}
		s, err := st.out.relay(r.fd, r.to, prefix, t, st.tee(slot, p.pid, r.name))
		if err != nil {
			st.log.Warn("worker "+r.name+" not relayed", "worker", slot, "pid", p.pid, "error", err)
		} else {
			*r.keep = r.fd // the relay closed it otherwise
		}
		p.streams = append(p.streams, s)
	}
}

// serveNotify reads p's notify socket, if it has one, until p is released.
func (st *execStarter) serveNotify(p *execProcess, wlog hclog.Logger) {
	if p.notify == nil {
		return
	}
	st.ipcWG.Add(1)
	go func() {
		defer st.ipcWG.Done()
		p.notify.read(p.pid, st.post, p.done, wlog)
	}()
}

// openIPC makes p's IPC connection on f, the master's end of it, and
// starts its session. On failure the worker runs without IPC: it is said
// in the log.
func (st *execStarter) openIPC(p *execProcess, f *os.File, req spawnRequest) {
	conn, err := ipc.NewConn(f, ipc.Options{})
	if err != nil {
		st.log.Warn("ipc connection", "worker", req.slot, "pid", p.pid, "error", err)
		f.Close()
		return
	}
	p.conn = conn
	if st.ipc != nil {
		st.ipc.add(conn)
	}
	st.ipcWG.Add(1)
	go st.serveIPC(p, req)
}

// tee returns the log ring's recorder of a worker pipe, nil without a
// ring.
func (st *execStarter) tee(slot, pid int, stream string) *logTee {
	if st.logs == nil {
		return nil
	}
	return &logTee{ring: st.logs, slot: slot, pid: pid, stream: stream}
}

func (st *execStarter) relayPrefix(prefix string) string {
	if st.cfg.Output == OutputRaw {
		return ""
	}
	return prefix
}

// close stops the spawner and waits for every IPC goroutine; called after
// the loop ended (every worker reaped and released).
func (st *execStarter) close() {
	close(st.jobs)
	st.spawnWG.Wait()
	st.ipcWG.Wait()
	if st.devNull >= 0 {
		unix.Close(st.devNull)
		st.devNull = -1
	}
}

// awaitExec reads the exec-outcome pipe of a worker and posts what it says:
// end-of-file once the command was executed, or the errno of a failed
// execve. It owns and closes r.
func (st *execStarter) awaitExec(p *execProcess, r int) {
	defer st.ipcWG.Done()
	defer unix.Close(r)
	var b [4]byte
	n := 0
	for n < len(b) {
		m, err := unix.Read(r, b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || m == 0 {
			break
		}
		n += m
	}
	var err error
	switch n {
	case 0:
		// End-of-file: the execve succeeded (or the step died before it
		// could say otherwise, which its exit status reports).
	case len(b):
		err = fmt.Errorf("exec %s: %w", st.cfg.path, syscall.Errno(binary.NativeEndian.Uint32(b[:])))
	default:
		err = fmt.Errorf("exec %s: exec-worker step sent %d bytes of its outcome", st.cfg.path, n)
	}
	st.post(workerEvent{pid: p.pid, kind: evExec, err: err})
}
