package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/sockshare"
)

const runLong = `Run binds every --listen address, starts --workers copies of COMMAND with
the sockets as fds 3, 4, ... (systemd's LISTEN_FDS protocol), and supervises
them: a worker that exits is restarted in its slot, with exponential backoff
when it keeps crashing, and SIGHUP replaces every worker without refusing a
connection.

Listen addresses:
  tcp://HOST:PORT, tcp4://, tcp6://, HOST:PORT or :PORT (tcp),
  unix:///PATH, unix://@ABSTRACT, udp://HOST:PORT, each with an optional
  NAME= prefix that the worker sees in LISTEN_FDNAMES.
  A unix socket file takes options after '?', joined by '&':
    mode=0660       its permission bits, octal (default: from the umask)
    owner=USER      its owner, a name or uid (default: the master's user)
    group=GROUP     its group, a name or gid
  e.g. unix:///run/app.sock?mode=0660&owner=www-data&group=www-data
  The master removes the socket files it created when it stops (not those
  of sockets from systemd socket activation, nor a file that replaced its
  socket at the path).
  Under systemd socket activation (LISTEN_FDS for clusterd itself), each
  activated socket stands in for the --listen of the same NAME, or else of
  the same address; a --listen with no match is bound, and an activated
  socket with no --listen is served as well, with a warning.

Each worker gets:
  LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES   its sockets, at fds 3, 4, ...
  CLUSTERD_WORKER_ID                      its slot, 0..N-1, kept across restarts
  CLUSTERD_WORKER_GEN                     the slot's generation
  CLUSTERD_IPC_FD                         its end of the IPC channel to the master
  EINHORN_FD_COUNT, EINHORN_FD_n          the sockets again, for einhorn servers
  NOTIFY_SOCKET                           with --ready notify only: a socket file
                                          of its own, where sd_notify READY=1 is heard

Readiness (--ready) - when a started worker counts as serving:
  listening    (the default) when it waits for connections on a socket it
               inherited, as /proc shows it: a thread blocked in accept on it
               or in poll or select with it in the set (gunicorn), or the
               socket in one of its epoll sets (Go, Node, asyncio and uvicorn,
               lighttpd, nginx), or its worker.Ready() over IPC, whichever
               comes first (a Go worker that has work to do between taking
               its listeners and Ready() wants --ready ipc). A worker with no
               inherited socket, or
               one not seen waiting within 10s, is ready after 10s, and the
               log says so; listening=DUR sets that delay
  exec         as soon as the command was executed
  notify       when it sends READY=1 to $NOTIFY_SOCKET (sd_notify)
  ipc          when it calls worker.Ready() (the Go library, over IPC)
  delay=DUR    once it has stayed up for DUR (e.g. delay=500ms)

Signals to the master:
  HUP          rolling reload: per batch of --reload-batch slots, start the new
               worker, wait until it is ready, then drain the old one (its stop
               signal, SIGKILL after --kill-timeout); a worker that fails to
               become ready aborts the reload and the old ones keep serving
  TERM, INT    graceful stop: drain every worker, exit 0; a second one stops at
               once, but only 1s or more after the first (coreutils timeout
               signals the master and then its process group: one request)
  QUIT         immediate stop: SIGKILL to every worker, whenever it comes
  TTIN, TTOU   one worker more, one worker fewer
  WINCH        stop every worker, keep the master and its sockets; HUP brings
               them back
  USR1         reopen --log-file by its path (after logrotate moved it)
  USR2         upgrade in place: exec the binary at clusterd's path (replace
               the file with the new version first) under the same pid, keeping
               the workers, sockets and IPC; the new binary is checked first,
               and on any failure the old one keeps running (clusterd upgrade
               --wait reports which)

Worker output (--output prefix):
  Each line is relayed with a [w3 pid 1234] prefix to the master's stdout or
  stderr, through a bounded buffer: a reader that stops reading, or goes away
  (clusterd run ... | tee log, with the tee killed), costs the workers' output,
  never the cluster. What could not be written is dropped, counted and logged
  ("worker output dropped"). A worker that keeps crashing is quoted: the
  restart intensity error ends with the last line it printed.

Environment:
  Every flag can also be set with a CLUSTERD_* variable, named after the flag
  in upper case with dashes as underscores (--min-uptime: CLUSTERD_MIN_UPTIME,
  --log-json: CLUSTERD_LOG_JSON=true). A flag given on the command line wins
  over its variable. The repeatable flags take a comma-separated list
  (CLUSTERD_LISTEN=tcp://:80,tcp://:443). The master removes the variables it
  read from the environment its workers inherit.

Control socket:
  The master answers "clusterd status", "reload", "scale", "stop", "signal"
  and "logs" on a unix socket: $RUNTIME_DIRECTORY/NAME.sock under systemd,
  else /run/clusterd/NAME.sock as root, else $XDG_RUNTIME_DIR/clusterd/NAME.sock;
  NAME is --name, by default the worker command's base name, and --control
  PATH puts the socket elsewhere. Only root and the master's own user may use
  it. --metrics ADDR serves Prometheus metrics at http://ADDR/metrics.

Exit status: 0 after a graceful stop, 1 when the cluster failed (an address
in use, a worker command that cannot start, restart intensity exceeded), 2 on
bad usage.`

