package master

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

func (p *fakeProc) reportsExec() bool { return p.reports }

func (h *harness) execOutcome(p *fakeProc, err error) {
	h.events <- workerEvent{pid: p.pid, kind: evExec, err: err}
}

func TestLoopReadyExecWaitsForExec(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1}, func(s *fakeStarter) { s.execs = true })
		p := h.nextStart(time.Second)
		synctest.Wait()
		select {
		case <-h.ready:
			t.Fatal("ready before the exec outcome arrived")
		default:
		}
		h.execOutcome(p, nil)
		synctest.Wait()
		select {
		case <-h.ready:
		default:
			t.Fatal("not ready after the command was executed")
		}
		h.stop(p)
	})
}

func TestLoopExecFailureStops(t *testing.T) {
	for _, order := range []string{"exec first", "exit first"} {
		t.Run(order, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := startLoop(t, Options{Workers: 2}, func(s *fakeStarter) { s.execs = true })
				ps := h.starts(2)
				failed := errors.New("exec /bin/x: exec format error")
				if order == "exit first" {
					h.exit(ps[0], exitStatus{code: 127}) // the reaper was quicker
				}
				h.execOutcome(ps[0], failed)
				if order == "exec first" {
					h.exit(ps[0], exitStatus{code: 127})
				}
				h.wantSignal(ps[1], syscall.SIGTERM, time.Second) // the cluster stops
				h.execOutcome(ps[1], failed)
				h.exit(ps[1], exitStatus{code: 127})
				err := h.wait(time.Minute)
				if err == nil || !strings.Contains(err.Error(), "worker 0: exec /bin/x: exec format error") {
					t.Errorf("run = %v, want worker 0's exec error", err)
				}
				h.noStart(time.Minute)
				if n := strings.Count(h.logs.String(), "worker command not executed"); n != 2 {
					t.Errorf("%d \"worker command not executed\" lines, want 2 (one Error, one Debug)", n)
				}
			})
		})
	}
}

func TestLoopExecFailureBesideRunningWorkersRestarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2}, func(s *fakeStarter) { s.execs = true })
		ps := h.starts(2)
		h.execOutcome(ps[0], nil)
		h.execOutcome(ps[1], errors.New("exec /bin/x: cannot allocate memory"))
		h.exit(ps[1], exitStatus{code: 127})
		p := h.nextStart(time.Minute) // slot 1 again, after its backoff
		if p.req.slot != 1 || p.req.gen != 2 {
			t.Fatalf("started worker %d generation %d, want worker 1 generation 2", p.req.slot, p.req.gen)
		}
		h.execOutcome(p, nil)
		h.stop(ps[0], p)
	})
}
