package master

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The guardian: a small process, the master's own binary in guardian mode,
// that outlives the master by the time it takes to kill what the master
// leaves behind. The parent-death signal of the workers reaches only them,
// not their children; the guardian covers the rest.
//
// Its stdin is the read end of a pipe whose only write end the master
// holds (close-on-exec, so no worker inherits it). However the master ends
// (return from Run, a crash, SIGKILL, the OOM killer), the kernel closes
// that end, the guardian reads EOF, and it then SIGKILLs: the cluster's
// cgroup, every worker's process group, and every process the master told
// it about (orphans reparented to the master, which is a child subreaper),
// checked by start time against pid reuse. The master tells it over the
// pipe, one line per fact:
//
//	cgroup DIR          the cluster's cgroup
//	group PGID          a worker's process group
//	ungroup PGID        that group is empty (its id may be reused)
//	proc PID START      an orphan of the master, with its start time
//	unproc PID          that orphan was reaped
//	done                the master ended the cluster itself: nothing to kill
//
// After "done" (sent once Run has seen every process of the cluster gone)
// the guardian only empties and removes the cgroup if it is still there
// (whatever is in it is the cluster's): the process groups and pids it knew
// are free by then, and their numbers may be reused by processes that are
// none of its business.
//
// The guardian runs in a process group of its own and ignores the
// terminal's and a service manager's stop signals: a Ctrl-C meant for the
// master's group, or systemd's SIGTERM to every process of the unit, must
// not remove it before the master is gone. It lives exactly as long as the
// master plus its kill pass.

// guardianGrace bounds how long the master waits for the guardian to exit
// once it said "done", and for its own cgroup to empty at the end of Run.
const guardianGrace = 5 * time.Second

// guardianRemoveGrace bounds how long the guardian waits for the cgroup it
// killed to empty before it gives up removing the directory. Nothing waits
// for the guardian then (the master is gone), and on a machine under heavy
// load the killed processes may take a while to be torn down.
const guardianRemoveGrace = 30 * time.Second

// guardian is the master's side: the pipe's write end and the process.
type guardian struct {
	pid    int
	log    hclog.Logger
	exited chan struct{} // closed when the guardian was reaped
	wg     sync.WaitGroup

	mu      sync.Mutex
	w       int // write end, non-blocking; -1 once closed
	closing bool
	failed  bool           // a write failed: said once
	procs   map[int]uint64 // orphans told about: pid -> start time
}

// startGuardian starts exe in guardian mode, with the reaper delivering its
// exit. cg, when not nil, is the cluster's cgroup, told first.
func startGuardian(exe string, cg *cgroup, r *reaper, log hclog.Logger) (*guardian, error) {
	pr, pw, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("start guardian: %w", err)
	}
	defer unix.Close(pr)
	if err := unix.SetNonblock(pw, true); err != nil {
		unix.Close(pw)
		return nil, fmt.Errorf("start guardian: %w", os.NewSyscallError("fcntl", err))
	}
	// Its stdout says hello once Guardian runs: a program that does not
	// dispatch GuardianArg is found here, not when the master dies.
	hr, hw, err := pipe()
	if err != nil {
		unix.Close(pw)
		return nil, fmt.Errorf("start guardian: %w", err)
	}
	defer unix.Close(hr)
	// The guardian reports a failure of its kill pass on the master's
	// stderr (which may be gone by then: that costs only the message).
	errFD := uintptr(2)
	if _, err := unix.FcntlInt(errFD, unix.F_GETFD, 0); err != nil {
		errFD = uintptr(hw)
	}
	attr := &syscall.ProcAttr{
		Env:   os.Environ(), // the runtime's settings (GODEBUG, GORACE) apply to it too
		Files: []uintptr{uintptr(pr), uintptr(hw), errFD},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	argv := []string{exe, GuardianArg}
	pid, exit, err := r.startOwned(func() (int, error) { return syscall.ForkExec(exe, argv, attr) })
	unix.Close(hw)
	if err != nil {
		unix.Close(pw)
		return nil, fmt.Errorf("start guardian: fork/exec %s: %w", exe, err)
	}
	if err := awaitHello(hr, guardianStartTimeout); err != nil {
		unix.Close(pw)
		_ = unix.Kill(pid, unix.SIGKILL)
		<-exit
		return nil, fmt.Errorf("start guardian %s %s: %w (does the program call master.DispatchExecWorker, or master.Guardian when os.Args[1] is %q, first thing in main?)",
			exe, GuardianArg, err, GuardianArg)
	}
	g := &guardian{pid: pid, log: log, exited: make(chan struct{}), w: pw, procs: make(map[int]uint64)}
	g.wg.Add(1)
	go g.watch(exit)
	if cg != nil {
		g.tell("cgroup " + cg.dir)
	}
	return g, nil
}

// guardianHello is the guardian's first line on its stdout.
const guardianHello = "clusterd guardian\n"

// guardianStartTimeout bounds the wait for the guardian's hello.
const guardianStartTimeout = 10 * time.Second

// awaitHello reads the guardian's hello from fd, at most for timeout.
func awaitHello(fd int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var got []byte
	buf := make([]byte, len(guardianHello))
	for len(got) < len(guardianHello) {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no hello within %v", timeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return os.NewSyscallError("poll", err)
		}
		if pfd[0].Revents == 0 {
			continue
		}
		n, err := unix.Read(fd, buf[:len(guardianHello)-len(got)])
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return os.NewSyscallError("read", err)
		}
		if n == 0 {
			if len(got) == 0 {
				return errors.New("it closed its stdout before saying hello")
			}
			return fmt.Errorf("it closed its stdout before saying hello (it wrote %q)", got)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != guardianHello {
		return fmt.Errorf("it said %q, not hello", got)
	}
	return nil
}

