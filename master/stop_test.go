package master

import (
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// fakeLeftovers are processes of the cluster besides the workers: the
// polite ones leave on the stop signal, the stubborn ones only on SIGKILL.
type fakeLeftovers struct {
	stop syscall.Signal

	mu       sync.Mutex
	polite   []int
	stubborn []int
	got      []signalAt
}

type signalAt struct {
	sig syscall.Signal
	at  time.Time
}

func (f *fakeLeftovers) members() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(slices.Clone(f.polite), f.stubborn...)
}

func (f *fakeLeftovers) signal(sig syscall.Signal) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, signalAt{sig, time.Now()})
	switch sig {
	case syscall.SIGKILL:
		f.polite, f.stubborn = nil, nil
	case f.stop:
		f.polite = nil
	}
}

func (f *fakeLeftovers) signals() []signalAt {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// Once the workers are gone, every stop waits for the rest of the cluster:
// the stop signal first, SIGKILL when the stop's kill timeout is over (at
// once for an immediate stop); Run returns only when none is left.
func TestLoopStopSweepsLeftovers(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeLeftovers{stop: syscall.SIGTERM, polite: []int{100}, stubborn: []int{101}}
			h := startLoopDeps(t, Options{Workers: 1, KillTimeout: 5 * time.Second}, 0, f)
			p := h.nextStart(time.Second)
			stopAt := time.Now()
			h.signal(syscall.SIGTERM)
			h.wantSignal(p, syscall.SIGTERM, time.Second)
			time.Sleep(time.Second) // the worker drains for a second (fake clock)
			h.exit(p, exitStatus{code: 0})
			synctest.Wait()
			select {
			case err := <-h.result:
				t.Fatalf("run returned %v with a leftover still running", err)
			default:
			}
			if err := h.wait(time.Minute); err != nil {
				t.Fatalf("run = %v, want nil", err)
			}
			got := f.signals()
			if len(got) < 2 || got[0].sig != syscall.SIGTERM || got[1].sig != syscall.SIGKILL {
				t.Fatalf("leftovers got %v, want SIGTERM then SIGKILL", got)
			}
			if d := got[0].at.Sub(stopAt); d != time.Second {
				t.Errorf("stop signal to leftovers %v after the stop began, want 1s (when the worker exited)", d)
			}
			if d := got[1].at.Sub(stopAt); d != 5*time.Second {
				t.Errorf("SIGKILL to leftovers %v after the stop began, want the kill timeout 5s", d)
			}
			if d := time.Since(stopAt); d > 5*time.Second+sweepPoll {
				t.Errorf("run returned %v after the stop began, want within the kill timeout and one look", d)
			}
		})
	})
	t.Run("polite", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeLeftovers{stop: syscall.SIGTERM, polite: []int{100, 102}}
			h := startLoopDeps(t, Options{Workers: 1}, 0, f)
			p := h.nextStart(time.Second)
			h.stop(p)
			if got := f.signals(); len(got) != 1 || got[0].sig != syscall.SIGTERM {
				t.Errorf("leftovers got %v, want only the stop signal", got)
			}
		})
	})
	t.Run("quit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeLeftovers{stop: syscall.SIGTERM, polite: []int{100}, stubborn: []int{101}}
			h := startLoopDeps(t, Options{Workers: 1, KillTimeout: time.Minute}, 0, f)
			p := h.nextStart(time.Second)
			h.signal(syscall.SIGQUIT)
			h.wantSignal(p, syscall.SIGKILL, 0)
			quitAt := time.Now()
			h.exit(p, exitStatus{signal: syscall.SIGKILL})
			if err := h.wait(time.Second); err != nil {
				t.Fatalf("run = %v, want nil", err)
			}
			if got := f.signals(); len(got) != 1 || got[0].sig != syscall.SIGKILL || got[0].at != quitAt {
				t.Errorf("leftovers got %v, want SIGKILL at once", got)
			}
		})
	})
	t.Run("workers ended on their own", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeLeftovers{stop: syscall.SIGTERM, stubborn: []int{101}}
			h := startLoopDeps(t, Options{Workers: 1, Restart: RestartNever, KillTimeout: 2 * time.Second}, 0, f)
			p := h.nextStart(time.Second)
			endAt := time.Now()
			h.exit(p, exitStatus{code: 0})
			if err := h.wait(time.Minute); err != nil {
				t.Fatalf("run = %v, want nil", err)
			}
			got := f.signals()
			if len(got) < 2 || got[1].sig != syscall.SIGKILL || got[1].at.Sub(endAt) != 2*time.Second {
				t.Errorf("leftovers got %v, want SIGTERM, then SIGKILL 2s after the last worker ended", got)
			}
		})
	})
}
