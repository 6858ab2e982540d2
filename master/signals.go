package master

import (
	"os"
	"syscall"
)

// The signal-to-action table of the loop (Options.Signals).

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
		if l.stopping {
			l.log.Info("stopping at once", "signal", signalName(s))
			l.beginStop(true)
			return
		}
		l.log.Info("stopping", "signal", signalName(s))
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
