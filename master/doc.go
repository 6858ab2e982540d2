// Package master is clusterd's supervisor: it binds the listening sockets,
// starts N worker processes that share them, restarts the ones that die,
// replaces them one by one on a rolling reload, and stops them gracefully.
//
// # Processes
//
// The master is one process. [Master.Run] binds every Options.Listen
// address itself (or adopts sockets from systemd socket activation), then
// fills the worker slots 0..N-1. A slot's number is stable across restarts
// (CLUSTERD_WORKER_ID); each incarnation gets the next generation number
// (CLUSTERD_WORKER_GEN) and a state: starting → ready → draining → exited.
//
// Each worker is started through the master's own binary in exec-worker
// mode (Options.ExecWorker, then "--" and the command): the forked child
// sets LISTEN_PID to its own pid, known only after the fork, and execs the
// command under that same pid ([ExecWorker]). The worker gets:
//
//   - stdin from /dev/null; stdout and stderr as pipes relayed line by line
//     with a "[w3 pid 1234] " prefix (OutputPrefix) or the master's own
//     (OutputRaw);
//   - the listeners at fds 3..3+n-1 with LISTEN_FDS and LISTEN_FDNAMES, and
//     EINHORN_FD_COUNT / EINHORN_FD_i for servers written for einhorn;
//   - its end of an IPC socketpair (package ipc) at fd 3+n, named by
//     CLUSTERD_IPC_FD;
//   - only where it is expected to speak sd_notify (ReadyNotify), as
//     systemd sets it only for Type=notify: NOTIFY_SOCKET, a datagram
//     socket of its own, a file (not the abstract "@" form, which some
//     clients reject) in the master's private runtime directory, made in
//     $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/clusterd (not when the
//     workers run as another user), else /run/clusterd as root, else
//     os.TempDir(), and removed when Run returns. The directory is 0700 (0710 with the workers' group under
//     Options.User) and each socket 0600, owned by the workers' uid: only
//     they reach it. A message (READY=1, STOPPING=1, WATCHDOG=1) belongs to
//     the worker whose socket it came in on, whoever sent it; a socket is
//     read at most 128 datagrams a second after a burst of 256, so a
//     flooding worker is logged once per burst and meets a full queue;
//   - its own process group, Pdeathsig SIGKILL, the configured user and
//     group, and no other fd of the master.
//
// Pitfalls the design avoids:
//
//   - A shared socket's O_NONBLOCK flag belongs to the open file
//     description that the master and every worker share. os.File.Fd (and
//     so exec.Cmd.ExtraFiles) switches it to blocking for all of them; the
//     master hands fds to syscall.ForkExec by number instead, taken with
//     SyscallConn().Control.
//   - Pdeathsig fires when the thread that forked the child exits, not the
//     process: every worker is forked by one goroutine locked to its OS
//     thread for the whole of Run. An execve kills every thread but the
//     one that calls it, so a master that can upgrade in place
//     (Options.UpgradeArgs) gives its workers no Pdeathsig: after one
//     upgrade its workers have two parent threads, and no exec keeps both.
//     Options.Contain, which upgrades require, covers a dead master
//     instead (the guardian).
//   - With Options.Subreaper (cmd/clusterd sets it) the master is a child
//     subreaper (PR_SET_CHILD_SUBREAPER) and may be PID 1, so orphaned
//     grandchildren become its children. One reaper goroutine owns every
//     wait4: on SIGCHLD it reaps with WNOHANG and forwards exits of known
//     pids to the loop; orphans are reaped and ignored. Nothing else in the
//     process may wait for children then. The default, for programs that
//     embed the master, waits for the master's workers by pid only and
//     leaves the process's other children (exec.Cmd) alone.
//
// # Nothing outlives the cluster
//
// Pdeathsig reaches only direct children: a worker's own children (a shell
// entrypoint's background job, a helper that called setsid) would survive
// a killed master and keep its ports. With Options.Contain (which
// cmd/clusterd sets) Run, before any worker:
//
//   - makes the cluster's cgroup, clusterd-PID below the master's own
//     cgroup v2 directory, where it can (root, or a delegated subtree) and
//     forks every worker into it (CLONE_INTO_CGROUP, so not even a child
//     forked at once escapes). Processes cannot leave a cgroup without write
//     access to another one. Where none can be made the reason is logged
//     and the rest still holds.
//   - starts the guardian: the program's own binary in [GuardianArg] mode
//     ([Guardian]), in a process group of its own, ignoring stop signals,
//     whose stdin is a pipe the master alone holds (close-on-exec). When the
//     master is gone, however it died, the kernel closes the pipe; on EOF
//     the guardian SIGKILLs the cgroup (cgroup.kill), every worker's process
//     group and every orphan the master reported to it (by pid and start
//     time, so a reused pid is left alone), then removes the cgroup. Why
//     it holds: the EOF depends on no signal, thread or timing of the
//     master, only on the kernel closing a dead process's files, and the
//     guardian is not in the cluster's cgroup or process groups it kills.
//
// Run logs which mechanism is in force, once: Info "containment" with
// mechanism "cgroup and guardian", "guardian and process groups" (and
// cgroup_error), or "process groups" without Contain.
//
// A worker's descendants die with it (orphans_linux.go): when a worker is
// reaped while the cluster runs, its process group gets SIGKILL, and so do
// the cluster's other processes (the cgroup's members; without one the
// master's children and the workers' process groups' members: the sweep's
// enumeration) whose /proc/PID/environ carries its CLUSTERD_WORKER_ID and
// CLUSTERD_WORKER_GEN, inherited by every descendant. SIGKILL at once, as
// for the group: the worker they served is gone. The look runs on a
// goroutine of its own, never on the loop's, and logs Info "killed
// processes left by exited worker" (worker, generation, processes). During
// a stop it is not made: the sweep below ends them with the stop's grace.
// The hole: a descendant that cleared or rewrote its environment and left
// the group lives until the stop's sweep.
//
// Every stop — graceful, immediate, restart intensity exceeded, or all
// workers gone for good — ends with a sweep (stop.go): once the workers are
// reaped, the loop looks for the cluster's other processes (the cgroup's
// members; with Options.Subreaper, the master's children, which are
// orphans of the cluster; members of the workers' process groups), sends them the stop
// signal, and SIGKILLs them when the stop's KillTimeout is over (at once
// for an immediate stop). Run returns only when none is left, so its
// return means the ports are free.
//
// The remaining hole: without a cgroup, a process that left its worker's
// process group while its parent still lives is nobody's child the master
// can see; if the master is killed then, it is reparented to init and
// survives. The guardian is not restarted: if it is killed, the master
// logs an Error, and a master killed after that is unguarded. Under
// systemd, KillMode=control-group (the default) and
// KillMode=mixed cover that too: the unit's cgroup holds the cluster's.
//
// # The loop
//
// One goroutine owns all supervisor state: the worker table, the desired
// count and the reload in progress. Child exits (from the reaper), worker
// messages (IPC and sd_notify readers), signals (Options.Signals), timers,
// ctx and commands reach it on channels; no mutex guards that state.
//
// Commands in: [Master.Reload], [Master.Scale], [Master.Stop],
// [Master.Signal], [Master.Workers] and a worker's run-time listen request
// are values with a reply channel that the loop applies and answers; the
// signal table turns each signal into the same command. Events out:
// [Master.Subscribe] delivers fork, online, ready, disconnect, exit and
// reload events in order, and drops (and counts) what a full subscriber
// buffer cannot take, so no subscriber can stall the loop. Application
// messages do not pass through the loop: [Master.Send] and
// [Master.Request] use the worker's connection directly, and a worker's
// messages and requests reach Options.OnMessage and Options.HandleRequest
// from its session goroutine. The loop keeps one slow timer only: while
// nothing else is due it sleeps until an event or the next listener check,
// every 5 s, so an idle master wakes up once every 5 s.
//
// # Listeners that heal
//
// Every worker holds the same socket, so one worker's shutdown(2) on it
// stops it listening for all of them, and a restarted worker would get the
// same dead socket. The master checks its stream listeners when a worker
// exits and every 5 s (SO_ACCEPTCONN; for unix sockets also POLLRDHUP): a
// TCP socket that stopped listening listens again at once, in place (for a
// port 0 socket, rebound to the port it had first), which restores it for
// every holder; Warn "listener stopped listening; listening again" (addr,
// name, worker and pid of the worker whose exit found it, or the running
// workers). One that cannot (a unix socket, or one a worker connected) is
// replaced by a new socket on the same address and the workers restarted
// onto it with a rolling reload (Warn "listener stopped listening; replaced
// by a new socket"). With BalanceReusePort each slot's socket is checked
// and healed the same way.
//
// A unix socket file the master created is removed on every stop (graceful,
// immediate, restart intensity exceeded, start-up failure), but only while
// the path still holds that socket (same device and inode): a file someone
// put there since is left alone, and so is the file of a socket from socket
// activation, which belongs to whoever activated it.
//
// Around it, Run starts and waits for: the reaper; the spawner (the locked
// thread that forks); one reader per worker notify socket (a goroutine
// parked on a socket costs a few kilobytes, and the runtime already
// multiplexes them over one epoll); one goroutine per worker reading its
// IPC connection; the guardian process with Contain, and a goroutine
// waiting for its exit; one output relay, an epoll loop
// over every worker's stdout and stderr pipe (one goroutine for all
// workers keeps the master small with hundreds of them); and one writer
// per output sink (Options.Stdout, Options.Stderr).
//
// The relay never writes to the user's writers itself. It prefixes the
// lines of each read and appends them, whole, to the sink's bounded buffer
// (256 KiB); the sink's goroutine writes the buffer out in one Write. A
// writer that blocks stalls only its own goroutine: once the buffer is
// full, lines are dropped and counted, the relay keeps reading (no worker
// blocks on its stdout), and the loop and the spawn path never wait for
// it. A writer that fails (EPIPE when the reader of the master's stdout
// went away) is logged once, and what it lost is counted. Dropped output
// is logged ("worker output dropped", with sink, reason, lines and bytes)
// once per burst, on the next successful write, and when Run ends. The
// relay also keeps each worker's last non-blank line, which the
// [*IntensityError] quotes.
//
// # File descriptors
//
// The master owns its listeners (and Options.Activated, once New
// succeeded), the parent end of each worker's IPC socketpair (closed when
// the worker is reaped), the read ends of the output pipes (closed at EOF,
// or, after relaying what they hold, when the worker is reaped: a child
// that left its process group may hold the write end for ever),
// /dev/null for the workers' stdin, each worker's notify socket (closed
// and unlinked when the worker is reaped), the connection to its own
// NOTIFY_SOCKET, and with Contain the cluster's cgroup directory and the
// write end of the guardian's pipe. All are close-on-exec; a
// worker gets copies of exactly the ones meant for it. [ExecWorker] also
// marks close-on-exec any fd the master itself inherited without the flag,
// so nothing else reaches the worker command.
//
// # Lifecycle and signals
//
// The exec-worker step reports the outcome of its execve through a
// close-on-exec pipe (CLUSTERD_EXEC_FD): end-of-file when the command runs,
// the errno when it could not be executed. A failed exec is one Error line
// naming the command and the errno; when no other worker runs the command
// (a binary of the wrong format, one the workers' user may not execute) the
// cluster stops and Run returns that error, with no restart loop.
//
// A worker is ready, by Options.Ready, as soon as its command was executed
// (exec), when it sends READY=1 (notify), when it sends an ipc ready
// message after its hello (ipc), when it has stayed up for a delay, or
// (listening, the CLI's default) when /proc shows it waiting for
// connections on an inherited listener: a thread blocked in accept on it,
// or in poll or select with it in the set, or the listener in one of its
// epoll sets, matched by inode. A probe goroutine per starting worker
// samples /proc (every 2 ms at first, backing off to 50 ms) and posts the
// ready event, so the loop never reads /proc itself; it stops at readiness.
// A worker with no inherited listener, or one not seen waiting within the
// fallback delay, is ready after that delay, with one log line that says
// so. One that is not ready within ReadyTimeout is killed.
//
// A worker that exits unexpectedly is restarted according to
// Options.Restart, in the same slot: at once if it stayed up at least
// MinUptime, otherwise after an exponential backoff with jitter between
// BackoffMin and BackoffMax. More than MaxRestarts restarts within
// RestartWindow stop all workers and Run returns an [*IntensityError].
//
// The signals of Options.Signals:
//
//	HUP        rolling reload: ReloadBatch slots at a time, start the new
//	           worker beside the old one, wait until it is ready, then drain
//	           the old one; a replacement that fails aborts the reload and
//	           the old workers keep serving; a second HUP starts it over
//	TERM, INT  graceful stop: drain every worker, return once all exited;
//	           a second one stops at once, but only 1s or more after the
//	           first (coreutils timeout signals the master, then its process
//	           group: one request that arrives twice)
//	QUIT       immediate stop (SIGKILL), whenever it comes
//	TTIN/TTOU  one worker more / fewer (the highest slot drains)
//	WINCH      stop all workers but keep the master and its sockets (for
//	           maintenance); HUP starts them again
//
// Draining a worker sends Options.StopSignal to its process group (and an
// ipc drain message with the deadline, to workers that said hello), then
// SIGKILL to the group after KillTimeout. When a worker exits its process
// group is killed, so nothing it started keeps its sockets.
//
// With BalanceReusePort each slot owns one SO_REUSEPORT socket per address;
// a replacement inherits its slot's socket, so the accept backlog survives
// restarts and reloads. Only scaling down closes one, and unless
// net.ipv4.tcp_migrate_req is 1 the kernel then resets its queued
// connections: the master logs a warning.
//
// When NOTIFY_SOCKET is set for the master itself it speaks sd_notify to
// its own supervisor: READY=1 once every initial worker is ready (not when
// the master starts), RELOADING=1 with MONOTONIC_USEC= and then READY=1
// around a reload (as Type=notify-reload wants), STOPPING=1 when it stops,
// STATUS= whenever its one-line state changes ("4/4 workers ready",
// "reloading 2/4", "degraded: slot 3 crash-looping", "stopping: 2 workers
// left"), and WATCHDOG=1 at half of WATCHDOG_USEC when the service has a
// watchdog. The pings come from the loop's own timer, so a loop that is
// stuck stops sending them and systemd's watchdog fires.
//
// With NOTIFY_SOCKET set (and FDSTORE, where systemd ≥ 254 sets it, not
// 0), the master hands every listener it bound itself, named or on a fixed
// port, to the service manager's fd store (FDSTORE=1, FDNAME= the Listen
// name). After a crash, kill -9 or restart systemd passes them back in
// LISTEN_FDS, and they are matched to Listen like activated sockets: the
// listening sockets and their accept queues outlive every master. A stored
// listener that stopped listening and was healed is stored again
// (FDSTOREREMOVE=1 of its name, then FDSTORE=1), so the store never hands
// back a dead socket.
//
// # Limits on a worker's IPC
//
// Package ipc bounds what a worker's connection costs in memory (frame size,
// descriptors per frame, queue depth) and in time: a frame that began to
// arrive must end within ipc.DefaultFrameTimeout (10 s), so a worker that
// sends half a frame and stops is an "ipc protocol error" (Warn, worker,
// pid) and is restarted. The master also bounds the CPU a worker can make it
// spend reading: at most [IPCMessageRate] messages and [IPCFDRate]
// descriptors a second, each with a burst of as many again. A worker over a
// limit is paced, not killed: the master reads it at the limit, its queue
// fills, and the socket pushes back on the worker's sends. The first message
// over a limit logs Warn "ipc flood: reading the worker's messages at the
// limit" (worker, pid, what: messages or descriptors), once per burst: the
// next line comes only after the worker stayed within its limits for long
// enough to refill them.
//
// # The control socket
//
// With Options.ControlSocket, Run serves a unix socket for operators
// (`clusterd status`, `reload`, `scale`, `stop`, `signal`, `logs`): one
// goroutine per connection, each a thin adapter over the command methods,
// the events and the log ring; none touches supervisor state. The wire is
// package ipc's framing: hellos, one [ControlRequest], streamed
// [ControlProgress] messages, one answer (bodies in control.go). The
// socket has mode 0600 (its directory 0700 when Run makes it, 0711 for
// /run/clusterd, which notify directories share); each
// client's uid is checked with SO_PEERCRED, root and the master's own uid
// are answered, anyone else gets an ipc.CodeForbidden error and a log line
// with its pid and uid. A live socket at the path is an error (another
// master serves it), a stale one is replaced, and Run removes it when it
// returns — after the loop ended, so that a stop request is answered once
// every worker is reaped. The log ring keeps the last [DefaultLogLines]
// lines of each slot's relayed output; the relay records into it under a
// short mutex and never waits for a client that follows.
//
// # Logging
//
// The log (Options.Logger, named "master", with sub-loggers "reload" and
// "notify") has lines other programs may rely on: Info "listening" (addr,
// name), Warn "no listen address: workers get no sockets from clusterd", Info "worker ready" (worker, pid, generation), Info "all workers
// ready", "worker exited" (worker, pid, generation, exit_code or signal,
// uptime; Warn when unexpected, Info when the master stopped it), Info
// "reload started" / "reload done", Error "reload aborted", Error "restart
// intensity exceeded", Info "stopped". Under systemd: Warn "activated
// socket matches no listen address: serving it as well" and "activated
// socket with no listen address given: serving it" (name, addr), Info
// "listeners kept by the service manager" (stored).
package master