const runExample = `  # Four workers of ./server sharing port 8080; reload them with kill -HUP.
  clusterd run --listen tcp://:8080 -w 4 -- ./server --config prod.yaml

  # A Go server that links the worker library reports readiness over IPC.
  clusterd run --listen 127.0.0.1:8080 --ready ipc -- bin/hello

  # Any binary that can listen on an inherited fd, ready once it listens.
  clusterd run --listen :3000 -- node examples/node/server.js

  # One SO_REUSEPORT socket per worker, workers run as www-data, JSON logs.
  clusterd run --listen :80 --balance reuseport --user www-data --log-json -- ./server

  # The same settings from the environment (as in a systemd unit).
  CLUSTERD_LISTEN=:8080 CLUSTERD_WORKERS=4 clusterd run -- ./server`

// runFlags holds the values of run's flags.
type runFlags struct {
	workers       workersValue
	listen        []string
	balance       string
	connQueue     int
	tcpNoDelay    bool
	restart       string
	minUptime     time.Duration
	backoffMin    time.Duration
	backoffMax    time.Duration
	maxRestarts   int
	restartWindow time.Duration
	ready         string
	readyTimeout  time.Duration
	killTimeout   time.Duration
	reloadBatch   int
	stopSignal    string
	env           []string
	gomaxprocs    string
	cwd           string
	user          string
	group         string
	output        string
	logLevel      string
	logJSON       bool
	pidFile       string
	logFile       string
	metrics       string
	control       controlFlags

	heartbeatInterval time.Duration
	heartbeatTimeout  time.Duration
	watchdog          time.Duration
	maxMemory         string
	sampleInterval    time.Duration
	maxRequests       int64
	maxRequestsJitter int64
	dumpSignal        string
	scaleInterval     time.Duration
	scaleUpAfter      time.Duration
	scaleDownAfter    time.Duration
	scaleCooldown     time.Duration
	memoryBudget      string
}

// workersValue is --workers: N, or MIN:MAX to autoscale.
type workersValue struct{ min, max int }

func (v *workersValue) String() string {
	if v.max > 0 {
		return strconv.Itoa(v.min) + ":" + strconv.Itoa(v.max)
	}
	return strconv.Itoa(v.min)
}

func (v *workersValue) Type() string { return "N|MIN:MAX" }

func (v *workersValue) Set(s string) error {
	lo, hi, isRange := strings.Cut(s, ":")
	n, err := strconv.Atoi(lo)
	if err != nil {
		return fmt.Errorf("%q: want a number N or a range MIN:MAX", s)
	}
	if !isRange {
		*v = workersValue{min: n}
		return nil
	}
	m, err := strconv.Atoi(hi)
	switch {
	case err != nil:
		return fmt.Errorf("%q: want a number N or a range MIN:MAX", s)
	case n < 1:
		return fmt.Errorf("%q: MIN must be at least 1", s)
	case m < n:
		return fmt.Errorf("%q: MAX %d is below MIN %d", s, m, n)
	}
	*v = workersValue{min: n, max: m}
	return nil
}

