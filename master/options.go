package master

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
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

// Balance says how connections of a listen address are spread over workers.
type Balance int

const (
	// BalanceShared (the zero value) hands the same listening socket to every
	// worker; the kernel gives each connection to one accept caller.
	BalanceShared Balance = iota
	// BalanceReusePort binds one SO_REUSEPORT socket per slot and address. The
	// socket belongs to the slot: a replacement worker inherits it, so its
	// accept backlog survives restarts and reloads. Unix sockets stay shared.
	BalanceReusePort
)

// ParseBalance parses "shared" or "reuseport".
func ParseBalance(s string) (Balance, error) {
	switch s {
	case "shared":
		return BalanceShared, nil
	case "reuseport":
		return BalanceReusePort, nil
	}
	return 0, fmt.Errorf("parse balance %q: want shared or reuseport", s)
}

// String returns the name ParseBalance accepts.
func (b Balance) String() string {
	switch b {
	case BalanceShared:
		return "shared"
	case BalanceReusePort:
		return "reuseport"
	}
	return "Balance(" + strconv.Itoa(int(b)) + ")"
}

// RestartPolicy says which worker exits lead to a restart.
type RestartPolicy int

const (
	// RestartAlways (the zero value) restarts every worker that exits
	// unexpectedly, whatever its status.
	RestartAlways RestartPolicy = iota
	// RestartOnFailure restarts a worker unless it exited with code 0.
	RestartOnFailure
	// RestartNever leaves the slot of an exited worker empty.
	RestartNever
)

// ParseRestartPolicy parses "always", "on-failure" or "never".
func ParseRestartPolicy(s string) (RestartPolicy, error) {
	switch s {
	case "always":
		return RestartAlways, nil
	case "on-failure":
		return RestartOnFailure, nil
	case "never":
		return RestartNever, nil
	}
	return 0, fmt.Errorf("parse restart policy %q: want always, on-failure or never", s)
}

// String returns the name ParseRestartPolicy accepts.
func (p RestartPolicy) String() string {
	switch p {
	case RestartAlways:
		return "always"
	case RestartOnFailure:
		return "on-failure"
	case RestartNever:
		return "never"
	}
	return "RestartPolicy(" + strconv.Itoa(int(p)) + ")"
}

// ReadyKind says which event makes a worker ready.
type ReadyKind int

const (
	// ReadyExec (the zero value): ready as soon as the worker process runs.
	ReadyExec ReadyKind = iota
	// ReadyNotify: ready when the worker sends READY=1 on NOTIFY_SOCKET.
	ReadyNotify
	// ReadyIPC: ready when the worker sends an ipc ready message after its hello.
	ReadyIPC
	// ReadyDelay: ready once the worker has stayed up for ReadyMode.Delay.
	ReadyDelay
)

// ReadyMode is a readiness rule. The zero value is ReadyExec.
type ReadyMode struct {
	Kind  ReadyKind
	Delay time.Duration // only for ReadyDelay; must be positive there
}

// ParseReadyMode parses "exec", "notify", "ipc" or "delay=DUR" (a
// time.ParseDuration string, e.g. "delay=500ms").
func ParseReadyMode(s string) (ReadyMode, error) {
	switch s {
	case "exec":
		return ReadyMode{Kind: ReadyExec}, nil
	case "notify":
		return ReadyMode{Kind: ReadyNotify}, nil
	case "ipc":
		return ReadyMode{Kind: ReadyIPC}, nil
	}
	if v, ok := strings.CutPrefix(s, "delay="); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return ReadyMode{}, fmt.Errorf("parse ready mode %q: %w", s, err)
		}
		if d <= 0 {
			return ReadyMode{}, fmt.Errorf("parse ready mode %q: delay must be positive", s)
		}
		return ReadyMode{Kind: ReadyDelay, Delay: d}, nil
	}
	return ReadyMode{}, fmt.Errorf("parse ready mode %q: want exec, notify, ipc or delay=DURATION", s)
}

