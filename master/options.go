package master

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
)

// Defaults applied by [New] to zero-valued [Options] fields.
const (
	DefaultMinUptime     = time.Second
	DefaultBackoffMin    = 100 * time.Millisecond
	DefaultBackoffMax    = 10 * time.Second
	DefaultMaxRestarts   = 10
	DefaultRestartWindow = time.Minute
	DefaultReadyTimeout  = 60 * time.Second
	DefaultKillTimeout   = 30 * time.Second
	DefaultReloadBatch   = 1
)

// Options configure a [Master]. The zero value of each field is documented;
// [New] applies defaults to its own copy and never writes to the caller's.
type Options struct {
	// Command is the argv of the worker command; required. New resolves
	// Command[0] with PATH (from Env if it sets PATH) or, when it holds a
	// slash, relative to Dir; a missing or non-executable file is an error.
	Command []string
	// Env holds KEY=VAL pairs added to the master's environment for workers.
	// The variables of the master-worker protocol are always set by the master.
	Env []string
	// Dir is the workers' working directory; "" means the master's.
	Dir string
	// Workers is the number of slots; 0 means runtime.NumCPU(), negative is an error.
	Workers int
	// Listen are the addresses the master binds before starting workers.
	// Empty is allowed (workers then open their own sockets).
	Listen []sockshare.Spec
	// Activated are sockets received by systemd socket activation; when
	// non-empty they are used instead of binding Listen (their names come
	// from f.Name()). The Master owns them once New succeeds: Run closes them
	// when it returns. They cannot be combined with BalanceReusePort.
	Activated []*os.File
	// Balance says how connections are spread; zero is BalanceShared.
	Balance Balance
	// ListenOptions are used for every bound address; ReusePort is forced on
	// with BalanceReusePort.
	ListenOptions sockshare.ListenOptions
	// Restart is the restart policy; zero is RestartAlways.
	Restart RestartPolicy
	// MinUptime: a worker that stayed up at least this long is restarted at
	// once and resets its slot's backoff. 0 means DefaultMinUptime.
	MinUptime time.Duration
	// BackoffMin and BackoffMax bound the exponential restart backoff (with
	// jitter) of a slot whose workers keep dying before MinUptime. 0 means
	// DefaultBackoffMin / DefaultBackoffMax.
	BackoffMin, BackoffMax time.Duration
	// MaxRestarts and RestartWindow are the restart intensity limit: more
	// than MaxRestarts restarts within RestartWindow stop all workers and make
	// Run return an error. 0 means DefaultMaxRestarts / DefaultRestartWindow;
	// a negative MaxRestarts disables the limit.
	MaxRestarts   int
	RestartWindow time.Duration
	// Ready is the readiness rule; zero is ReadyExec.
	Ready ReadyMode
	// ReadyTimeout is how long a starting worker may take to become ready
	// before it is killed (during a reload this aborts the reload). 0 means
	// DefaultReadyTimeout; negative waits forever.
	ReadyTimeout time.Duration
	// KillTimeout is how long a draining worker has between its stop signal
	// and SIGKILL to its process group. 0 means DefaultKillTimeout.
	KillTimeout time.Duration
	// ReloadBatch is how many slots a rolling reload replaces at a time.
	// 0 means DefaultReloadBatch.
	ReloadBatch int
	// StopSignal is sent to a worker's process group to drain it; 0 means SIGTERM.
	StopSignal syscall.Signal
	// User and Group (names or numeric ids) drop privileges for workers. An
	// empty Group with a User means the user's primary group and its
	// supplementary groups. New fails when they do not exist.
	User, Group string
	// Output says how worker stdout/stderr are handled; zero is OutputPrefix.
	Output OutputMode
	// Stdout and Stderr receive worker output; nil means os.Stdout / os.Stderr.
	Stdout, Stderr io.Writer
	// PIDFile, when set, is written (atomically) with the master's pid when
	// Run starts and removed when it returns.
	PIDFile string
	// Logger receives the master's log; nil means a null logger.
	Logger hclog.Logger
	// Signals delivers the signals the master acts on (HUP, TERM, INT, QUIT,
	// TTIN, TTOU). The master never calls signal.Notify for them itself: the
	// program wires real signals here, tests inject their own. nil: none.
	Signals <-chan os.Signal
	// ExecWorker is the argv prefix that re-executes into exec-worker mode
	// (see [ExecWorker]); the master appends "--" and the resolved Command.
	// nil means {os.Executable(), ExecWorkerArg}.
	ExecWorker []string
	// ReapOnlyWorkers, when true, makes the master wait for its own workers
	// by pid only: it does not become a child subreaper and never calls
	// wait4(-1). Use it when the master is embedded in a program that waits
	// for other children itself (and in tests that do). The zero value is
	// the production behaviour: the master is a child subreaper and reaps
	// every child, orphans included, as PID 1 must.
	ReapOnlyWorkers bool
	// Contain, when true, makes sure no process of the cluster outlives the
	// master, however the master ends: Run puts the workers into a cgroup
	// of their own where it can make one (cgroup v2, writable: root, or a
	// delegated subtree), and starts a guardian process (this program in
	// [GuardianArg] mode, which must then dispatch to [Guardian] first
	// thing in main; Run fails at start, saying so, when it does not) that
	// kills the cluster when the master is gone. The
	// zero value leaves the host's cgroups and processes alone: workers
	// die with the master by their parent-death signal, their children
	// only when the master stops them. cmd/clusterd sets it.
	Contain bool
}