// register defines the flags on fs, with master's defaults.
func (f *runFlags) register(fs *pflag.FlagSet) {
	fs.VarP(&f.workers, "workers", "w", "number of worker processes, or MIN:MAX to autoscale between them from the accept queues (default: the CPUs of the CPU quota and affinity mask)")
	fs.DurationVar(&f.scaleInterval, "scale-interval", master.DefaultScaleInterval, "with --workers MIN:MAX: how often the listeners' accept queues are sampled")
	fs.DurationVar(&f.scaleUpAfter, "scale-up-after", master.DefaultScaleUpAfter, "with --workers MIN:MAX: add a worker when the accept queue stayed non-empty this long")
	fs.DurationVar(&f.scaleDownAfter, "scale-down-after", master.DefaultScaleDownAfter, "with --workers MIN:MAX: retire a worker when the accept queue stayed empty this long")
	fs.DurationVar(&f.scaleCooldown, "scale-cooldown", master.DefaultScaleCooldown, "with --workers MIN:MAX: no other change this long after one")
	fs.StringVar(&f.memoryBudget, "memory-budget", "", "with --workers MIN:MAX: add no worker that would take the workers' memory past this (48M, 2G)")
	fs.StringArrayVar(&f.listen, "listen", nil, "address to bind and share with the workers, [NAME=]tcp://HOST:PORT, unix:///PATH, ... (repeatable)")
	fs.IntVar(&f.connQueue, "conn-queue", master.DefaultConnQueue, "with --balance round-robin or least-conn: the most connections handed to one worker and not yet taken by it; a worker at the bound gets none until it catches up")
	fs.StringVar(&f.balance, "balance", master.BalanceShared.String(), "how connections are spread: shared (one socket for all workers), reuseport (one SO_REUSEPORT socket per slot), or round-robin or least-conn (the master accepts and hands each connection to a worker over IPC; workers must use the clusterd worker library)")
	fs.BoolVar(&f.tcpNoDelay, "tcp-nodelay", true, "set TCP_NODELAY on the TCP listeners, which accepted connections inherit (--tcp-nodelay=false leaves Nagle's algorithm on)")
	fs.StringVar(&f.restart, "restart", master.RestartAlways.String(), "which worker exits are restarted: always, on-failure or never")
	fs.DurationVar(&f.minUptime, "min-uptime", master.DefaultMinUptime, "a worker up this long is restarted at once and resets its slot's backoff")
	fs.DurationVar(&f.backoffMin, "backoff-min", master.DefaultBackoffMin, "first restart delay of a worker that keeps crashing")
	fs.DurationVar(&f.backoffMax, "backoff-max", master.DefaultBackoffMax, "longest restart delay of a worker that keeps crashing")
	fs.IntVar(&f.maxRestarts, "max-restarts", master.DefaultMaxRestarts, "restart intensity: more restarts than this within --restart-window stop the cluster with an error (negative: no limit)")
	fs.DurationVar(&f.restartWindow, "restart-window", master.DefaultRestartWindow, "time window of --max-restarts")
	fs.StringVar(&f.ready, "ready", master.ReadyMode{Kind: master.ReadyListening}.String(), "when a started worker counts as ready: listening[=FALLBACK], exec, notify, ipc or delay=DURATION")
	fs.DurationVar(&f.readyTimeout, "ready-timeout", master.DefaultReadyTimeout, "how long a starting worker may take to become ready before it is killed (negative: no limit)")
	fs.DurationVar(&f.killTimeout, "kill-timeout", master.DefaultKillTimeout, "how long a draining worker has between its stop signal and SIGKILL")
	fs.IntVar(&f.reloadBatch, "reload-batch", master.DefaultReloadBatch, "how many workers a rolling reload replaces at a time")
	fs.StringVar(&f.stopSignal, "stop-signal", "TERM", "signal that tells a worker to drain, by name (TERM, SIGINT) or number")
	fs.DurationVar(&f.heartbeatInterval, "heartbeat-interval", master.DefaultHeartbeatInterval, "how often library workers heartbeat and report their stats")
	fs.DurationVar(&f.heartbeatTimeout, "heartbeat-timeout", master.DefaultHeartbeatTimeouts*master.DefaultHeartbeatInterval, "a library worker silent this long is hung and replaced (default: 10 heartbeat intervals; 0: off)")
	fs.DurationVar(&f.watchdog, "watchdog", 0, "a worker that sent WATCHDOG=1 on NOTIFY_SOCKET must send it again within this, or it is hung and replaced; WATCHDOG_USEC is set for it (0: off)")
	fs.StringVar(&f.maxMemory, "max-memory", "", "replace a worker, gracefully, once its process group's resident memory exceeds this: 48M, 512MiB, 1G (default: no limit)")
	fs.DurationVar(&f.sampleInterval, "sample-interval", master.DefaultSampleInterval, "how often worker memory is sampled for --max-memory")
	fs.Int64Var(&f.maxRequests, "max-requests", 0, "retire a library worker, gracefully, after it served this many requests (0: never)")
	fs.Int64Var(&f.maxRequestsJitter, "max-requests-jitter", 0, "add a random 0..N to --max-requests per worker, so that workers do not retire together")
	fs.StringVar(&f.dumpSignal, "dump-signal", "", "send this signal (e.g. SIGQUIT, for a Go goroutine dump on stderr) to a worker whose drain deadline passed, and wait a moment before the SIGKILL")
	fs.StringArrayVar(&f.env, "env", nil, "KEY=VALUE added to the workers' environment (repeatable)")
	fs.StringVar(&f.gomaxprocs, "gomaxprocs", "auto", "GOMAXPROCS of the workers (Go programs): auto (the CPUs divided by the workers, at least 1, unless --env or the environment sets GOMAXPROCS), inherit (leave the environment's), or a number")
	fs.StringVar(&f.cwd, "cwd", "", "working directory of the workers (default: the master's)")
	fs.StringVar(&f.user, "user", "", "run the workers as this user, by name or uid (the master keeps its own to bind privileged ports)")
	fs.StringVar(&f.group, "group", "", "run the workers with this group, by name or gid (default: the --user's groups)")
	fs.StringVar(&f.output, "output", master.OutputPrefix.String(), "worker stdout/stderr: prefix (lines tagged [w3 pid 1234]) or raw (passed through)")
	fs.StringVar(&f.logLevel, "log-level", "info", "master log level: trace, debug, info, warn, error or off")
	fs.BoolVar(&f.logJSON, "log-json", false, "write the master's log as JSON lines")
	fs.StringVar(&f.pidFile, "pid-file", "", "write the master's pid to this file while it runs")
	fs.StringVar(&f.logFile, "log-file", "", "append the master's log and the workers' output to this file instead of stderr and stdout; SIGUSR1 reopens it (after logrotate moved it)")
	f.control.register(fs, true)
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100)")
}