// String returns the form ParseReadyMode accepts.
func (r ReadyMode) String() string {
	switch r.Kind {
	case ReadyExec:
		return "exec"
	case ReadyNotify:
		return "notify"
	case ReadyIPC:
		return "ipc"
	case ReadyDelay:
		return "delay=" + r.Delay.String()
	}
	return "ReadyKind(" + strconv.Itoa(int(r.Kind)) + ")"
}

// OutputMode says what happens to the workers' stdout and stderr.
type OutputMode int

const (
	// OutputPrefix (the zero value) relays each line a worker writes, prefixed
	// with "[w3 pid 1234] ", to Options.Stdout or Options.Stderr.
	OutputPrefix OutputMode = iota
	// OutputRaw passes the master's stdout and stderr (or Options.Stdout and
	// Options.Stderr when they are *os.File) to workers untouched.
	OutputRaw
)

// ParseOutputMode parses "prefix" or "raw".
func ParseOutputMode(s string) (OutputMode, error) {
	switch s {
	case "prefix":
		return OutputPrefix, nil
	case "raw":
		return OutputRaw, nil
	}
	return 0, fmt.Errorf("parse output mode %q: want prefix or raw", s)
}

// String returns the name ParseOutputMode accepts.
func (o OutputMode) String() string {
	switch o {
	case OutputPrefix:
		return "prefix"
	case OutputRaw:
		return "raw"
	}
	return "OutputMode(" + strconv.Itoa(int(o)) + ")"
}

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
}

// config is the validated copy of Options the master runs with.
type config struct {
	Options
	path       string              // resolved Command[0]
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

// resolveCommand finds the executable of argv0 as the worker will see it.
func resolveCommand(argv0, dir string, env []string) (string, error) {
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("worker command %s: %w", argv0, err)
		}
		if err := checkExecutable(abs); err != nil {
			return "", fmt.Errorf("worker command %s: %w", argv0, err)
		}
		return abs, nil
	}
	pathEnv := os.Getenv("PATH")
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) && dir != "" {
			d = filepath.Join(dir, d)
		}
		p, err := filepath.Abs(filepath.Join(d, argv0))
		if err != nil {
			continue
		}
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("worker command %s: %w", argv0, exec.ErrNotFound)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return errors.New("is a directory")
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return errors.New("permission denied: not executable")
	}
	return nil
}

// lookupCredential resolves user and group names or numeric ids.
func lookupCredential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), NoSetGroups: true}
	if userName != "" {
		u, err := lookupUser(userName)
		if err != nil {
			return nil, err
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %s: uid %q: %w", userName, u.Uid, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %s: gid %q: %w", userName, u.Gid, err)
		}
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
		if groupName == "" {
			// Like initgroups(3): the user's supplementary groups too.
			ids, err := u.GroupIds()
			if err != nil {
				return nil, fmt.Errorf("user %s: groups: %w", userName, err)
			}
			for _, id := range ids {
				g, err := strconv.ParseUint(id, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("user %s: group id %q: %w", userName, id, err)
				}
				cred.Groups = append(cred.Groups, uint32(g))
			}
			cred.NoSetGroups = false
		}
	}
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return nil, err
		}
		gid, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("group %s: gid %q: %w", groupName, g.Gid, err)
		}
		cred.Gid = uint32(gid)
		cred.Groups = []uint32{uint32(gid)}
		cred.NoSetGroups = false
	}
	if int(cred.Uid) == os.Geteuid() && int(cred.Gid) == os.Getegid() && (cred.NoSetGroups || os.Geteuid() != 0) {
		// Nothing to change (and an unprivileged master could not call
		// setgroups(2) anyway).
		return nil, nil
	}
	return cred, nil
}

func lookupUser(name string) (*user.User, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		u, err := user.LookupId(name)
		if err == nil {
			return u, nil
		}
		// A numeric uid without a passwd entry is still a valid identity.
		var unknown user.UnknownUserIdError
		if errors.As(err, &unknown) {
			return &user.User{Uid: name, Gid: name, Username: name}, nil
		}
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	return u, nil
}

func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		g, err := user.LookupGroupId(name)
		if err == nil {
			return g, nil
		}
		var unknown user.UnknownGroupIdError
		if errors.As(err, &unknown) {
			return &user.Group{Gid: name, Name: name}, nil
		}
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	return g, nil
}
