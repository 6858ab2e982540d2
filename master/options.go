package master

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
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
	// DefaultHeartbeatInterval is how often library workers heartbeat (and
	// report their stats) when Options.HeartbeatInterval is 0.
	DefaultHeartbeatInterval = time.Second
	// DefaultMaxListeners is the number of run-time listeners workers may
	// ask for when Options.MaxListeners is 0.
	DefaultMaxListeners = 64
	// DefaultMaxRequests is how many requests of one worker the master
	// handles at a time when Options.MaxRequests is 0.
	DefaultMaxRequests = 64
	// DefaultHeartbeatTimeouts is how many heartbeat intervals a library
	// worker may stay silent before it counts as hung, when
	// Options.HeartbeatTimeout is 0.
	DefaultHeartbeatTimeouts = 10
	// DefaultSampleInterval is how often worker memory is sampled when
	// Options.MaxMemory is set and Options.SampleInterval is 0.
	DefaultSampleInterval = 5 * time.Second
	// DefaultDumpWait is how long a worker sent Options.DumpSignal has to
	// write its dump before the SIGKILL, when Options.DumpWait is 0.
	DefaultDumpWait = time.Second
	// Autoscaling defaults, for zero Options.ScaleInterval, ScaleUpAfter,
	// ScaleDownAfter and ScaleCooldown.
	DefaultScaleInterval  = time.Second
	DefaultScaleUpAfter   = 3 * time.Second
	DefaultScaleDownAfter = 30 * time.Second
	DefaultScaleCooldown  = 10 * time.Second
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
	// WorkerGOMAXPROCS is the GOMAXPROCS given to the workers, for those
	// written in Go. 0 shares the CPUs out: unless the master's environment
	// or Env sets GOMAXPROCS, each worker gets the CPUs counted as for
	// Workers' default, divided by Workers (the least, with MaxWorkers),
	// at least 1. A Go worker's own default is every CPU, so N workers on
	// N CPUs would run N² threads of Go code that compete for N CPUs: on 2
	// CPUs, a worker answering jobs spent 30% less CPU per job with 1
	// (docs/BENCHMARKS.md, Dispatch). Positive: that value, for every
	// worker. Negative: GOMAXPROCS is left as the environment has it.
	// Other programs ignore the variable.
	WorkerGOMAXPROCS int
	// Dir is the workers' working directory; "" means the master's.
	Dir string
	// Workers is the number of slots (the least, with MaxWorkers); negative
	// is an error. 0 means the
	// CPUs the master may use: those of its affinity mask, lowered to its
	// cgroup's CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us/cfs_period_us)
	// rounded up, as Go's GOMAXPROCS default counts them; Run logs which.
	Workers int
	// MaxWorkers, when above Workers, turns on autoscaling between Workers
	// and MaxWorkers from the listeners' accept queues (see ScaleInterval).
	// 0 (or Workers): a fixed count, and no sampling at all.
	MaxWorkers int
	// ScaleInterval is how often the accept queues are sampled while
	// autoscaling; 0 means DefaultScaleInterval.
	ScaleInterval time.Duration
	// ScaleUpAfter: a queue non-empty at every sample for this long adds a
	// worker. 0 means DefaultScaleUpAfter.
	ScaleUpAfter time.Duration
	// ScaleDownAfter: an empty queue at every sample for this long (and
	// library workers with few open connections) retires one. 0 means
	// DefaultScaleDownAfter; it must not be shorter than ScaleUpAfter.
	ScaleDownAfter time.Duration
	// ScaleCooldown is the quiet time after each change. 0 means
	// DefaultScaleCooldown.
	ScaleCooldown time.Duration
	// MemoryBudget, when positive, stops autoscaling from adding a worker
	// when the workers' memory (sampled as for MaxMemory) plus one more of
	// their average size would exceed it. 0: no budget.
	MemoryBudget int64
	// Listen are the addresses the master binds before starting workers.
	// Empty is allowed (workers then open their own sockets).
	Listen []sockshare.Spec
	// Activated are sockets received by systemd socket activation (their
	// names, LISTEN_FDNAMES, come from f.Name()). Each is matched to the
	// Listen entry of the same Name or, failing that, of the same address
	// (a port 0 matches nothing), and used instead of binding it; a Listen
	// entry that matches none is bound as usual, and an activated socket
	// that matches no entry is used as well, after the Listen ones, with a
	// warning in the log. The Master owns them once New succeeds: Run
	// closes them when it returns. They cannot be combined with
	// BalanceReusePort.
	Activated []*os.File
	// Balance says how connections are spread; zero is BalanceShared.
	Balance Balance
	// JobAttempts is how many times Dispatch sends a job that keeps losing
	// its worker (dies, hangs, disconnects) before it gives up. 0 means
	// DefaultJobAttempts.
	JobAttempts int
	// JobQueue bounds the jobs outstanding on one worker; a worker at the
	// bound gets none until it answers one. 0 means DefaultJobQueue.
	JobQueue int
	// MaxJobs bounds the jobs in flight in the whole cluster (Dispatch
	// calls and workers' submissions). 0 means DefaultMaxJobs.
	MaxJobs int
	// JobsFailFast makes Dispatch return an error wrapping
	// ErrJobQueueFull when a bound is reached, instead of waiting for room
	// until its context is done.
	JobsFailFast bool
	// ConnQueue bounds, with BalanceRoundRobin and BalanceLeastConn, the
	// connections handed to one worker that it has not yet acknowledged; a
	// worker at the bound gets no more until it catches up. 0 means
	// DefaultConnQueue; at most 4096.
	ConnQueue int
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
	// Each is written from one goroutine of its own (one for both when they
	// are the same writer), never from the loop: a writer that blocks or
	// fails costs dropped output, counted and logged, not supervision.
	Stdout, Stderr io.Writer
	// ControlSocket, when set, is the path of the control socket Run serves
	// (see [ControlSocketPath] for the usual place): its directory is made
	// with mode 0700 if missing (0711 for /run/clusterd, which workers of
	// another user pass through to their notify sockets), the socket gets
	// mode 0600, and only root
	// and the master's own uid may use it (SO_PEERCRED). It also makes the
	// master keep the last DefaultLogLines lines of each slot's relayed
	// output for the socket's logs command. "" means no control socket.
	ControlSocket string
	// Version is the version the control socket's status reports; "" means
	// "(unknown)".
	Version string
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
	// Subreaper, when true, makes the master a child subreaper
	// (PR_SET_CHILD_SUBREAPER) that reaps every child with wait4(-1),
	// orphaned grandchildren included, as PID 1 and a service's main process
	// must; cmd/clusterd sets it. Nothing else in the process may then wait
	// for a child: the reaper would steal its exit status (exec.Cmd.Wait
	// fails with ECHILD). The zero value is safe for a program that embeds
	// the master: it waits for its own workers by pid only and leaves the
	// process's other children alone.
	Subreaper bool

	// HeartbeatInterval is how often library workers send a heartbeat (and
	// their stats), as the master's IPC hello tells them. 0 means
	// DefaultHeartbeatInterval; negative asks for none.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout: a worker that heartbeats (a library worker, from its
	// first heartbeat on, which the library sends right after its hello)
	// and then stays silent this long is hung. It is logged, counted as a
	// hang of its slot, and replaced: the replacement starts and becomes
	// ready first, then the hung worker is drained (and SIGKILLed at
	// KillTimeout). Workers that never heartbeat are not watched. 0 means
	// DefaultHeartbeatTimeouts heartbeat intervals; negative turns it off.
	// It must be longer than HeartbeatInterval.
	HeartbeatTimeout time.Duration
	// Watchdog, when positive, asks every worker for sd_notify keep-alives,
	// as systemd's WatchdogSec= asks of a service: WATCHDOG_USEC is set in
	// its environment (with NOTIFY_SOCKET), and a worker that sent
	// WATCHDOG=1 once must send it again within Watchdog, or it is hung and
	// replaced as for HeartbeatTimeout. 0: no watchdog.
	Watchdog time.Duration
	// MaxMemory, when positive, is the most memory (in bytes) a worker may
	// use: the resident set of its whole process group, read from /proc
	// every SampleInterval. A worker over it is replaced gracefully: its
	// replacement starts and becomes ready first, then it drains within
	// KillTimeout. 0: no limit, and no sampling.
	MaxMemory int64
	// SampleInterval is how often worker memory is sampled for MaxMemory.
	// 0 means DefaultSampleInterval.
	SampleInterval time.Duration
	// DumpSignal, when set, is sent to a worker whose drain deadline
	// (KillTimeout) passed — a hung one among them — before its SIGKILL:
	// SIGQUIT makes a Go program write every goroutine's stack to its
	// stderr, which the master relays. The master waits DumpWait for it
	// (or the worker's exit) and then SIGKILLs. Either way, the state of
	// each of its threads (/proc/PID/task/*/{status,wchan,syscall}) is
	// logged first. 0: no dump signal.
	DumpSignal syscall.Signal
	// DumpWait is how long the master waits after DumpSignal before the
	// SIGKILL. 0 means DefaultDumpWait.
	DumpWait time.Duration
	// RetireRequests, when positive, retires a library worker gracefully
	// (replacement ready first, then drained) once the "http_requests" counter
	// of its stats reaches RetireRequests plus a random extra in
	// [0, RetireJitter], drawn per worker so that workers started together
	// do not retire together (gunicorn's max_requests and
	// max_requests_jitter). 0: never.
	RetireRequests, RetireJitter int64

	// OnMessage, when set, receives every one-way message (ipc KindUser) a
	// worker sends, in the order that worker sent them. It is called from
	// the worker's IPC session goroutine, one message at a time per worker
	// (different workers concurrently): while it runs, that worker's
	// further messages wait in its socket, so nothing is dropped and a slow
	// OnMessage slows the worker's sends down (including replies to
	// Master.Request, which are read in order behind them). The message's
	// descriptors are closed when it returns. nil: messages are read and
	// dropped.
	OnMessage func(from WorkerRef, m *ipc.Message)
	// HandleRequest, when set, answers a worker's requests (ipc
	// KindRequest, worker.Request). It runs on a goroutine of its own per
	// request, at most MaxRequests at a time per worker (then that worker's
	// reading waits); ctx ends when the worker's connection does. A reply
	// (any value msgpack encodes) is sent as a KindResponse; an error as a
	// KindError with the Code of an [*ipc.RemoteError] it wraps, or
	// ipc.CodeInternal. nil: requests are answered ipc.CodeUnsupported.
	HandleRequest func(ctx context.Context, from WorkerRef, req *ipc.Message) (reply any, err error)
	// MaxRequests bounds the requests of one worker handled at a time. 0
	// means DefaultMaxRequests.
	MaxRequests int
	// IPCMessageRate and IPCFDRate pace what the master reads from one
	// worker: messages and received descriptors per second, with bursts of
	// as many again; past them the worker's sends block (and one line is
	// logged per burst). 0 means the constants IPCMessageRate (20,000) and
	// IPCFDRate (2,000); negative means no limit, for programs whose
	// workers send more (the master then spends what they send).
	IPCMessageRate, IPCFDRate int
	// MaxListeners bounds the run-time listeners (worker.Listen of an
	// address the master does not have yet) of the whole cluster; a request
	// past it is answered ipc.CodeLimit, and a worker that keeps asking
	// after that is killed for a protocol error. 0 means
	// DefaultMaxListeners; negative allows none.
	MaxListeners int
	// AllowListen, when set, decides which run-time listen addresses a
	// worker may have the master open: an error refuses the request with
	// ipc.CodeForbidden and its text. Addresses of Listen (and Activated
	// names) are always handed out. nil allows every address the master's
	// privileges can bind.
	AllowListen func(spec sockshare.Spec) error
	// Contain, when true, makes sure no process of the cluster outlives the
	// master, however the master ends: Run puts the workers into a cgroup
	// of their own where it can make one (cgroup v2, writable: root, or a
	// delegated subtree), and starts a guardian process (this program in
	// [GuardianArg] mode, which [DispatchExecWorker], called first thing
	// in main, runs; Run fails at start, saying so, when it does not) that
	// kills the cluster when the master is gone. Without a cgroup, the
	// guardian and the stop's sweep find the workers' orphans only with
	// Subreaper (they are reparented to the master). The zero value leaves the host's cgroups and processes alone: workers
	// die with the master by their parent-death signal, their children
	// only when the master stops them. cmd/clusterd sets it.
	Contain bool
	// UpgradeArgs, when not empty, lets the master replace its own image
	// under the same pid ([Master.Upgrade], SIGUSR2 in Options.Signals):
	// UpgradeArgs[0] is the executable (looked up again at every upgrade,
	// so a file replaced at that path is the new binary) and the rest its
	// arguments, which must build the same Options again in the new image;
	// UpgradeEnv is its environment (nil: the master's own). The program
	// must call [DispatchExecWorker] first thing in main, and set Contain:
	// such a master gives its workers no parent-death signal (an exec
	// would fire it), and the guardian ends the cluster if the master
	// dies. See upgrade.go.
	UpgradeArgs []string
	UpgradeEnv  []string
	// BeforeExec, when set, is called right before an upgrade's exec, on
	// the loop's goroutine, to write out what the program buffers (a log
	// writer's queue): the exec drops it. It should return within a few
	// hundred milliseconds.
	BeforeExec func()
}