func newRunCommand() *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:     "run [flags] -- COMMAND [ARGS...]",
		Short:   "Start a cluster of COMMAND workers on shared listening sockets",
		Long:    runLong,
		Example: runExample,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("missing worker command: want clusterd run [flags] -- COMMAND [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := applyEnv(cmd.Flags(), os.LookupEnv, os.Unsetenv); err != nil {
				return err
			}
			return runCluster(cmd, f, args)
		},
	}
	fs := cmd.Flags()
	// Flags end at COMMAND even without "--": its own flags are its own.
	fs.SetInterspersed(false)
	fs.SortFlags = false // in the order of register: related flags together
	f.register(fs)
	fs.VisitAll(func(fl *pflag.Flag) {
		fl.Usage += " [$" + envName(fl.Name) + "]"
	})
	return cmd
}

// runCluster builds the master from the flags and runs it until it stops.
func runCluster(cmd *cobra.Command, f *runFlags, command []string) error {
	fs := cmd.Flags()
	opts, err := f.options(fs)
	if err != nil {
		return err
	}
	opts.Command = command
	// Nothing the workers start outlives the master: a cgroup for the
	// cluster where one can be made, and the guardian process.
	opts.Contain = true
	opts.Stdout = cmd.OutOrStdout()
	opts.Stderr = cmd.ErrOrStderr()
	logTo := cmd.ErrOrStderr()
	var lf *logFile
	if f.logFile != "" {
		if lf, err = openLogFile(f.logFile); err != nil {
			return err
		}
		defer lf.close() // after the log writer's close below: nothing writes any more
		opts.Stdout, opts.Stderr, logTo = lf, lf, lf
	}
	logOut := newLogWriter(logTo, cmd.OutOrStdout())
	defer logOut.close()
	logger, err := f.logger(logOut)
	if err != nil {
		return err
	}
	opts.Logger = logger
	opts.Version = version()
	path, err := f.control.runPath(command)
	switch {
	case err == nil:
		opts.ControlSocket = path
	case isUsage(err):
		return err
	default:
		// Only the default place is missing (no XDG_RUNTIME_DIR): the
		// cluster runs, without a control socket.
		logger.Warn("no control socket", "error", err)
	}
	surviveBrokenPipes()
	// SIGUSR1 reopens the log file, here and not in the master's loop: the
	// file is the CLI's. Without --log-file it is caught all the same, as
	// its default action would kill the master.
	stopReopen := reopenOnUSR1(lf, logger)
	defer stopReopen()

	// Under systemd socket activation the sockets come from LISTEN_FDS
	// (checked against LISTEN_PID); the variables are removed so that the
	// workers get their own, built by the master.
	activated, err := sockshare.Files(true)
	if err != nil {
		return fmt.Errorf("socket activation: %w", err)
	}
	if len(activated) > 0 {
		opts.Activated = activated
	}

	// The master's loop acts on these; it never calls signal.Notify itself.
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, masterSignals()...)
	defer signal.Stop(sigs)
	opts.Signals = sigs
	// The CLI is the cluster's main process (and may be PID 1): it reaps
	// orphaned grandchildren too, and runs no other children of its own.
	opts.Subreaper = true
	// SIGUSR2 and `clusterd upgrade` exec the binary at the same path
	// (replaced by the new version) under the same pid.
	if startExe != "" && len(startArgs) > 0 {
		opts.UpgradeArgs = append([]string{startExe}, startArgs[1:]...)
		opts.UpgradeEnv = startEnv
		opts.BeforeExec = func() { logOut.flush(200 * time.Millisecond) }
	}

	m, err := master.New(opts)
	if err != nil {
		for _, a := range activated {
			a.Close() // New failed, so they are still ours; the error says why
		}
		return optionError(err)
	}
	if f.metrics != "" {
		stop, addr, err := serveMetrics(f.metrics, m)
		if err != nil {
			return err
		}
		defer stop()
		logger.Info("metrics listening", "addr", addr.String())
	}
	return m.Run(cmd.Context())
}

