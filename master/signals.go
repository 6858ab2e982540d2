package master

import (
	"os"
	"syscall"
	"time"
)

// The signal table of the loop (Options.Signals): each signal is turned
// into the command a Master method would send, and applied.

// secondStopGrace is how long after a TERM or INT that began a graceful
// stop a second one is taken as the same request rather than as "stop at
// once". QUIT always stops at once.
const secondStopGrace = time.Second

func (l *loop) onSignal(sig os.Signal) {
	s, _ := sig.(syscall.Signal)
	l.log.Debug("signal received", "signal", signalName(s))
	var c command
	switch s {
	case syscall.SIGHUP:
		c = &reloadCmd{} // no reply: a reload in progress starts over
	case syscall.SIGWINCH:
		c = pauseCmd{}
	case syscall.SIGTERM, syscall.SIGINT:
		if l.stopping && !l.termAt.IsZero() && time.Since(l.termAt) < secondStopGrace {
			// coreutils timeout, and other supervisors, signal the master
			// and then its process group: one request, twice.
			l.log.Info("stop signal repeated too soon to stop at once", "signal", signalName(s),
				"grace", secondStopGrace.String())
			return
		}
		if !l.stopping {
			l.termAt = time.Now()
		}
		// A second one, past the grace, stops at once.
		c = &stopCmd{force: l.stopping, sig: s}
	case syscall.SIGQUIT:
		c = &stopCmd{force: true, sig: s}
	case syscall.SIGUSR2:
		c = &upgradeCmd{} // no reply: the outcome is logged
	case syscall.SIGTTIN:
		c = &scaleCmd{delta: 1}
	case syscall.SIGTTOU:
		c = &scaleCmd{delta: -1}
	default:
		l.log.Debug("signal ignored", "signal", sig.String())
		return
	}
	c.apply(l)
}
