package master

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// The in-place upgrade on Linux: see upgrade.go.

const (
	// upgradeCheckTimeout bounds the new binary's check run.
	upgradeCheckTimeout = 10 * time.Second
	// upgradePauseTimeout bounds the wait for every worker's Paused hello.
	upgradePauseTimeout = 2 * time.Second
	// upgradeFlushTimeout bounds the wait for what the master queued to a
	// worker before the exec.
	upgradeFlushTimeout = time.Second
	// upgradeOutputFlush bounds the wait for relayed output to be written
	// before the exec.
	upgradeOutputFlush = 200 * time.Millisecond
	// upgradeSettleTimeout bounds the wait, in the balanced modes, for the
	// workers to take every connection the master accepted.
	upgradeSettleTimeout = 2 * time.Second
)

// upgrader is what an upgrade needs besides the loop: the resources that
// cross the exec and the starter whose locked thread execs.
type upgrader struct {
	cfg     *config
	log     hclog.Logger
	ls      *listeners
	cs      *clusterSockets
	cont    *containment
	nd      *notifyDir
	st      *execStarter
	balance *balancer      // balanced modes; nil otherwise
	ctl     *controlServer // nil: no control socket
	cmds    chan<- command
	done    <-chan struct{}
	// started is the master's first start (kept across upgrades), and
	// upgrades how many this master has been through.
	started  time.Time
	upgrades int
}

// upgradeStep carries the outcome of an upgrade's preparation (check,
// pause) back to the loop.
type upgradeStep struct {
	c      *upgradeCmd
	st     *upgradeState
	paused []*execProcess
	err    error
}

func (c *upgradeCmd) apply(l *loop) {
	u := l.upgrader
	switch {
	case u == nil || len(l.cfg.UpgradeArgs) == 0:
		c.answer(l, ErrUpgradeUnsupported)
		return
	case l.upgrading != nil:
		c.answer(l, ErrUpgradeInProgress)
		return
	}
	if err := l.steady(); err != nil {
		c.answer(l, err)
		return
	}
	st, procs, err := u.snapshot(l)
	if err != nil {
		c.answer(l, &UpgradeError{Step: "state", Err: err})
		return
	}
	l.upgrading = c
	l.log.Info("upgrade: checking the new binary", "path", l.cfg.UpgradeArgs[0])
	if l.sdStatus != nil {
		l.sdStatus("upgrading: checking the new binary")
	}
	go u.prepare(c, st, procs)
}

// answer ends an upgrade that did not exec (a signal's has no reply).
func (c *upgradeCmd) answer(l *loop, err error) {
	if l.upgrading == c {
		l.upgrading = nil
	}
	if c.reply == nil {
		l.log.Error("upgrade failed: the old binary keeps running", "error", err)
	} else {
		l.log.Warn("upgrade failed: the old binary keeps running", "error", err)
		c.reply <- err
	}
}

// steady says why an upgrade cannot start now, if it cannot: every slot
// has one ready worker, and nothing is starting, draining or stopping.
func (l *loop) steady() error {
	switch {
	case l.stopping:
		return fmt.Errorf("%w: stopping", ErrUpgradeNotSteady)
	case l.reload != nil:
		return fmt.Errorf("%w: a reload is running", ErrUpgradeNotSteady)
	case l.paused:
		return fmt.Errorf("%w: workers stopped by WINCH", ErrUpgradeNotSteady)
	}
	for _, s := range l.slots {
		switch {
		case s.cur == nil:
			return fmt.Errorf("%w: slot %d has no worker (restarting)", ErrUpgradeNotSteady, s.id)
		case s.cur.state != stateReady:
			return fmt.Errorf("%w: slot %d is %s", ErrUpgradeNotSteady, s.id, s.cur.state)
		case s.next != nil:
			return fmt.Errorf("%w: slot %d is being replaced", ErrUpgradeNotSteady, s.id)
		}
	}
	if len(l.byPID) != len(l.slots) {
		return fmt.Errorf("%w: %d workers are still draining", ErrUpgradeNotSteady, len(l.byPID)-len(l.slots))
	}
	return nil
}