// reopenOnUSR1 reopens lf (nil: none) on every SIGUSR1 until the returned
// function is called, which waits for the goroutine to end.
func reopenOnUSR1(lf *logFile, log hclog.Logger) (stop func()) {
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, unix.SIGUSR1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-usr1:
			}
			if lf == nil {
				log.Debug("no log file to reopen", "signal", "SIGUSR1")
				continue
			}
			if err := lf.reopen(); err != nil {
				log.Warn("log file not reopened", "error", err)
				continue
			}
			log.Info("log file reopened", "path", lf.path)
		}
	}()
	return func() {
		signal.Stop(usr1)
		close(done)
		wg.Wait()
	}
}

// masterSignals are the signals the CLI relays to the master's loop.
func masterSignals() []os.Signal {
	return []os.Signal{
		unix.SIGHUP, unix.SIGTERM, unix.SIGINT, unix.SIGQUIT,
		unix.SIGTTIN, unix.SIGTTOU, unix.SIGUSR2, unix.SIGWINCH,
	}
}

// options turns the flag values into master.Options (without Command,
// Logger, outputs and signals). It checks only what master.New cannot: the
// syntax of values, and an explicit 0 where master.Options reads 0 as "the
// default". master.New validates the rest, and runCluster turns its
// *master.OptionError into a usage error naming the flag.
func (f *runFlags) options(fs *pflag.FlagSet) (master.Options, error) {
	var o master.Options
	var err error
	if fs.Changed("workers") && f.workers.min == 0 {
		return o, usagef("--workers must be at least 1, got 0")
	}
	o.Workers, o.MaxWorkers = f.workers.min, f.workers.max
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"scale-interval", f.scaleInterval}, {"scale-up-after", f.scaleUpAfter},
		{"scale-down-after", f.scaleDownAfter}, {"scale-cooldown", f.scaleCooldown},
	} {
		if d.v <= 0 {
			return o, usagef("--%s must be positive, got %v", d.name, d.v)
		}
	}
	o.ScaleInterval, o.ScaleUpAfter, o.ScaleDownAfter, o.ScaleCooldown = f.scaleInterval, f.scaleUpAfter, f.scaleDownAfter, f.scaleCooldown
	if f.memoryBudget != "" {
		if o.MemoryBudget, err = master.ParseSize(f.memoryBudget); err != nil {
			return o, usagef("--memory-budget: %w", err)
		}
	}
	for _, s := range f.listen {
		if strings.TrimSpace(s) == "" {
			return o, usagef("--listen %q: empty address", s)
		}
		spec, err := sockshare.ParseSpec(s)
		if err != nil {
			return o, usagef("--listen %s: %w", s, err)
		}
		o.Listen = append(o.Listen, spec)
	}
	switch f.gomaxprocs {
	case "auto":
	case "inherit":
		o.WorkerGOMAXPROCS = -1
	default:
		n, err := strconv.Atoi(f.gomaxprocs)
		if err != nil || n < 1 {
			return o, usagef("--gomaxprocs %q: want auto, inherit or a number of at least 1", f.gomaxprocs)
		}
		o.WorkerGOMAXPROCS = n
	}
	if o.Balance, err = master.ParseBalance(f.balance); err != nil {
		return o, usagef("--balance: %w", err)
	}
	if fs.Changed("conn-queue") {
		if f.connQueue == 0 {
			return o, usagef("--conn-queue must be at least 1, got 0")
		}
		o.ConnQueue = f.connQueue // master.New checks the range
	}
	o.ListenOptions.TCPDelay = !f.tcpNoDelay
	if o.Restart, err = master.ParseRestartPolicy(f.restart); err != nil {
		return o, usagef("--restart: %w", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"min-uptime", f.minUptime},
		{"backoff-min", f.backoffMin},
		{"backoff-max", f.backoffMax},
		{"restart-window", f.restartWindow},
		{"kill-timeout", f.killTimeout},
	} {
		if d.v == 0 {
			return o, usagef("--%s must be positive, got 0s", d.name)
		}
	}
	o.MinUptime, o.BackoffMin, o.BackoffMax = f.minUptime, f.backoffMin, f.backoffMax
	o.RestartWindow, o.KillTimeout = f.restartWindow, f.killTimeout
	if f.maxRestarts == 0 {
		return o, usagef("--max-restarts must be at least 1, or negative for no limit")
	}
	o.MaxRestarts = f.maxRestarts
	if o.Ready, err = master.ParseReadyMode(f.ready); err != nil {
		return o, usagef("--ready: %w", err)
	}
	if f.readyTimeout == 0 {
		return o, usagef("--ready-timeout must not be zero (negative: no limit)")
	}
	o.ReadyTimeout = f.readyTimeout
	if f.reloadBatch == 0 {
		return o, usagef("--reload-batch must be at least 1, got 0")
	}
	o.ReloadBatch = f.reloadBatch
	if o.StopSignal, err = parseSignal(f.stopSignal); err != nil {
		return o, usagef("--stop-signal: %w", err)
	}
	o.Env = f.env
	o.Dir = f.cwd
	o.User, o.Group = f.user, f.group
	if o.Output, err = master.ParseOutputMode(f.output); err != nil {
		return o, usagef("--output: %w", err)
	}
	o.PIDFile = f.pidFile
	if f.heartbeatInterval <= 0 {
		return o, usagef("--heartbeat-interval must be positive, got %v", f.heartbeatInterval)
	}
	o.HeartbeatInterval = f.heartbeatInterval
	switch {
	case !fs.Changed("heartbeat-timeout"):
		// 0: master's default, ten intervals of --heartbeat-interval.
	case f.heartbeatTimeout == 0:
		o.HeartbeatTimeout = -1
	case f.heartbeatTimeout < 0:
		return o, usagef("--heartbeat-timeout must not be negative, got %v (0: off)", f.heartbeatTimeout)
	default:
		o.HeartbeatTimeout = f.heartbeatTimeout
	}
	o.Watchdog = f.watchdog
	if f.maxMemory != "" {
		if o.MaxMemory, err = master.ParseSize(f.maxMemory); err != nil {
			return o, usagef("--max-memory: %w", err)
		}
	}
	if f.sampleInterval <= 0 {
		return o, usagef("--sample-interval must be positive, got %v", f.sampleInterval)
	}
	o.SampleInterval = f.sampleInterval
	o.RetireRequests, o.RetireJitter = f.maxRequests, f.maxRequestsJitter
	if f.dumpSignal != "" {
		if o.DumpSignal, err = parseSignal(f.dumpSignal); err != nil {
			return o, usagef("--dump-signal: %w", err)
		}
	}
	return o, nil
}

