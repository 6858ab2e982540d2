package master

import (
	"errors"
	"syscall"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	const minUp = 5 * time.Second
	top := func() float64 { return 0.999999 }
	bottom := func() float64 { return 0 }
	for i, want := range []struct{ lo, hi time.Duration }{
		{100 * time.Millisecond, 100 * time.Millisecond},
		{100 * time.Millisecond, 200 * time.Millisecond},
		{200 * time.Millisecond, 400 * time.Millisecond},
		{400 * time.Millisecond, 800 * time.Millisecond},
		{500 * time.Millisecond, time.Second},
		{500 * time.Millisecond, time.Second},
	} {
		saved := b
		lo := b.next(time.Millisecond, minUp, bottom)
		b = saved
		hi := b.next(time.Millisecond, minUp, top)
		if lo != want.lo || hi < want.hi-time.Millisecond || hi > want.hi {
			t.Errorf("attempt %d: delays %v..%v, want %v..%v", i+1, lo, hi, want.lo, want.hi)
		}
	}
	if d := b.next(minUp, minUp, top); d != 0 || b.attempt != 0 {
		t.Errorf("after min uptime: delay %v attempt %d, want 0, 0", d, b.attempt)
	}
	if d := b.next(0, minUp, bottom); d != 100*time.Millisecond {
		t.Errorf("first delay after reset %v, want 100ms", d)
	}
}

func TestIntensity(t *testing.T) {
	l := intensity{max: 3, window: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if ok, n := l.allow(t0.Add(time.Duration(i) * time.Second)); !ok || n != i+1 {
			t.Fatalf("restart %d: allow = %v, %d, want true, %d", i+1, ok, n, i+1)
		}
	}
	if ok, n := l.allow(t0.Add(5 * time.Second)); ok || n != 4 {
		t.Errorf("4th restart within the window: allow = %v, %d, want false, 4", ok, n)
	}
	// The window slides: old restarts stop counting.
	l = intensity{max: 3, window: 10 * time.Second}
	for i := range 10 {
		if ok, _ := l.allow(t0.Add(time.Duration(i) * 4 * time.Second)); !ok {
			t.Fatalf("restart %d every 4s exceeded 3 in 10s", i+1)
		}
	}
	unlimited := intensity{max: -1, window: time.Second}
	for range 100 {
		if ok, _ := unlimited.allow(t0); !ok {
			t.Fatal("negative max limited restarts")
		}
	}
}

func TestShouldRestart(t *testing.T) {
	ok, bad, killed := exitStatus{}, exitStatus{code: 2}, exitStatus{signal: syscall.SIGKILL}
	for _, tc := range []struct {
		p    RestartPolicy
		s    exitStatus
		want bool
	}{
		{RestartAlways, ok, true}, {RestartAlways, bad, true}, {RestartAlways, killed, true},
		{RestartOnFailure, ok, false}, {RestartOnFailure, bad, true}, {RestartOnFailure, killed, true},
		{RestartNever, ok, false}, {RestartNever, bad, false}, {RestartNever, killed, false},
	} {
		if got := shouldRestart(tc.p, tc.s); got != tc.want {
			t.Errorf("shouldRestart(%v, %v) = %v, want %v", tc.p, tc.s, got, tc.want)
		}
	}
	if got := killed.String(); got != "killed by signal SIGKILL" {
		t.Errorf("String() = %q", got)
	}
}

func TestIntensityErrorMessage(t *testing.T) {
	err := error(&IntensityError{Restarts: 5, Window: 10 * time.Second, Last: "worker 1 exited with code 1"})
	const want = "restart intensity exceeded: 5 restarts in 10s (last: worker 1 exited with code 1)"
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
	var ie *IntensityError
	if !errors.As(err, &ie) {
		t.Error("errors.As failed")
	}
	err = &IntensityError{Restarts: 3, Window: time.Minute, Last: "worker 0 exited with code 1",
		Output: `listen tcp :8080: bind: address already in use`}
	const withOutput = `restart intensity exceeded: 3 restarts in 1m0s (last: worker 0 exited with code 1, after it printed "listen tcp :8080: bind: address already in use")`
	if err.Error() != withOutput {
		t.Errorf("Error() = %q, want %q", err, withOutput)
	}
}

func TestParseNotify(t *testing.T) {
	evs := parseNotify([]byte("STATUS=warming up\nREADY=1\nWATCHDOG=1\nSTOPPING=1\nREADY=0"))
	var kinds []eventKind
	for _, e := range evs {
		kinds = append(kinds, e.kind)
	}
	want := []eventKind{evReady, evWatchdog, evStopping}
	if len(kinds) != len(want) {
		t.Fatalf("parseNotify kinds %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("parseNotify kinds %v, want %v", kinds, want)
		}
	}
	if evs[0].source != ReadyNotify {
		t.Errorf("READY=1 source %v, want ReadyNotify", evs[0].source)
	}
}