func (s *upgradeStep) apply(l *loop) {
	if l.upgrading != s.c {
		return // the loop gave it up (it is stopping)
	}
	u := l.upgrader
	if s.err != nil {
		u.resume(s.paused)
		s.c.answer(l, s.err)
		return
	}
	if l.balance != nil && !l.balance.settled() {
		// A worker given connections since the pause cannot say it took
		// them: never carry the master's copies across the exec.
		u.resume(s.paused)
		s.c.answer(l, &UpgradeError{Step: "pause", Err: errors.New("connections were handed out during the pause")})
		return
	}
	// The cluster may have changed while the check ran: a worker exited,
	// a stop began. Its state must be the one the exec carries.
	if err := l.steady(); err != nil {
		u.resume(s.paused)
		s.c.answer(l, err)
		return
	}
	st, procs, err := u.snapshot(l)
	if err == nil && !sameWorkers(st, s.st) {
		err = fmt.Errorf("%w: the workers changed during the check", ErrUpgradeNotSteady)
	}
	if err != nil {
		u.resume(s.paused)
		s.c.answer(l, err)
		return
	}
	l.log.Info("upgrade: exec", "path", l.cfg.UpgradeArgs[0], "workers", len(procs), "upgrades", st.Upgrades)
	err = u.exec(st, procs)
	// Only a failed exec returns.
	u.resume(s.paused)
	s.c.answer(l, err)
}

// sameWorkers reports whether a and b have the same workers in the same
// slots.
func sameWorkers(a, b *upgradeState) bool {
	if len(a.Slots) != len(b.Slots) {
		return false
	}
	for i := range a.Slots {
		wa, wb := a.Slots[i].Worker, b.Slots[i].Worker
		if (wa == nil) != (wb == nil) || (wa != nil && (wa.PID != wb.PID || wa.Gen != wb.Gen)) {
			return false
		}
	}
	return true
}

