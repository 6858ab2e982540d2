package master

import (
	"fmt"
	"syscall"
)

// Exit causes: every worker exit is logged with why it happened, in words
// an operator reads without knowing the code: a crash (its exit code or
// signal), a kill by clusterd and its reason (a drain deadline that passed,
// a hang, the memory limit, a reload, a stop), a signal someone else sent,
// or the kernel's OOM killer.

// ConnectionsStat is the stats gauge of a library worker's open
// connections (worker.ServeHTTP keeps it); the exit cause of a worker
// killed at its drain deadline names it.
const ConnectionsStat = "http_connections"

// crashSignals are the signals a process gets from its own fault.
var crashSignals = map[syscall.Signal]bool{
	syscall.SIGSEGV: true, syscall.SIGBUS: true, syscall.SIGILL: true, syscall.SIGFPE: true,
	syscall.SIGABRT: true, syscall.SIGTRAP: true, syscall.SIGSYS: true,
}

// exitCause says why w ended with status. oom reports that the system's
// OOM kill counter moved since the last exit looked at it.
func (l *loop) exitCause(w *worker, status exitStatus, oom bool) string {
	sig := status.signal
	switch {
	case w.deadline && w.dumpSent && !(w.killed && sig == syscall.SIGKILL):
		// It ended by itself on the dump signal (Go exits with code 2).
		return "killed by clusterd: " + l.deadlineWhy(w) + "; it ended on the dump signal: " + status.String()
	case w.killed && sig == syscall.SIGKILL:
		why := w.why
		if w.deadline {
			why = l.deadlineWhy(w)
		}
		if why == "" {
			why = "no reason recorded"
		}
		return "killed by clusterd: " + why
	case oom && sig == syscall.SIGKILL:
		return "killed by the kernel's OOM killer (signal SIGKILL, the oom_kill count moved)"
	case sig != 0 && crashSignals[sig]:
		return "crashed: signal " + signalName(sig) + describeDrain(w)
	case sig != 0 && w.signalled && sig == l.cfg.StopSignal:
		return "stopped by clusterd (" + w.why + "): signal " + signalName(sig)
	case sig != 0:
		return "killed by signal " + signalName(sig) + " from another process" + describeDrain(w)
	case w.signalled:
		return fmt.Sprintf("exited with code %d after clusterd asked it to stop (%s)", status.code, w.why)
	case status.code != 0:
		return fmt.Sprintf("crashed: exit code %d", status.code)
	}
	return "exited by itself with code 0"
}

// deadlineWhy says that w's drain deadline passed, with what it left open.
func (l *loop) deadlineWhy(w *worker) string {
	why := fmt.Sprintf("drain deadline passed (kill timeout %v", l.cfg.KillTimeout)
	if n, ok := w.stats[ConnectionsStat]; ok {
		why += fmt.Sprintf(", %d connections still open", n)
	}
	why += ")"
	if w.why != "" {
		why += " while draining for " + w.why
	}
	if w.dumpSent {
		why += ", after a dump with " + signalName(l.cfg.DumpSignal)
	}
	return why
}

// describeDrain adds, for a worker that was being stopped, why.
func describeDrain(w *worker) string {
	if w.why == "" {
		return ""
	}
	return " (while stopping for " + w.why + ")"
}
