package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ExecWorkerArg is the first argument that puts a program linking master
// into exec-worker mode (see [ExecWorker]).
const ExecWorkerArg = "exec-worker"

// GuardianArg is the first argument that puts a program linking master
// into guardian mode (see [Guardian] and Options.Contain).
const GuardianArg = "guardian"

// ExecWorkerExitCode is the exit status of an exec-worker that could not
// exec the worker command, as a shell's for a command it cannot run.
const ExecWorkerExitCode = 127

// GuardianExitCode is the exit status of a guardian that could not kill or
// remove everything it was told about.
const GuardianExitCode = 1

// DispatchExecWorker handles the modes in which a master starts its own
// program (its own binary is the default Options.ExecWorker, and the
// guardian with Options.Contain):
//
//   - when os.Args[1] is [ExecWorkerArg], the process was forked by the
//     master to start a worker, and DispatchExecWorker runs [ExecWorker],
//     which replaces the process with the worker command; if that fails it
//     prints the error on one line to stderr and exits with
//     [ExecWorkerExitCode];
//   - when os.Args[1] is [GuardianArg], the process is the master's
//     guardian, and DispatchExecWorker runs [Guardian] and exits: with 0,
//     or, after printing its error on one line to stderr, with
//     [GuardianExitCode].
//
// Otherwise it returns at once and does nothing.
//
// Call it first thing in main (or TestMain), before anything opens a file
// or starts a goroutine that could:
//
//	func main() {
//		master.DispatchExecWorker()
//		...
//	}
func DispatchExecWorker() {
	if len(os.Args) < 2 {
		return
	}
	switch os.Args[1] {
	case ExecWorkerArg:
		err := ExecWorker(os.Args[2:])
		fmt.Fprintln(os.Stderr, "clusterd:", err)
		os.Exit(ExecWorkerExitCode)
	case UpgradeCheckArg:
		runUpgradeCheck()
	case GuardianArg:
		if err := Guardian(); err != nil {
			fmt.Fprintln(os.Stderr, "clusterd:", err)
			os.Exit(GuardianExitCode)
		}
		os.Exit(0)
	}
}

// Master supervises a cluster of worker processes. Create it with [New] and
// run it once with [Master.Run].
type Master struct {
	cfg       *config
	log       hclog.Logger
	running   atomic.Bool
	listening chan struct{}
	ready     chan struct{}
	addrs     []net.Addr // written before listening is closed

	cmds      chan command               // into the loop
	loopEnded chan struct{}              // closed when the loop has returned
	done      chan struct{}              // closed when Run has returned
	hub       *eventHub                  // events out of the loop
	routes    atomic.Pointer[routeTable] // slots' online workers, for Send
	logs      *logRing                   // with a control socket: the last lines of output
	ipc       ipcTotals                  // IPC counters, for IPCStats
	slots     slotTotals                 // per-slot counters, for SlotStats
	jobs      *dispatcher                // Dispatch
	// started is the master's first start, kept across in-place upgrades,
	// and upgrades how many it has been through (written before the loop
	// starts).
	started  time.Time
	upgrades int
}

// New validates opts and returns a Master that has not started anything
// yet. It resolves the worker command (a missing or non-executable command
// is an error), the user and group, and applies the documented defaults to
// its own copy of opts.
//
// Off Linux, New returns an error wrapping [errors.ErrUnsupported]: the
// package compiles everywhere, so a program that is both master and worker
// builds for any platform, but supervises only on Linux.
func New(opts Options) (*Master, error) {
	if err := supported(); err != nil {
		return nil, err
	}
	cfg, err := normalize(opts)
	if err != nil {
		return nil, err
	}
	var logs *logRing
	if cfg.ControlSocket != "" {
		logs = newLogRing(DefaultLogLines)
	}
	return &Master{
		logs:      logs,
		cfg:       cfg,
		log:       cfg.Logger.Named("master"),
		listening: make(chan struct{}),
		ready:     make(chan struct{}),
		cmds:      make(chan command),
		loopEnded: make(chan struct{}),
		done:      make(chan struct{}),
		hub:       newEventHub(),
		jobs:      newDispatcher(cfg),
	}, nil
}