// snapshot records what crosses the exec. On the loop's goroutine.
func (u *upgrader) snapshot(l *loop) (*upgradeState, []*execProcess, error) {
	st := &upgradeState{
		Protocol: upgradeProtocol,
		Version:  u.cfg.Version,
		Started:  u.started.UnixNano(),
		Upgrades: u.upgrades + 1,
		Gens:     maps.Clone(l.gens),
		Created:  u.cs.created,
	}
	var ferr error
	fd := func(f *os.File) int {
		if f == nil {
			return -1
		}
		n, err := rawFD(f)
		if err != nil {
			ferr = err
			return -1
		}
		if !slices.Contains(st.FDs, n) {
			st.FDs = append(st.FDs, n)
		}
		return n
	}
	raw := func(n int) int {
		if n >= 0 && !slices.Contains(st.FDs, n) {
			st.FDs = append(st.FDs, n)
		}
		return n
	}
	ls := u.ls
	ul := upgradeListeners{
		Specs: ls.specs, Names: ls.names, PerTCP: ls.perTCP, Adopted: ls.adopted, Watched: ls.watched,
		Slots: make(map[int][]int),
	}
	for _, f := range ls.shared {
		ul.Shared = append(ul.Shared, fd(f))
	}
	for slot, fs := range ls.slots {
		for _, f := range fs {
			ul.Slots[slot] = append(ul.Slots[slot], fd(f))
		}
	}
	for _, sf := range ls.files {
		ul.Files = append(ul.Files, upgradeSocketFile{Path: sf.path, Dev: sf.dev, Ino: sf.ino})
	}
	st.Listeners = ul
	for key, rl := range u.cs.byKey {
		ur := upgradeRuntime{Key: key, Spec: rl.spec, Shared: fd(rl.shared), Slots: make(map[int]int)}
		for slot, f := range rl.slots {
			ur.Slots[slot] = fd(f)
		}
		st.Runtime = append(st.Runtime, ur)
	}
	slices.SortFunc(st.Runtime, func(a, b upgradeRuntime) int { return strings.Compare(a.Key, b.Key) })
	if c := u.cont; c != nil {
		if c.cg != nil {
			st.Cgroup = c.cg.dir
		}
		for g := range c.groups {
			st.Groups = append(st.Groups, g)
		}
		slices.Sort(st.Groups)
		if g := c.g; g != nil {
			g.mu.Lock()
			st.Guardian = upgradeGuardian{PID: g.pid, FD: raw(g.w), Procs: maps.Clone(g.procs)}
			g.mu.Unlock()
			if st.Guardian.FD < 0 {
				return nil, nil, errors.New("the guardian's pipe is closed")
			}
		}
	}
	if u.nd != nil {
		st.NotifyDir = u.nd.path
	}
	if u.ctl != nil {
		// Clients that connect during the exec wait in its queue.
		n, err := rawFD(u.ctl.ln)
		if err != nil {
			return nil, nil, fmt.Errorf("control socket: %w", err)
		}
		st.Control, st.ControlPath = raw(n), u.ctl.path
	}
	if b := l.balance; b != nil {
		for f, id := range b.ids {
			st.Balanced = append(st.Balanced, upgradeBalanced{FD: fd(f), ID: id})
		}
		slices.SortFunc(st.Balanced, func(a, b upgradeBalanced) int { return int(a.ID) - int(b.ID) })
	}
	var procs []*execProcess
	for _, s := range l.slots {
		us := upgradeSlot{ID: s.id, Restarts: s.restarts, Hangs: s.hangs, LastExit: s.lastExit, LastCause: s.lastCause, LastGen: s.lastGen}
		if w := s.cur; w != nil {
			p, ok := w.proc.(*execProcess)
			if !ok {
				return nil, nil, fmt.Errorf("worker %d is not a process this master can hand over", s.id)
			}
			uw := &upgradeWorker{
				PID: w.pid, Gen: w.gen, Started: w.started.UnixNano(), ReadySince: w.readySince.UnixNano(),
				Online: w.online, IPC: -1, Stdout: raw(p.outR), Stderr: raw(p.errR), Notify: -1,
				RetireAfter: w.retireAfter,
			}
			if t := w.target; t != nil {
				c := t.upgradeCounts()
				uw.Listens, uw.Handed, uw.Closed, uw.Acked = c.listens, c.handed, c.closed, c.acked
			}
			if p.conn != nil {
				n, err := p.conn.FD()
				if err != nil {
					return nil, nil, fmt.Errorf("worker %d: %w", s.id, err)
				}
				uw.IPC = raw(n)
			}
			if p.notify != nil {
				n, err := rawFD(p.notify.conn)
				if err != nil {
					return nil, nil, fmt.Errorf("worker %d notify socket: %w", s.id, err)
				}
				uw.Notify, uw.NotifyPath = raw(n), p.notify.path
			}
			us.Worker = uw
			procs = append(procs, p)
		}
		st.Slots = append(st.Slots, us)
	}
	if ferr != nil {
		return nil, nil, ferr
	}
	if err := st.validate(); err != nil {
		return nil, nil, err
	}
	return st, procs, nil
}

// prepare checks the new binary with st, then pauses the workers that
// speak IPC, off the loop, and hands the outcome back to it.
func (u *upgrader) prepare(c *upgradeCmd, st *upgradeState, procs []*execProcess) {
	step := &upgradeStep{c: c, st: st}
	step.err = u.check(st)
	if step.err == nil && u.balance != nil {
		u.balance.pauseAccepting()
		step.err = u.settle()
	}
	if step.err == nil {
		step.paused, step.err = u.pause(procs)
	}
	select {
	case u.cmds <- step:
	case <-u.done:
		u.resume(step.paused)
	}
}