// config is the validated copy of Options the master runs with.
type config struct {
	Options
	path        string              // resolved Command[0]
	guardian    string              // with Contain: the executable run in guardian mode
	credential  *syscall.Credential // nil: keep the master's
	workersFrom string              // where the default Workers came from; "": given
	// gomaxprocs is the GOMAXPROCS the workers get, 0: none set here;
	// gomaxprocsFrom says why, for the log.
	gomaxprocs     int
	gomaxprocsFrom string
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
		return nil, optErr("Command", "no worker command")
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, optErr("Env", "environment entry %q: want KEY=VALUE", kv)
		}
	}
	if c.Dir != "" {
		fi, err := os.Stat(c.Dir)
		if err != nil {
			return nil, optErr("Dir", "worker directory: %w", err)
		}
		if !fi.IsDir() {
			return nil, optErr("Dir", "worker directory %s: not a directory", c.Dir)
		}
	}
	path, err := resolveCommand(c.Command[0], c.Dir, c.Env)
	if err != nil {
		return nil, &OptionError{Field: "Command", Err: err}
	}
	c.path = path

	switch {
	case c.Workers < 0:
		return nil, optErr("Workers", "workers %d: must not be negative", c.Workers)
	case c.Workers == 0:
		cpus := defaultWorkers()
		c.Workers, c.workersFrom = cpus.n, cpus.source
	}
	if err := c.shareGOMAXPROCS(os.Getenv); err != nil {
		return nil, err
	}
	if c.Balance < BalanceShared || c.Balance > BalanceLeastConn {
		return nil, optErr("Balance", "unknown balance %v", c.Balance)
	}
	if c.Balance == BalanceReusePort && len(c.Activated) > 0 {
		return nil, optErr("Balance", "balance reuseport cannot be used with socket activation: activated sockets are shared")
	}
	switch {
	case c.ConnQueue < 0 || c.ConnQueue > 4096:
		return nil, optErr("ConnQueue", "connection queue %d: want 0 to 4096", c.ConnQueue)
	case c.ConnQueue == 0:
		c.ConnQueue = DefaultConnQueue
	}
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{{"JobAttempts", &c.JobAttempts, DefaultJobAttempts}, {"JobQueue", &c.JobQueue, DefaultJobQueue}, {"MaxJobs", &c.MaxJobs, DefaultMaxJobs}} {
		switch {
		case *f.v < 0:
			return nil, optErr(f.name, "%s %d: must not be negative", f.name, *f.v)
		case *f.v == 0:
			*f.v = f.def
		}
	}
	for i, f := range c.Activated {
		if f == nil {
			return nil, optErr("Activated", "activated socket %d is nil", i)
		}
	}
	if c.Restart < RestartAlways || c.Restart > RestartNever {
		return nil, optErr("Restart", "unknown restart policy %v", c.Restart)
	}
	if c.Ready.Kind < ReadyExec || c.Ready.Kind > ReadyListening {
		return nil, optErr("Ready", "unknown ready mode %v", c.Ready)
	}
	if c.Ready.Kind == ReadyListening && c.Ready.Delay == 0 {
		c.Ready.Delay = DefaultListeningFallback
	}
	if (c.Ready.Kind == ReadyDelay || c.Ready.Kind == ReadyListening) && c.Ready.Delay <= 0 {
		return nil, optErr("Ready", "ready mode %v: delay must be positive", c.Ready)
	}
	if c.Output != OutputPrefix && c.Output != OutputRaw {
		return nil, optErr("Output", "unknown output mode %v", c.Output)
	}

	durations := []struct {
		field, name string
		v           *time.Duration
		def         time.Duration
	}{
		{"MinUptime", "min uptime", &c.MinUptime, DefaultMinUptime},
		{"BackoffMin", "backoff min", &c.BackoffMin, DefaultBackoffMin},
		{"BackoffMax", "backoff max", &c.BackoffMax, DefaultBackoffMax},
		{"RestartWindow", "restart window", &c.RestartWindow, DefaultRestartWindow},
		{"KillTimeout", "kill timeout", &c.KillTimeout, DefaultKillTimeout},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return nil, optErr(d.field, "%s %v: must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.BackoffMax < c.BackoffMin {
		return nil, optErr("BackoffMax", "backoff max %v is below backoff min %v", c.BackoffMax, c.BackoffMin)
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if (c.Ready.Kind == ReadyDelay || c.Ready.Kind == ReadyListening) && c.ReadyTimeout > 0 && c.ReadyTimeout <= c.Ready.Delay {
		return nil, optErr("ReadyTimeout", "ready timeout %v must be longer than ready delay %v", c.ReadyTimeout, c.Ready.Delay)
	}
	if c.MaxRestarts == 0 {
		c.MaxRestarts = DefaultMaxRestarts
	}
	switch {
	case c.ReloadBatch < 0:
		return nil, optErr("ReloadBatch", "reload batch %d: must not be negative", c.ReloadBatch)
	case c.ReloadBatch == 0:
		c.ReloadBatch = DefaultReloadBatch
	}
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	if c.StopSignal < 0 || c.StopSignal > 64 {
		return nil, optErr("StopSignal", "stop signal %d: not a signal", int(c.StopSignal))
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
			return nil, optErr("ExecWorker", "find own executable for exec-worker mode: %w", err)
		}
		c.ExecWorker = []string{exe, ExecWorkerArg}
	}
	if c.Version == "" {
		c.Version = "(unknown)"
	}
	if c.ControlSocket != "" {
		abs, err := filepath.Abs(c.ControlSocket)
		if err != nil {
			return nil, optErr("ControlSocket", "control socket %s: %w", c.ControlSocket, err)
		}
		c.ControlSocket = abs
	}
	if len(c.UpgradeArgs) > 0 && !c.Contain {
		return nil, optErr("UpgradeArgs", "in-place upgrades need Contain (the guardian ends the workers of a dead master)")
	}
	if len(c.UpgradeArgs) > 0 && c.UpgradeArgs[0] == "" {
		return nil, optErr("UpgradeArgs", "no executable")
	}
	if c.Contain {
		exe, err := os.Executable()
		if err != nil {
			return nil, optErr("Contain", "find own executable for guardian mode: %w", err)
		}
		c.guardian = exe
	}
	if c.PIDFile != "" {
		abs, err := filepath.Abs(c.PIDFile)
		if err != nil {
			return nil, optErr("PIDFile", "pid file %s: %w", c.PIDFile, err)
		}
		c.PIDFile = abs
	}
	cred, err := lookupCredential(c.User, c.Group)
	if err != nil {
		field := "User"
		if c.User == "" {
			field = "Group"
		}
		return nil, &OptionError{Field: field, Err: err}
	}
	c.credential = cred
	switch {
	case c.HeartbeatInterval == 0:
		c.HeartbeatInterval = DefaultHeartbeatInterval
	case c.HeartbeatInterval < 0:
		c.HeartbeatInterval = 0
	case c.HeartbeatInterval < time.Millisecond:
		return nil, optErr("HeartbeatInterval", "heartbeat interval %v: below the protocol's 1ms resolution", c.HeartbeatInterval)
	}
	switch {
	case c.MaxRequests < 0:
		return nil, optErr("MaxRequests", "max requests %d: must not be negative", c.MaxRequests)
	case c.MaxRequests == 0:
		c.MaxRequests = DefaultMaxRequests
	}
	for _, r := range []struct {
		v   *int
		def int
	}{{&c.IPCMessageRate, IPCMessageRate}, {&c.IPCFDRate, IPCFDRate}} {
		switch {
		case *r.v == 0:
			*r.v = r.def
		case *r.v < 0:
			*r.v = 0 // the limiter's "no limit"
		}
	}
	switch {
	case c.HeartbeatTimeout < 0 || c.HeartbeatInterval == 0:
		if c.HeartbeatTimeout > 0 {
			return nil, optErr("HeartbeatTimeout", "heartbeat timeout %v: workers are asked for no heartbeats", c.HeartbeatTimeout)
		}
		c.HeartbeatTimeout = 0
	case c.HeartbeatTimeout == 0:
		c.HeartbeatTimeout = DefaultHeartbeatTimeouts * c.HeartbeatInterval
	case c.HeartbeatTimeout <= c.HeartbeatInterval:
		return nil, optErr("HeartbeatTimeout", "heartbeat timeout %v: must be longer than the heartbeat interval %v", c.HeartbeatTimeout, c.HeartbeatInterval)
	}
	switch {
	case c.Watchdog < 0:
		return nil, optErr("Watchdog", "watchdog %v: must not be negative", c.Watchdog)
	case c.Watchdog > 0 && c.Watchdog < time.Millisecond:
		return nil, optErr("Watchdog", "watchdog %v: below WATCHDOG_USEC's useful resolution of 1ms", c.Watchdog)
	}
	switch {
	case c.MaxMemory < 0:
		return nil, optErr("MaxMemory", "max memory %d: must not be negative", c.MaxMemory)
	case c.SampleInterval < 0:
		return nil, optErr("SampleInterval", "sample interval %v: must not be negative", c.SampleInterval)
	case c.SampleInterval > 0 && c.SampleInterval < 10*time.Millisecond:
		return nil, optErr("SampleInterval", "sample interval %v: below 10ms", c.SampleInterval)
	case c.SampleInterval == 0:
		c.SampleInterval = DefaultSampleInterval
	}
	switch {
	case c.MaxWorkers < 0:
		return nil, optErr("MaxWorkers", "max workers %d: must not be negative", c.MaxWorkers)
	case c.MaxWorkers > 0 && c.MaxWorkers < c.Workers:
		return nil, optErr("MaxWorkers", "max workers %d is below workers %d", c.MaxWorkers, c.Workers)
	case c.MemoryBudget < 0:
		return nil, optErr("MemoryBudget", "memory budget %d: must not be negative", c.MemoryBudget)
	}
	for _, d := range []struct {
		field, name string
		v           *time.Duration
		def         time.Duration
	}{
		{"ScaleInterval", "scale interval", &c.ScaleInterval, DefaultScaleInterval},
		{"ScaleUpAfter", "scale up after", &c.ScaleUpAfter, DefaultScaleUpAfter},
		{"ScaleDownAfter", "scale down after", &c.ScaleDownAfter, DefaultScaleDownAfter},
		{"ScaleCooldown", "scale cooldown", &c.ScaleCooldown, DefaultScaleCooldown},
	} {
		if *d.v < 0 {
			return nil, optErr(d.field, "%s %v: must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.ScaleInterval < 10*time.Millisecond {
		return nil, optErr("ScaleInterval", "scale interval %v: below 10ms", c.ScaleInterval)
	}
	if c.ScaleDownAfter < c.ScaleUpAfter {
		return nil, optErr("ScaleDownAfter", "scale down after %v is shorter than scale up after %v: the count would flap", c.ScaleDownAfter, c.ScaleUpAfter)
	}
	switch {
	case c.DumpSignal < 0 || c.DumpSignal > 64:
		return nil, optErr("DumpSignal", "dump signal %d: not a signal", int(c.DumpSignal))
	case c.DumpWait < 0:
		return nil, optErr("DumpWait", "dump wait %v: must not be negative", c.DumpWait)
	case c.DumpWait == 0:
		c.DumpWait = DefaultDumpWait
	}
	switch {
	case c.RetireRequests < 0:
		return nil, optErr("RetireRequests", "max requests %d: must not be negative", c.RetireRequests)
	case c.RetireJitter < 0:
		return nil, optErr("RetireJitter", "max requests jitter %d: must not be negative", c.RetireJitter)
	case c.RetireJitter > 0 && c.RetireRequests == 0:
		return nil, optErr("RetireJitter", "max requests jitter %d: needs max requests", c.RetireJitter)
	}
	switch {
	case c.MaxListeners == 0:
		c.MaxListeners = DefaultMaxListeners
	case c.MaxListeners < 0:
		c.MaxListeners = 0
	}
	return c, nil
}

// OptionError is the error of [New] for an invalid [Options] field. Field
// is the field's name ("Workers", "BackoffMax"); the message names the
// value.
type OptionError struct {
	Field string
	Err   error
}

func (e *OptionError) Error() string { return e.Err.Error() }
func (e *OptionError) Unwrap() error { return e.Err }

func optErr(field, format string, args ...any) error {
	return &OptionError{Field: field, Err: fmt.Errorf(format, args...)}
}
