package master

import (
	"slices"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// wantSD checks that the loop sent exactly want to its service manager
// since the last check, once it has nothing left to do.
func (h *harness) wantSD(step string, want ...string) {
	h.t.Helper()
	synctest.Wait()
	if got := h.sd.take(); !slices.Equal(got, want) {
		h.t.Errorf("%s: sd_notify sent %q, want %q", step, got, want)
	}
}

// drainNotes empties the channel copy of the sd_notify states, which this
// test reads through h.sd instead.
func (h *harness) drainNotes() {
	for {
		select {
		case <-h.notes:
		default:
			return
		}
	}
}

// TestLoopStatus follows the sd_notify states and STATUS= lines of a
// cluster's life, in order: starting, ready, a rolling reload, a crash
// loop and its end, and a stop.
func TestLoopStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}, KillTimeout: 10 * time.Second})
		ps := h.starts(2)
		h.wantSD("start", "STATUS=0/2 workers ready")
		h.readyIPC(ps[0])
		h.wantSD("one ready", "STATUS=1/2 workers ready")
		h.readyIPC(ps[1])
		// READY=1 only now that every worker is: never at the master's start.
		h.wantSD("all ready", "READY=1", "STATUS=2/2 workers ready")

		h.signal(syscall.SIGHUP)
		n0 := h.nextStart(time.Second)
		h.wantSD("reload", "RELOADING=1", "STATUS=reloading 0/2")
		h.readyIPC(n0)
		h.wantSignal(ps[0], syscall.SIGTERM, time.Second)
		n1 := h.nextStart(time.Second)
		h.wantSD("reload half", "STATUS=reloading 1/2")
		h.readyIPC(n1)
		h.wantSignal(ps[1], syscall.SIGTERM, time.Second)
		h.wantSD("reload done", "READY=1", "STATUS=2/2 workers ready")
		h.exit(ps[0], exitStatus{})
		h.exit(ps[1], exitStatus{})
		h.wantSD("old workers gone")

		// Slot 1 crashes at once, twice in a row: a crash loop.
		h.exit(n1, exitStatus{code: 1})
		h.wantSD("first crash", "STATUS=1/2 workers ready")
		c1 := h.nextStart(time.Second) // after the backoff
		h.exit(c1, exitStatus{code: 1})
		h.wantSD("second crash", "STATUS=degraded: slot 1 crash-looping")
		c2 := h.nextStart(time.Second)
		h.readyIPC(c2)
		h.wantSD("ready again, not yet for MinUptime")
		time.Sleep(DefaultMinUptime)
		h.wantSD("up for MinUptime", "STATUS=2/2 workers ready")

		h.signal(syscall.SIGTERM)
		h.wantSignal(n0, syscall.SIGTERM, time.Second)
		h.wantSignal(c2, syscall.SIGTERM, time.Second)
		h.wantSD("stop", "STOPPING=1", "STATUS=stopping: 2 workers left")
		h.exit(n0, exitStatus{})
		h.wantSD("one stopped", "STATUS=stopping: 1 worker left")
		h.exit(c2, exitStatus{})
		if err := h.wait(time.Minute); err != nil {
			t.Fatalf("run after stop = %v, want nil", err)
		}
		h.wantSD("stopped", "STATUS=stopping: 0 workers left")
		h.drainNotes()
	})
}

// blockLoop is a command that holds the loop until release is closed: a
// stand-in for a loop stuck in a handler.
type blockLoop struct {
	entered chan struct{}
	release chan struct{}
}

func (b blockLoop) apply(*loop) {
	close(b.entered)
	<-b.release
}

// TestLoopWatchdogStopsWhenLoopStuck: the WATCHDOG=1 pings come from the
// loop itself, so while it is stuck none are sent (systemd's watchdog
// then restarts the service), and they resume once it runs again.
func TestLoopWatchdogStopsWhenLoopStuck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoopWatchdog(t, Options{Workers: 1}, 10*time.Second)
		p := h.nextStart(time.Second)
		time.Sleep(25 * time.Second)
		h.wantSD("healthy", "READY=1", "STATUS=1/1 workers ready", "WATCHDOG=1", "WATCHDOG=1")
		b := blockLoop{entered: make(chan struct{}), release: make(chan struct{})}
		h.cmds <- b
		<-b.entered
		time.Sleep(time.Minute)
		h.wantSD("stuck for a minute")
		close(b.release)
		// The overdue ping goes out as soon as the loop runs again, then
		// every 10s.
		h.wantSD("released", "WATCHDOG=1")
		time.Sleep(10 * time.Second)
		h.wantSD("healthy again", "WATCHDOG=1")
		h.drainNotes()
		h.stop(p)
	})
}