// check runs the new binary in upgrade-check mode with st on its stdin.
func (u *upgrader) check(st *upgradeState) error {
	path := u.cfg.UpgradeArgs[0]
	fi, err := os.Stat(path)
	if err != nil {
		return &UpgradeError{Step: "binary", Err: err}
	}
	if !fi.Mode().IsRegular() {
		return &UpgradeError{Step: "binary", Err: fmt.Errorf("%s is not a regular file", path)}
	}
	if err := unix.Access(path, unix.X_OK); err != nil {
		return &UpgradeError{Step: "binary", Err: fmt.Errorf("%s: not executable: %w", path, err)}
	}
	b, err := msgpack.Marshal(st)
	if err != nil {
		return &UpgradeError{Step: "state", Err: err}
	}
	in, err := memfdWith("clusterd-upgrade-check", b)
	if err != nil {
		return &UpgradeError{Step: "check", Err: err}
	}
	defer unix.Close(in)
	outR, outW, err := pipe()
	if err != nil {
		return &UpgradeError{Step: "check", Err: err}
	}
	attr := &syscall.ProcAttr{
		Env:   upgradeEnv(u.cfg, -1),
		Files: []uintptr{uintptr(in), uintptr(outW), uintptr(outW)},
		Sys:   &syscall.SysProcAttr{Setpgid: true}, // killed at its timeout
	}
	argv := []string{path, UpgradeCheckArg}
	pid, exit, err := u.st.reaper.startOwned(func() (int, error) { return syscall.ForkExec(path, argv, attr) })
	unix.Close(outW)
	if err != nil {
		unix.Close(outR)
		return &UpgradeError{Step: "check", Err: fmt.Errorf("fork/exec %s: %w", path, err)}
	}
	// Non-blocking, so that the poller serves it and Close ends a read that
	// a descendant of the check holding the pipe would keep waiting. The
	// file owns the descriptor from here: it alone closes it.
	_ = unix.SetNonblock(outR, true)
	outF := os.NewFile(uintptr(outR), "check-output")
	defer outF.Close()
	out := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		_, _ = io.Copy(&buf, io.LimitReader(outF, 64<<10))
		out <- buf.Bytes()
	}()
	var status exitStatus
	select {
	case status = <-exit:
	case <-time.After(upgradeCheckTimeout):
		_ = unix.Kill(pid, unix.SIGKILL)
		<-exit
		return &UpgradeError{Step: "check", Err: fmt.Errorf("%s %s did not finish within %v", path, UpgradeCheckArg, upgradeCheckTimeout)}
	}
	var got []byte
	select {
	case got = <-out:
	case <-time.After(time.Second):
		// The check exited, but something it started holds its output.
		outF.Close()
		got = <-out
	}
	text := strings.TrimSpace(string(got))
	if status.signal != 0 || status.code != 0 {
		if i := strings.LastIndexByte(text, '\n'); i >= 0 {
			text = text[i+1:]
		}
		if text == "" {
			text = "no output"
		}
		return &UpgradeError{Step: "check", Err: fmt.Errorf("%s %s: %s (%s)", path, UpgradeCheckArg, status, text)}
	}
	if want := upgradeCheckLine(b); !strings.Contains(text, want) {
		if len(text) > 200 {
			text = text[:200] + "..."
		}
		return &UpgradeError{Step: "check", Err: fmt.Errorf(
			"%s %s printed %q, not the check line for this state: is it a clusterd that calls master.DispatchExecWorker first thing in main?",
			path, UpgradeCheckArg, text)}
	}
	return nil
}

// settle waits, in the balanced modes with accepting paused, until the
// workers have taken every connection the master accepted.
func (u *upgrader) settle() error {
	deadline := time.Now().Add(upgradeSettleTimeout)
	for !u.balance.settled() {
		if time.Now().After(deadline) {
			return &UpgradeError{Step: "pause", Err: fmt.Errorf(
				"the workers did not take the connections handed to them within %v", upgradeSettleTimeout)}
		}
		time.Sleep(time.Millisecond) // acknowledgements come within a heartbeat at worst
	}
	return nil
}

