package master

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ExecWorkerArg is the first argument that puts a program linking master
// into exec-worker mode (see [ExecWorker]).
const ExecWorkerArg = "exec-worker"

// Master supervises a cluster of worker processes. Create it with [New] and
// run it once with [Master.Run].
type Master struct {
	cfg       *config
	log       hclog.Logger
	running   atomic.Bool
	listening chan struct{}
	ready     chan struct{}
	addrs     []net.Addr // written before listening is closed
}

// New validates opts and returns a Master that has not started anything
// yet. It resolves the worker command (a missing or non-executable command
// is an error), the user and group, and applies the documented defaults to
// its own copy of opts.
func New(opts Options) (*Master, error) {
	cfg, err := normalize(opts)
	if err != nil {
		return nil, err
	}
	return &Master{
		cfg:       cfg,
		log:       cfg.Logger.Named("master"),
		listening: make(chan struct{}),
		ready:     make(chan struct{}),
	}, nil
}

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
// next HUP). Cancelling ctx is a
// graceful stop.
//
// Run blocks until every worker has been reaped, every goroutine it started
// has returned and every fd it owns is closed (listeners and Activated
// sockets included). It returns nil after a requested stop, an
// [*IntensityError] when workers restarted too often, or the error that
// prevented the start. A Master runs once: a second call returns an error.
func (m *Master) Run(ctx context.Context) (err error) {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("master: Run called more than once")
	}
	cfg, log := m.cfg, m.log
	ls := newListeners(cfg, log)
	defer func() {
		if cerr := ls.closeAll(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if cfg.PIDFile != "" {
		if err := writePIDFile(cfg.PIDFile); err != nil {
			return err
		}
		defer removePIDFile(cfg.PIDFile, log)
	}
	if err := ls.bind(); err != nil {
		return err
	}
	m.addrs = ls.addrs
	close(m.listening)
	if len(m.addrs) == 0 {
		// A server that binds its own port then crash-loops on "address
		// already in use" in every worker but one: say why up front.
		log.Warn("no listen address: workers get no sockets from clusterd")
	}

	r, err := startReaper(cfg.ReapOnlyWorkers)
	if err != nil {
		return err
	}
	defer r.stop()
	events := make(chan workerEvent)
	done := make(chan struct{})
	closeDone := sync.OnceFunc(func() { close(done) })
	defer closeDone()
	var nd *notifyDir
	if cfg.speaksNotify() {
		if nd, err = newNotifyDir(cfg.credential); err != nil {
			return err
		}
		defer func() {
			if rerr := nd.remove(); rerr != nil {
				log.Warn("runtime directory not removed", "error", rerr)
			}
		}()
	}
	sd := newSDNotifier(os.Getenv("NOTIFY_SOCKET"), log.Named("notify"))
	defer sd.close()
	out, err := newOutputs()
	if err != nil {
		return err
	}
	defer out.wait(cfg.KillTimeout)
	st, err := newExecStarter(cfg, log, nd, out, r, events, done)
	if err != nil {
		return err
	}
	defer st.close()
	// Deferred last, so it runs first: the loop has ended, and goroutines
	// still sending it events must give up before they are waited for.
	defer closeDone()

	l := newLoop(cfg, log, loopDeps{
		starter:  st,
		sockets:  ls,
		exits:    r.exits,
		events:   events,
		sdNotify: sd.notify,
		ready:    func() { close(m.ready) },
		jitter:   rand.Float64,
		watchdog: watchdogInterval(os.LookupEnv, os.Getpid()),
	})
	return l.run(ctx)
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