// optionFlags names the flag of each master.Options field the flags set.
var optionFlags = map[string]string{
	"Workers": "workers", "Listen": "listen", "Balance": "balance", "ConnQueue": "conn-queue", "Restart": "restart",
	"MinUptime": "min-uptime", "BackoffMin": "backoff-min", "BackoffMax": "backoff-max",
	"MaxRestarts": "max-restarts", "RestartWindow": "restart-window", "Ready": "ready",
	"ReadyTimeout": "ready-timeout", "KillTimeout": "kill-timeout", "ReloadBatch": "reload-batch",
	"StopSignal": "stop-signal", "Env": "env", "WorkerGOMAXPROCS": "gomaxprocs", "Dir": "cwd", "User": "user", "Group": "group",
	"Output": "output", "PIDFile": "pid-file",
	"HeartbeatInterval": "heartbeat-interval", "HeartbeatTimeout": "heartbeat-timeout", "Watchdog": "watchdog",
	"MaxMemory": "max-memory", "SampleInterval": "sample-interval",
	"RetireRequests": "max-requests", "RetireJitter": "max-requests-jitter", "DumpSignal": "dump-signal",
	"MaxWorkers": "workers", "ScaleInterval": "scale-interval", "ScaleUpAfter": "scale-up-after",
	"ScaleDownAfter": "scale-down-after", "ScaleCooldown": "scale-cooldown", "MemoryBudget": "memory-budget",
	"ControlSocket": "control",
}

// optionError turns master.New's error for a field into a usage error
// that names the flag; other errors pass unchanged.
func optionError(err error) error {
	var oe *master.OptionError
	if !errors.As(err, &oe) {
		return err
	}
	if name, ok := optionFlags[oe.Field]; ok {
		return usagef("--%s: %w", name, err)
	}
	return &usageError{err}
}

// logger builds the root logger from --log-level and --log-json, writing
// to out.
func (f *runFlags) logger(out io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(f.logLevel)
	if level == hclog.NoLevel {
		return nil, usagef("--log-level %q: want trace, debug, info, warn, error or off", f.logLevel)
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "clusterd",
		Level:      level,
		JSONFormat: f.logJSON,
		Output:     out,
	}), nil
}

// parseSignal parses a signal name with or without "SIG", in any case, or
// its number.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 64 {
			return 0, fmt.Errorf("%d: not a signal number", n)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("%q: unknown signal", s)
	}
	return sig, nil
}