// pause asks every worker that said hello to hold its sends, and waits for
// their answers. It returns the workers it asked (to resume on failure).
func (u *upgrader) pause(procs []*execProcess) ([]*execProcess, error) {
	hello := u.st.masterHello()
	hello.Pause = true
	m, err := ipc.NewMessage(ipc.KindHello, &hello)
	if err != nil {
		return nil, &UpgradeError{Step: "pause", Err: err}
	}
	var asked []*execProcess
	for _, p := range procs {
		if p.conn == nil || !p.said.Load() {
			continue // it never spoke: nothing of it is in flight
		}
		select {
		case <-p.pausedAck: // left over from an upgrade that gave up
		default:
		}
		if err := p.conn.Send(m); err != nil {
			return asked, &UpgradeError{Step: "pause", Err: fmt.Errorf("worker pid %d: %w", p.pid, err)}
		}
		asked = append(asked, p)
	}
	deadline := time.NewTimer(upgradePauseTimeout)
	defer deadline.Stop()
	for _, p := range asked {
		select {
		case <-p.pausedAck:
		case <-p.done:
			return asked, &UpgradeError{Step: "pause", Err: fmt.Errorf("worker pid %d exited", p.pid)}
		case <-deadline.C:
			return asked, &UpgradeError{Step: "pause", Err: fmt.Errorf(
				"worker pid %d did not pause within %v (a worker library without in-place upgrades?)", p.pid, upgradePauseTimeout)}
		}
	}
	return asked, nil
}

// resume ends the pause of workers after a failed upgrade: the master's
// hello, with the same Boot, releases what they held.
func (u *upgrader) resume(procs []*execProcess) {
	if u.balance != nil {
		u.balance.resumeAccepting()
	}
	if len(procs) == 0 {
		return
	}
	hello := u.st.masterHello()
	m, err := ipc.NewMessage(ipc.KindHello, &hello)
	if err != nil {
		return
	}
	for _, p := range procs {
		_ = p.conn.Resume(nil, false)
		_ = p.conn.Send(m) // a failed send: the worker is gone
	}
}

// exec hands st and its descriptors to the new image. It returns only
// when the exec failed, with everything as it was.
func (u *upgrader) exec(st *upgradeState, procs []*execProcess) error {
	// Nothing more goes to the workers from this image: what is queued is
	// written, then the streams end at a frame boundary.
	ctx, cancel := context.WithTimeout(context.Background(), upgradeFlushTimeout)
	defer cancel()
	var held []*execProcess
	undo := func() {
		for _, p := range held {
			_ = p.conn.Resume(nil, false)
		}
	}
	for _, p := range procs {
		if p.conn == nil {
			continue
		}
		if err := p.conn.Hold(nil); err != nil {
			undo()
			return &UpgradeError{Step: "state", Err: fmt.Errorf("worker pid %d: %w", p.pid, err)}
		}
		held = append(held, p)
	}
	for _, p := range held {
		if err := p.conn.Flush(ctx); err != nil {
			undo()
			return &UpgradeError{Step: "state", Err: fmt.Errorf("worker pid %d: %w", p.pid, err)}
		}
	}
	b, err := msgpack.Marshal(st)
	if err != nil {
		undo()
		return &UpgradeError{Step: "state", Err: err}
	}
	mfd, err := memfdWith("clusterd-upgrade", b)
	if err != nil {
		undo()
		return &UpgradeError{Step: "state", Err: err}
	}
	fds := append(slices.Clone(st.FDs), mfd)
	setCloexec := func(on bool) error {
		flag := 0
		if on {
			flag = unix.FD_CLOEXEC
		}
		for _, fd := range fds {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flag); err != nil {
				return fmt.Errorf("descriptor %d: %w", fd, os.NewSyscallError("fcntl", err))
			}
		}
		return nil
	}
	if err := setCloexec(false); err != nil {
		_ = setCloexec(true)
		unix.Close(mfd)
		undo()
		return &UpgradeError{Step: "exec", Err: err}
	}
	// What the workers printed and the master logged up to here: the exec
	// would drop what is still queued.
	u.st.out.flush(time.Now().Add(upgradeOutputFlush))
	if u.cfg.BeforeExec != nil {
		u.cfg.BeforeExec()
	}
	argv := slices.Clone(u.cfg.UpgradeArgs)
	err = u.st.execImage(argv[0], argv, upgradeEnv(u.cfg, mfd))
	_ = setCloexec(true)
	unix.Close(mfd)
	undo()
	return &UpgradeError{Step: "exec", Err: fmt.Errorf("%s: %w", argv[0], err)}
}