// watch waits for the guardian's exit; one before close means processes
// may outlive a killed master from now on, which an operator must know.
func (g *guardian) watch(exit <-chan exitStatus) {
	defer g.wg.Done()
	st := <-exit
	g.mu.Lock()
	closing := g.closing
	g.mu.Unlock()
	if !closing {
		g.log.Error("guardian exited: processes of the cluster may outlive a killed master",
			"pid", g.pid, "status", st.String())
	}
	close(g.exited)
}

// tell writes one line to the guardian. The pipe holds 64 KiB and the
// guardian reads at once, so a full pipe means it is stuck or gone: the
// fact is dropped and said once.
func (g *guardian) tell(line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.w < 0 {
		return
	}
	b := []byte(line + "\n")
	for len(b) > 0 {
		n, err := unix.Write(g.w, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			if !g.failed {
				g.failed = true
				g.log.Error("guardian unreachable: processes of the cluster may outlive a killed master",
					"pid", g.pid, "error", os.NewSyscallError("write", err))
			}
			return
		}
		b = b[n:]
	}
}

func (g *guardian) group(pgid int)   { g.tell("group " + strconv.Itoa(pgid)) }
func (g *guardian) ungroup(pgid int) { g.tell("ungroup " + strconv.Itoa(pgid)) }

// reaped is the reaper's hook where no cgroup holds the cluster: it retracts
// reaped orphans and reports the master's children it has not reported
// yet (orphans reparented to it as a child subreaper; workers too, which
// does no harm).
func (g *guardian) reaped(pids []int) {
	for _, pid := range pids {
		g.mu.Lock()
		_, told := g.procs[pid]
		delete(g.procs, pid)
		g.mu.Unlock()
		if told {
			g.tell("unproc " + strconv.Itoa(pid))
		}
	}
	for _, pid := range ownChildren() {
		if pid == g.pid {
			continue
		}
		g.mu.Lock()
		_, told := g.procs[pid]
		g.mu.Unlock()
		if told {
			continue
		}
		st, ok := readProcStat(pid)
		if !ok || st.state == 'Z' {
			continue
		}
		g.mu.Lock()
		g.procs[pid] = st.start
		g.mu.Unlock()
		g.tell("proc " + strconv.Itoa(pid) + " " + strconv.FormatUint(st.start, 10))
		g.log.Debug("guardian told of orphan", "pid", pid)
	}
}

// close ends the guardian, once the cluster is empty: it says "done" and
// closes the pipe, and the guardian exits. It waits for the exit, at
// most guardianGrace, then kills it.
func (g *guardian) close() {
	g.tell("done")
	g.mu.Lock()
	g.closing = true
	if g.w >= 0 {
		unix.Close(g.w)
		g.w = -1
	}
	g.mu.Unlock()
	select {
	case <-g.exited:
	case <-time.After(guardianGrace + time.Second):
		g.log.Warn("guardian did not exit; killing it", "pid", g.pid)
		_ = unix.Kill(g.pid, unix.SIGKILL)
	}
	g.wg.Wait()
}

// Guardian is the guardian mode of a program that links master and sets
// Options.Contain: the master starts its own binary as
// `PROGRAM guardian` (see [GuardianArg]), and [DispatchExecWorker], called
// first thing in main, runs Guardian and exits with its outcome.
//
// It says hello on stdout (the master waits for it), then reads what the
// master tells it on stdin until EOF, which comes when
// the master is gone, however it ended; it then kills every process of the
// cluster it knows of (the cluster's cgroup, the workers' process groups,
// the master's orphans) and removes the cgroup. It returns nil once done,
// or an error naming what it could not kill.
func Guardian() error {
	// Stop signals are for the master; this process ends with it.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGPIPE,
		syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	// The master waits for this line: it proves the program dispatched
	// guardian mode. Nothing else is written to stdout.
	_, _ = os.Stdout.WriteString(guardianHello) // a master that is gone reads nothing: no matter
	_ = os.Stdout.Close()
	var (
		cg     *cgroup
		groups = make(map[int]bool)
		procs  = make(map[int]uint64)
		done   bool
	)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		verb, args, _ := strings.Cut(sc.Text(), " ")
		switch verb {
		case "cgroup":
			cg = &cgroup{dir: args, fd: -1}
		case "group", "ungroup":
			if pgid, err := strconv.Atoi(args); err == nil && pgid > 1 {
				groups[pgid] = verb == "group"
			}
		case "proc":
			p, s, _ := strings.Cut(args, " ")
			pid, perr := strconv.Atoi(p)
			start, serr := strconv.ParseUint(s, 10, 64)
			if perr == nil && serr == nil && pid > 1 {
				procs[pid] = start
			}
		case "unproc":
			if pid, err := strconv.Atoi(args); err == nil {
				delete(procs, pid)
			}
		case "done":
			done = true
		}
	}
	if done {
		groups, procs = nil, nil
	}
	// EOF, or a read error: either way the master can tell nothing more.
	var errs []error
	// Twice: a process forking while the first pass runs may have put a
	// child where the first pass already looked.
	for range 2 {
		if cg != nil {
			if err := cg.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		for pgid, live := range groups {
			if live {
				_ = unix.Kill(-pgid, unix.SIGKILL) // ESRCH: the group is empty
			}
		}
		for pid, start := range procs {
			if st, ok := readProcStat(pid); ok && st.start == start {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	if cg != nil {
		if err := cg.remove(guardianRemoveGrace); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("guardian: %w", err)
	}
	return nil
}