// Subscribe returns a subscription to the master's events with room for
// buffer events (0 or less: [DefaultEventBuffer]). Subscribe before Run to
// see the first workers' events. The loop never waits for a subscriber:
// when the buffer is full an event is dropped and counted
// ([Subscription.Dropped]). The channel is closed after Run's last event.
// Safe for concurrent use, at any time.
func (m *Master) Subscribe(buffer int) *Subscription { return m.hub.subscribe(buffer) }

// Done returns a channel closed when Run has returned.
func (m *Master) Done() <-chan struct{} { return m.done }

// Listening returns a channel closed once Run has bound every listener;
// [Master.Addrs] is valid from then on. It is never closed when Run fails
// before that.
func (m *Master) Listening() <-chan struct{} { return m.listening }

// Ready returns a channel closed, once, when every initial worker is ready.
func (m *Master) Ready() <-chan struct{} { return m.ready }

// Addrs returns the bound address of each listener, in the order of
// Options.Listen (or Options.Activated). It returns nil before
// [Master.Listening] is closed. With BalanceReusePort it reports the
// sockets of slot 0 (all slots share the address).
func (m *Master) Addrs() []net.Addr {
	select {
	case <-m.listening:
		return append([]net.Addr(nil), m.addrs...)
	default:
		return nil
	}
}

// Run binds the listeners (errors name the address), starts the workers and
// supervises them: it restarts the ones that exit, and acts on the signals
// of Options.Signals (HUP rolling reload, TERM/INT graceful stop and a
// second one, 1s or more after the first, to stop at once, QUIT immediate
// stop, TTIN/TTOU one worker more or fewer, WINCH stop the workers until the
// next HUP, USR2 upgrade in place with Options.UpgradeArgs) and on the
// command methods ([Master.Reload], [Master.Scale],
// [Master.Stop], [Master.Signal], ...), which other goroutines may call
// while it runs. Cancelling ctx is a
// graceful stop.
//
// Run blocks until every worker has been reaped, every other process of
// the cluster it can find is gone (stopped, then killed at the stop's kill
// timeout; see the package doc), the guardian has exited (with
// Options.Contain), every goroutine it started has returned and every fd
// it owns is closed (listeners and Activated sockets included), with one
// exception: a Write to Options.Stdout or
// Options.Stderr that has made no progress for a second when Run ends is
// abandoned (its output counted as dropped), and its goroutine ends when
// that Write returns. It returns nil after a requested stop, an
// [*IntensityError] when workers restarted too often, or the error that
// prevented the start. A Master runs once: a second call returns an error.
func (m *Master) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("master: Run called more than once")
	}
	return m.run(ctx)
}

// writePIDFile writes the master's pid atomically (temporary file, rename).
func writePIDFile(path string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("pid file %s: %w", path, err)
	}
	_, werr := f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if werr == nil {
		werr = f.Chmod(0o644)
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(f.Name(), path)
	}
	if werr != nil {
		os.Remove(f.Name()) // the write error is the one to report
		return fmt.Errorf("pid file %s: %w", path, werr)
	}
	return nil
}

// removePIDFile removes the pid file if it still names this process.
func removePIDFile(path string, log hclog.Logger) {
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		return // replaced by someone else, or gone: not ours to remove
	}
	if err := os.Remove(path); err != nil {
		log.Warn("remove pid file", "path", path, "error", err)
	}
}

// watchdogInterval is how often the master tells its service manager it is
// alive: half of WATCHDOG_USEC, when that is set for this process (systemd's
// WatchdogSec=); 0 otherwise.
func watchdogInterval(lookup func(string) (string, bool), pid int) time.Duration {
	v, ok := lookup("WATCHDOG_USEC")
	if !ok {
		return 0
	}
	if p, ok := lookup("WATCHDOG_PID"); ok && p != strconv.Itoa(pid) {
		return 0
	}
	usec, err := strconv.ParseInt(v, 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