// upgradeEnv is the new image's environment: Options.UpgradeEnv (or the
// master's own) without the variables of socket activation (the sockets
// are in the state) and with the state's descriptor (mfd < 0: none).
func upgradeEnv(cfg *config, mfd int) []string {
	base := cfg.UpgradeEnv
	if base == nil {
		base = os.Environ()
	}
	var env []string
	for _, kv := range base {
		if strings.HasPrefix(kv, "LISTEN_FDS=") || strings.HasPrefix(kv, "LISTEN_PID=") ||
			strings.HasPrefix(kv, "LISTEN_FDNAMES=") || strings.HasPrefix(kv, envUpgradeFD+"=") {
			continue
		}
		env = append(env, kv)
	}
	if mfd >= 0 {
		env = append(env, envUpgradeFD+"="+strconv.Itoa(mfd))
	}
	return env
}

// memfdWith returns a memfd (not close-on-exec) holding b, at offset 0.
func memfdWith(name string, b []byte) (int, error) {
	fd, err := unix.MemfdCreate(name, 0)
	if err != nil {
		return -1, os.NewSyscallError("memfd_create", err)
	}
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("pwrite", err)
		}
		off += n
	}
	return fd, nil
}

// takeUpgradeState reads the state an upgrade left for this image, if
// any, removes its variable, and makes its descriptors close-on-exec
// again. It returns nil when this image was not started by an upgrade.
func takeUpgradeState() (*upgradeState, error) {
	v, ok := os.LookupEnv(envUpgradeFD)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(envUpgradeFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", envUpgradeFD, v)
	}
	f := os.NewFile(uintptr(fd), "clusterd-upgrade")
	b, err := io.ReadAll(io.LimitReader(f, maxUpgradeState+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("read upgrade state: %w", err)
	}
	st, err := decodeUpgradeState(b)
	if err != nil {
		return nil, err
	}
	for _, fd := range st.FDs {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return nil, fmt.Errorf("upgrade descriptor %d: %w", fd, os.NewSyscallError("fcntl", err))
		}
	}
	return st, nil
}

// upgradeFiles wraps the state's descriptors as files, one per number.
type upgradeFiles map[int]*os.File

func (fs upgradeFiles) file(fd int, name string) *os.File {
	if fd < 0 {
		return nil
	}
	if f := fs[fd]; f != nil {
		return f
	}
	f := os.NewFile(uintptr(fd), name)
	fs[fd] = f
	return f
}

// fromUpgrade takes the listeners from an upgrade's state instead of binding.
func (ls *listeners) fromUpgrade(u upgradeListeners, files upgradeFiles) error {
	ls.specs, ls.names, ls.perTCP, ls.adopted, ls.watched = u.Specs, u.Names, u.PerTCP, u.Adopted, u.Watched
	for i, fd := range u.Shared {
		ls.shared = append(ls.shared, files.file(fd, ls.names[i]))
	}
	for slot, fds := range u.Slots {
		for i, fd := range fds {
			ls.slots[slot] = append(ls.slots[slot], files.file(fd, ls.names[i]))
		}
	}
	for _, sf := range u.Files {
		ls.files = append(ls.files, socketFile{path: sf.Path, dev: sf.Dev, ino: sf.Ino})
	}
	return ls.bound(false, "from", "upgrade")
}

