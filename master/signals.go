package master

import (
	"os"
	"syscall"
)

// The signal table of the loop (Options.Signals): each signal is turned
// into the command a Master method would send, and applied.

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
		// A second one stops at once.
		c = &stopCmd{force: l.stopping, sig: s}
	case syscall.SIGQUIT:
		c = &stopCmd{force: true, sig: s}
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
