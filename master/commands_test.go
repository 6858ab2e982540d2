package master

import (
	"errors"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// The loop's commands and events, on the fake starter of loop_test.go.

// reload sends a reloadCmd and returns its reply channel.
func (h *harness) reload() chan reloadReply {
	c := &reloadCmd{reply: make(chan reloadReply, 1)}
	h.cmds <- c
	return c.reply
}

func TestLoopReloadCommand(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}})
		old := h.startsReady(2)
		reply := h.reload()
		n0 := h.nextStart(time.Second)
		if r := <-h.reload(); !errors.Is(r.err, ErrReloadInProgress) {
			t.Errorf("second Reload = %v, want ErrReloadInProgress", r.err)
		}
		time.Sleep(time.Second) // the fake clock: readiness takes a second
		h.readyIPC(n0)
		h.wantSignal(old[0], syscall.SIGTERM, time.Second)
		n1 := h.nextStart(time.Second)
		h.readyIPC(n1)
		h.wantSignal(old[1], syscall.SIGTERM, time.Second)
		r := <-reply
		if r.err != nil || len(r.res.Slots) != 2 {
			t.Fatalf("Reload = %+v, %v; want two slots", r.res, r.err)
		}
		for i, s := range r.res.Slots {
			want := SlotReload{Slot: i, OldPID: old[i].pid, NewPID: []int{n0.pid, n1.pid}[i]}
			want.ReadyAfter = s.ReadyAfter
			if s != want {
				t.Errorf("slot %d outcome %+v, want %+v", i, s, want)
			}
		}
		if r.res.Slots[0].ReadyAfter != time.Second || r.res.Slots[1].ReadyAfter != 0 {
			t.Errorf("ready after %v and %v, want 1s and 0 (fake clock)", r.res.Slots[0].ReadyAfter, r.res.Slots[1].ReadyAfter)
		}
		h.exit(old[0], exitStatus{})
		h.exit(old[1], exitStatus{})
		h.stop(n0, n1)
	})
}

// TestLoopReloadStartedOver: a SIGHUP during a Reload starts it over; the
// Reload that was running learns it did not finish.
func TestLoopReloadStartedOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}})
		old := h.startsReady(1)[0]
		reply := h.reload()
		n := h.nextStart(time.Second)
		h.signal(syscall.SIGHUP)
		if r := <-reply; !errors.Is(r.err, errReloadRestarted) || len(r.res.Slots) != 1 || r.res.Slots[0].NewPID != n.pid {
			t.Errorf("Reload started over = %+v, %v; want errReloadRestarted with slot 0's first replacement", r.res, r.err)
		}
		h.wantSignal(n, syscall.SIGKILL, time.Second)
		h.exit(n, exitStatus{signal: syscall.SIGKILL})
		m := h.nextStart(time.Second)
		h.readyIPC(m)
		h.wantSignal(old, syscall.SIGTERM, time.Second)
		h.exit(old, exitStatus{})
		h.stop(m)
	})
}

func TestLoopReloadAbortResult(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}, ReadyTimeout: 3 * time.Second})
		old := h.startsReady(2)
		reply := h.reload()
		n0 := h.nextStart(time.Second)
		h.readyIPC(n0)
		h.wantSignal(old[0], syscall.SIGTERM, time.Second)
		h.exit(old[0], exitStatus{})
		n1 := h.nextStart(time.Second) // never ready
		r := <-reply
		var re *ReloadError
		if !errors.As(r.err, &re) || re.Slot != 1 || re.PID != n1.pid || re.Reason != "not ready after 3s" {
			t.Fatalf("Reload = %v, want a ReloadError for worker 1 (pid %d)", r.err, n1.pid)
		}
		if len(r.res.Slots) != 2 || r.res.Slots[0].Err != nil || r.res.Slots[1].Err != r.err || r.res.Slots[1].OldPID != old[1].pid {
			t.Errorf("aborted reload result %+v", r.res)
		}
		h.wantSignal(n1, syscall.SIGKILL, 0)
		h.exit(n1, exitStatus{signal: syscall.SIGKILL})
		h.noSignal(old[1])
		h.stop(n0, old[1])
	})
}

// TestLoopEventsNeverBlock: a subscriber that never reads costs dropped,
// counted events; the loop goes on.
func TestLoopEventsNeverBlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := newEventHub()
		stuck := hub.subscribe(1)
		all := hub.subscribe(1000)
		h := startLoopHub(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}}, 0, hub, nil)
		p := h.startsReady(1)[0]
		for range 5 {
			reply := h.reload()
			n := h.nextStart(time.Second)
			h.readyIPC(n)
			h.wantSignal(p, syscall.SIGTERM, time.Second)
			h.exit(p, exitStatus{})
			if r := <-reply; r.err != nil {
				t.Fatal(r.err)
			}
			p = n
		}
		h.stop(p)
		var kinds []EventKind
		for e := range all.C {
			kinds = append(kinds, e.Kind)
		}
		// 6 workers: fork, online, ready, disconnect and exit each (the
		// fakes never disconnect by themselves), 5 reloads.
		if len(kinds) != 6*5+5 || all.Dropped() != 0 {
			t.Errorf("subscriber with room got %d events (%d dropped), want %d: %v", len(kinds), all.Dropped(), 6*5+5, kinds)
		}
		if got := uint64(len(kinds)) - 1; stuck.Dropped() != got {
			t.Errorf("stuck subscriber dropped %d events, want %d (all but the first)", stuck.Dropped(), got)
		}
		if e := <-stuck.C; e.Kind != EventFork {
			t.Errorf("stuck subscriber's one event is %v, want the first fork", e.Kind)
		}
	})
}

func TestLoopWorkersAndSignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}})
		ps := h.starts(2)
		h.readyIPC(ps[0])
		c := &workersCmd{reply: make(chan []WorkerInfo, 1)}
		h.cmds <- c
		ws := <-c.reply
		if len(ws) != 2 || ws[0].PID != ps[0].pid || ws[0].State != WorkerReady || !ws[0].Online ||
			ws[1].State != WorkerStarting || ws[1].Online {
			t.Errorf("Workers() = %+v, want worker 0 ready and online, worker 1 starting", ws)
		}
		sc := &signalCmd{slot: 1, sig: syscall.SIGUSR1, reply: make(chan error, 1)}
		h.cmds <- sc
		if err := <-sc.reply; err != nil {
			t.Fatal(err)
		}
		h.wantSignal(ps[1], syscall.SIGUSR1, 0)
		sc = &signalCmd{slot: 2, sig: syscall.SIGUSR1, reply: make(chan error, 1)}
		h.cmds <- sc
		if err := <-sc.reply; !errors.Is(err, ErrNoWorker) {
			t.Errorf("signal slot 2 = %v, want ErrNoWorker", err)
		}
		h.readyIPC(ps[1])
		h.stop(ps...)
	})
}