// restore takes the run-time listeners from an upgrade's state.
func (cs *clusterSockets) restore(st *upgradeState, files upgradeFiles) {
	cs.created = st.Created
	byFD := make(map[int]*runtimeListener)
	for _, ur := range st.Runtime {
		first := ur.Shared
		for _, fd := range ur.Slots {
			if first < 0 || fd < first {
				first = fd
			}
		}
		if rl := byFD[first]; rl != nil && first >= 0 {
			cs.byKey[ur.Key] = rl // another key of the same listener
			continue
		}
		rl := &runtimeListener{spec: ur.Spec, shared: files.file(ur.Shared, ur.Spec.String())}
		if len(ur.Slots) > 0 {
			rl.slots = make(map[int]*os.File)
			for slot, fd := range ur.Slots {
				rl.slots[slot] = files.file(fd, ur.Spec.String())
			}
		}
		byFD[first] = rl
		cs.byKey[ur.Key] = rl
	}
}

// restore starts the balanced modes' accepters on the listeners of an
// upgrade's state, with their ids, and keeps the workers' totals for
// their targets.
func (b *balancer) restore(st *upgradeState, files upgradeFiles) error {
	b.carried = make(map[int]targetCounts)
	for _, sl := range st.Slots {
		if w := sl.Worker; w != nil {
			b.carried[w.PID] = targetCounts{listens: w.Listens, handed: w.Handed, closed: w.Closed, acked: w.Acked}
		}
	}
	for _, ub := range st.Balanced {
		f := files.file(ub.FD, "balanced")
		addr := f.Name()
		if a, err := sockshare.Addr(f); err == nil {
			addr = a.String()
		}
		a, err := b.startAccepter(f, ub.ID, addr)
		if err != nil {
			return err
		}
		b.ids[f] = ub.ID
		b.acc = append(b.acc, a)
	}
	return nil
}

// restoreContainment takes the cluster's cgroup, guardian and process
// groups from an upgrade's state.
func restoreContainment(cfg *config, r *reaper, st *upgradeState, log hclog.Logger) (*containment, error) {
	c := &containment{subreaper: r.all, groups: make(map[int]bool), log: log}
	for _, g := range st.Groups {
		c.groups[g] = true
	}
	if !cfg.Contain {
		return c, nil
	}
	if st.Cgroup != "" {
		fd, err := unix.Open(st.Cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			log.Warn("cgroup of the cluster not reopened", "cgroup", st.Cgroup, "error", err)
		} else {
			c.cg, c.intoCG = &cgroup{dir: st.Cgroup, fd: fd}, true
		}
	}
	if ug := st.Guardian; ug.PID != 0 {
		g, err := adoptGuardian(ug, r, log.Named("guardian"))
		if err != nil {
			log.Warn("guardian not taken over: starting a new one", "pid", ug.PID, "error", err)
			unix.Close(ug.FD)
		} else {
			c.g = g
		}
	}
	if c.g == nil {
		g, err := startGuardian(cfg.guardian, c.cg, r, log.Named("guardian"))
		if err != nil {
			c.close()
			return nil, err
		}
		for pgid := range c.groups {
			g.group(pgid)
		}
		c.g = g
	}
	if c.cg == nil {
		r.notifyReaped(c.g.reaped)
	}
	log.Info("containment", "mechanism", "taken over from the previous image", "cgroup", st.Cgroup, "guardian", c.g.pid)
	return c, nil
}

// adoptGuardian takes the running guardian of the previous image.
func adoptGuardian(ug upgradeGuardian, r *reaper, log hclog.Logger) (*guardian, error) {
	exit, err := r.adoptOwned(ug.PID)
	if err != nil {
		return nil, err
	}
	g := &guardian{pid: ug.PID, log: log, exited: make(chan struct{}), w: ug.FD, procs: ug.Procs}
	if g.procs == nil {
		g.procs = make(map[int]uint64)
	}
	g.wg.Add(1)
	go g.watch(exit)
	return g, nil
}

// adoptOwned has the reaper deliver the exit of pid, a child of this
// process started by a previous image, to the returned channel. It fails
// when pid is not a child (any more).
func (r *reaper) adoptOwned(pid int) (<-chan exitStatus, error) {
	if err := childAlive(pid); err != nil {
		return nil, err
	}
	r.mu.Lock()
	ch := r.ownLocked(pid)
	r.mu.Unlock()
	r.kick()
	return ch, nil
}

