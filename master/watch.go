package master

import "time"

// The master watches its own listening sockets. Every worker holds the same
// open file description of a shared socket (and a slot's worker that of its
// reuseport socket), so one worker's shutdown(2) on it stops the socket
// listening for every holder: the port refuses connections and the other
// workers' accept fails with EINVAL, for good, since restarting a worker
// hands it the same dead socket. The loop therefore checks its stream
// listeners when a worker exits (the usual sign of such a fault: the
// workers crash on accept) and every listenerCheckInterval, and heals them
// (see listeners.check).

// listenerCheckInterval is how often the loop checks its listeners while
// nothing else happens. Each check is one getsockopt(2) per TCP listener
// (one per address, or per address and slot with BalanceReusePort) and one
// poll(2) per unix listener: microseconds of CPU. The cost that matters is
// the wake-up itself, one every 5 s for an otherwise idle master.
const listenerCheckInterval = 5 * time.Second

// watchListeners checks the listeners (exited is the worker whose exit
// prompted it, nil for the periodic check) and, when a socket had to be
// replaced by a new one, restarts the workers onto it with a rolling
// reload: until then they hold the old socket, which no longer listens.
// Under --balance round-robin and least-conn the master alone holds its
// listeners, and its accepters move to a healed one without a restart.
func (l *loop) watchListeners(exited *worker) {
	if l.checkListeners == nil {
		return
	}
	if !l.checkListeners(exited, l.workers()) {
		return
	}
	if l.stopping || l.paused {
		return // the next start uses the new socket anyway
	}
	if l.cfg.Balance.overIPC() {
		// The workers hold no listener in these modes: the accepters
		// moved to the new socket (balancer.healed).
		return
	}
	l.log.Warn("restarting workers onto a replaced listener")
	l.beginReload(nil)
}

// listenerCheck is a request to check the listeners now, from a balanced
// accepter whose listener stopped listening: in those modes no worker
// exits to prompt the check.
type listenerCheck struct{}

func (listenerCheck) apply(l *loop) { l.watchListeners(nil) }

// askListenerCheck sends the loop a listenerCheck, unless it has ended
// (done is closed).
func askListenerCheck(cmds chan<- command, done <-chan struct{}) {
	select {
	case cmds <- listenerCheck{}:
	case <-done:
	}
}
