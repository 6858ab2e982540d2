package master

import (
	"fmt"
	"syscall"
	"time"
)

// exitStatus is how a worker ended, in portable form.
type exitStatus struct {
	code   int            // exit code when signal == 0
	signal syscall.Signal // terminating signal, 0 when it exited normally
}

// failed reports whether the exit counts as a failure for RestartOnFailure.
func (s exitStatus) failed() bool { return s.signal != 0 || s.code != 0 }

func (s exitStatus) String() string {
	if s.signal != 0 {
		return "killed by signal " + signalName(s.signal)
	}
	return fmt.Sprintf("exited with code %d", s.code)
}

// signalName gives the conventional name of a signal ("SIGTERM").
func signalName(sig syscall.Signal) string {
	if n, ok := signalNames[sig]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(sig))
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
}

// shouldRestart applies the restart policy to an unexpected exit.
func shouldRestart(p RestartPolicy, s exitStatus) bool {
	switch p {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return s.failed()
	}
	return false
}

// backoff computes restart delays of one slot: exponential from min to max,
// with jitter, reset by a worker that stayed up long enough.
type backoff struct {
	min, max time.Duration
	attempt  int // consecutive short-lived exits
}

// next returns the delay before the next start after a worker ran for
// uptime. A worker that stayed up at least minUptime resets the backoff and
// is replaced at once. jitter returns a value in [0, 1).
func (b *backoff) next(uptime, minUptime time.Duration, jitter func() float64) time.Duration {
	if uptime >= minUptime {
		b.attempt = 0
		return 0
	}
	b.attempt++
	d := b.min
	for i := 1; i < b.attempt && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	// Jitter spreads slots that crashed together: a delay in [d/2, d),
	// never below min.
	d = d/2 + time.Duration(jitter()*float64(d/2))
	return max(d, b.min)
}

// intensity is the restart intensity limit: at most max restarts within window.
type intensity struct {
	max    int // negative: unlimited
	window time.Duration
	times  []time.Time
}

// allow records a restart at now and reports whether it stays within the
// limit, with the number of restarts counted in the window.
func (l *intensity) allow(now time.Time) (ok bool, count int) {
	cut := now.Add(-l.window)
	i := 0
	for i < len(l.times) && !l.times[i].After(cut) {
		i++
	}
	l.times = append(l.times[:0], l.times[i:]...)
	l.times = append(l.times, now)
	if l.max < 0 {
		return true, len(l.times)
	}
	return len(l.times) <= l.max, len(l.times)
}

// IntensityError is returned by [Master.Run] when more than
// Options.MaxRestarts restarts happened within Options.RestartWindow.
type IntensityError struct {
	Restarts int           // restarts counted within the window
	Window   time.Duration // Options.RestartWindow
	Last     string        // the exit that triggered it, e.g. "worker 1 exited with code 1"
	// Output is the last non-blank line that worker wrote to its stdout
	// or stderr (at most 512 bytes, "..." when cut), often the reason it
	// exits ("bind: address already in use"); "" when it wrote none or its
	// output was not relayed (OutputRaw to an *os.File).
	Output string
	// Note is what the master makes of it, when it knows more: in the
	// balanced modes, that no worker ever spoke the IPC protocol.
	Note string

	tail *tail // where Output comes from, read again when Run returns
}

func (e *IntensityError) Error() string {
	msg := fmt.Sprintf("restart intensity exceeded: %d restarts in %v (last: %s", e.Restarts, e.Window, e.Last)
	if e.Output != "" {
		msg += fmt.Sprintf(", after it printed %q", e.Output)
	}
	msg += ")"
	if e.Note != "" {
		msg += "; " + e.Note
	}
	return msg
}

// restartSlot applies the restart policy, backoff and intensity limit to
// the unexpected exit of s's worker; last is its output's tail (nil: none).
func (l *loop) restartSlot(s *slot, status exitStatus, uptime time.Duration, desc string, last *tail) {
	if !shouldRestart(l.cfg.Restart, status) {
		l.log.Info("worker not restarted", "worker", s.id, "restart", l.cfg.Restart.String())
		if status.failed() {
			l.lastBad = desc
		}
		return
	}
	if ok, n := l.limit.allow(time.Now()); !ok {
		err := &IntensityError{Restarts: n, Window: l.cfg.RestartWindow, Last: desc, Output: last.String(), tail: last}
		if l.cfg.Balance.overIPC() && !l.spokeIPC {
			err.Note = "no worker ever spoke the clusterd IPC protocol, " + l.balanceHint("none could")
		}
		l.log.Error("restart intensity exceeded", "error", err.Error())
		l.result = err
		l.beginStop(false)
		return
	}
	s.restarts++
	d := s.backoff.next(uptime, l.cfg.MinUptime, l.jitter)
	if d > 0 {
		s.restartAt = time.Now().Add(d)
		l.log.Info("restart delayed", "worker", s.id, "backoff", d.String(), "attempt", s.backoff.attempt)
		return
	}
	l.tryStart(s)
}

// tryStart starts s's worker and turns a failure into a delayed retry.
func (l *loop) tryStart(s *slot) {
	err := l.startWorker(s)
	if err == nil {
		return
	}
	l.log.Error("start worker failed", "worker", s.id, "error", err)
	l.restartSlot(s, exitStatus{code: 127}, 0, err.Error(), nil)
}