// childAlive fails when pid is not a child of this process that the
// kernel still holds (running, or exited and not reaped).
func childAlive(pid int) error {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, os.NewSyscallError("waitid", err))
	}
	return nil
}

// adopt takes a worker of the previous image: its pid (still a child),
// its output pipes, notify socket and IPC connection, whose session starts
// again with the master's hello.
func (st *execStarter) adopt(slot int, uw *upgradeWorker, files upgradeFiles) (process, error) {
	closeAll := func() {
		for _, fd := range []int{uw.Stdout, uw.Stderr} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		for _, fd := range []int{uw.IPC, uw.Notify} {
			if f := files.file(fd, "worker"); f != nil {
				f.Close()
			}
		}
	}
	if err := childAlive(uw.PID); err != nil {
		closeAll()
		return nil, err
	}
	pid := uw.PID
	st.reaper.watch(pid)
	p := st.newProcess(pid)
	st.relayOutput(p, slot, uw.Stdout, uw.Stderr)
	wlog := st.log.With("worker", slot, "pid", pid, "generation", uw.Gen)
	if f := files.file(uw.Notify, uw.NotifyPath); f != nil {
		c, err := net.FileConn(f)
		f.Close()
		if uc, ok := c.(*net.UnixConn); err == nil && ok {
			p.notify = &notifySocket{conn: uc, path: uw.NotifyPath}
		} else {
			if c != nil {
				c.Close()
			}
			wlog.Warn("worker notify socket not taken over", "error", err)
		}
	}
	st.serveNotify(p, wlog)
	if f := files.file(uw.IPC, "clusterd-ipc"); f != nil {
		st.openIPC(p, f, spawnRequest{slot: slot, gen: uw.Gen})
	}
	return p, nil
}

// execImage execs path on the spawner's thread, where every worker is
// forked: no fork can run meanwhile and inherit the descriptors whose
// close-on-exec flag the upgrade cleared. It returns only on failure.
func (st *execStarter) execImage(path string, argv, env []string) error {
	reply := make(chan spawnResult, 1)
	st.jobs <- spawnJob{argv: argv, exec: func() error { return syscall.Exec(path, argv, env) }, reply: reply}
	return (<-reply).err
}

// adoptSlots makes the loop's slots and workers from an upgrade's state,
// in place of starting the first workers.
func (l *loop) adoptSlots(st *upgradeState, files upgradeFiles) {
	now := time.Now()
	l.gens = maps.Clone(st.Gens)
	for _, us := range st.Slots {
		s := l.newSlot(us.ID)
		s.restarts, s.hangs, s.lastExit, s.lastCause, s.lastGen = us.Restarts, us.Hangs, us.LastExit, us.LastCause, us.LastGen
		uw := us.Worker
		if uw == nil {
			s.restartAt = now
			continue
		}
		p, err := l.upgrader.st.adopt(us.ID, uw, files)
		if err != nil {
			l.log.Warn("worker not taken over from the previous image: starting a new one", "worker", us.ID, "pid", uw.PID, "error", err)
			s.restartAt = now
			continue
		}
		w := &worker{
			slot: s, gen: uw.Gen, pid: uw.PID, proc: p, state: stateReady,
			started: time.Unix(0, uw.Started), readySince: time.Unix(0, uw.ReadySince),
			heartbeat: now, exec: execRan, retireAfter: uw.RetireAfter,
			log: l.log.With("worker", us.ID, "pid", uw.PID, "generation", uw.Gen),
		}
		l.byPID[w.pid] = w
		s.cur = w
		l.rerouted = true
		w.log.Info("worker taken over from the previous image")
	}
	l.log.Info("upgraded in place", "pid", os.Getpid(), "version", l.cfg.Version, "from_version", st.Version,
		"workers", len(l.byPID), "upgrades", st.Upgrades)
	l.checkAllReady()
}