// config is the validated copy of Options the master runs with.
type config struct {
	Options
	path       string              // resolved Command[0]
	guardian   string              // with Contain: the executable run in guardian mode
	credential *syscall.Credential // nil: keep the master's
}

// normalize validates opts and applies defaults to a copy.
func normalize(opts Options) (*config, error) {
	c := &config{Options: opts}
	c.Command = append([]string(nil), opts.Command...)
	c.Env = append([]string(nil), opts.Env...)
	c.Listen = append([]sockshare.Spec(nil), opts.Listen...)
	c.Activated = append([]*os.File(nil), opts.Activated...)
	c.ExecWorker = append([]string(nil), opts.ExecWorker...)

	if len(c.Command) == 0 || c.Command[0] == "" {
		return nil, errors.New("no worker command")
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("environment entry %q: want KEY=VALUE", kv)
		}
	}
	if c.Dir != "" {
		fi, err := os.Stat(c.Dir)
		if err != nil {
			return nil, fmt.Errorf("worker directory: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("worker directory %s: not a directory", c.Dir)
		}
	}
	path, err := resolveCommand(c.Command[0], c.Dir, c.Env)
	if err != nil {
		return nil, err
	}
	c.path = path

	switch {
	case c.Workers < 0:
		return nil, fmt.Errorf("workers %d: must not be negative", c.Workers)
	case c.Workers == 0:
		c.Workers = runtime.NumCPU()
	}
	if c.Balance != BalanceShared && c.Balance != BalanceReusePort {
		return nil, fmt.Errorf("unknown balance %v", c.Balance)
	}
	if c.Balance == BalanceReusePort && len(c.Activated) > 0 {
		return nil, errors.New("balance reuseport cannot be used with socket activation: activated sockets are shared")
	}
	for i, f := range c.Activated {
		if f == nil {
			return nil, fmt.Errorf("activated socket %d is nil", i)
		}
	}
	if c.Restart < RestartAlways || c.Restart > RestartNever {
		return nil, fmt.Errorf("unknown restart policy %v", c.Restart)
	}
	if c.Ready.Kind < ReadyExec || c.Ready.Kind > ReadyDelay {
		return nil, fmt.Errorf("unknown ready mode %v", c.Ready)
	}
	if c.Ready.Kind == ReadyDelay && c.Ready.Delay <= 0 {
		return nil, fmt.Errorf("ready mode %v: delay must be positive", c.Ready)
	}
	if c.Output != OutputPrefix && c.Output != OutputRaw {
		return nil, fmt.Errorf("unknown output mode %v", c.Output)
	}

	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"min uptime", &c.MinUptime, DefaultMinUptime},
		{"backoff min", &c.BackoffMin, DefaultBackoffMin},
		{"backoff max", &c.BackoffMax, DefaultBackoffMax},
		{"restart window", &c.RestartWindow, DefaultRestartWindow},
		{"kill timeout", &c.KillTimeout, DefaultKillTimeout},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return nil, fmt.Errorf("%s %v: must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.BackoffMax < c.BackoffMin {
		return nil, fmt.Errorf("backoff max %v is below backoff min %v", c.BackoffMax, c.BackoffMin)
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.Ready.Kind == ReadyDelay && c.ReadyTimeout > 0 && c.ReadyTimeout <= c.Ready.Delay {
		return nil, fmt.Errorf("ready timeout %v must be longer than ready delay %v", c.ReadyTimeout, c.Ready.Delay)
	}
	if c.MaxRestarts == 0 {
		c.MaxRestarts = DefaultMaxRestarts
	}
	switch {
	case c.ReloadBatch < 0:
		return nil, fmt.Errorf("reload batch %d: must not be negative", c.ReloadBatch)
	case c.ReloadBatch == 0:
		c.ReloadBatch = DefaultReloadBatch
	}
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	if c.StopSignal < 0 || c.StopSignal > 64 {
		return nil, fmt.Errorf("stop signal %d: not a signal", int(c.StopSignal))
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if len(c.ExecWorker) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable for exec-worker mode: %w", err)
		}
		c.ExecWorker = []string{exe, ExecWorkerArg}
	}
	if c.Contain {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable for guardian mode: %w", err)
		}
		c.guardian = exe
	}
	if c.PIDFile != "" {
		abs, err := filepath.Abs(c.PIDFile)
		if err != nil {
			return nil, fmt.Errorf("pid file %s: %w", c.PIDFile, err)
		}
		c.PIDFile = abs
	}
	cred, err := lookupCredential(c.User, c.Group)
	if err != nil {
		return nil, err
	}
	c.credential = cred
	return c, nil
}
