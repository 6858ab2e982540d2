package master

import (
	"os"
	"syscall"
	"time"
)

// The signal-to-action table of the loop (Options.Signals).

// secondStopGrace is how long after a TERM or INT that began a graceful
// stop a second one is taken as the same request rather than as "stop at
// once". QUIT always stops at once.
const secondStopGrace = time.Second

func (l *loop) onSignal(sig os.Signal) {
	s, _ := sig.(syscall.Signal)
	l.log.Debug("signal received", "signal", signalName(s))
	switch s {
	case syscall.SIGHUP:
		switch {
		case l.stopping:
		case l.paused:
			l.resume()
		default:
			l.beginReload()
		}
	case syscall.SIGWINCH:
		if !l.stopping && !l.paused {
			l.pause()
		}
	case syscall.SIGTERM, syscall.SIGINT:
		now := time.Now()
		if l.stopping {
			if !l.termAt.IsZero() && now.Sub(l.termAt) < secondStopGrace {
				// coreutils timeout, and other supervisors, signal the
				// master and then its process group: one request, twice.
				l.log.Info("stop signal repeated too soon to stop at once", "signal", signalName(s),
					"grace", secondStopGrace.String())
				return
			}
			l.log.Info("stopping at once", "signal", signalName(s))
			l.beginStop(true)
			return
		}
		l.log.Info("stopping", "signal", signalName(s))
		l.termAt = now
		l.beginStop(false)
	case syscall.SIGQUIT:
		l.log.Info("stopping at once", "signal", signalName(s))
		l.beginStop(true)
	case syscall.SIGTTIN:
		if !l.stopping {
			l.scaleUp()
		}
	case syscall.SIGTTOU:
		if !l.stopping {
			l.scaleDown()
		}
	default:
		l.log.Debug("signal ignored", "signal", sig.String())
	}
}
