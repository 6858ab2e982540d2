package master

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// fakeLimiter returns a limiter on a fake clock that advances by every wait,
// the log it writes to, and the total time it waited.
func fakeLimiter(t *testing.T) (*ipcLimiter, *syncBuffer, *time.Duration, *time.Time) {
	t.Helper()
	var buf syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Debug})
	clock := time.Unix(1000, 0)
	var waited time.Duration
	lim := newIPCLimiter(log, nil, IPCMessageRate, IPCFDRate)
	lim.msgs.last, lim.fds.last = clock, clock
	lim.now = func() time.Time { return clock }
	lim.wait = func(d time.Duration) bool {
		waited += d
		clock = clock.Add(d)
		return true
	}
	return lim, &buf, &waited, &clock
}

func floodLines(buf *syncBuffer) int {
	return strings.Count(buf.String(), "ipc flood")
}

func TestIPCLimiterBurstWithinLimit(t *testing.T) {
	lim, buf, waited, _ := fakeLimiter(t)
	for range IPCMessageRate {
		if !lim.admit(0) {
			t.Fatal("admit = false")
		}
	}
	if *waited != 0 || floodLines(buf) != 0 {
		t.Errorf("a burst of %d messages waited %v and logged %q, want no wait and no log", IPCMessageRate, *waited, buf.String())
	}
}

func TestIPCLimiterFlood(t *testing.T) {
	lim, buf, waited, clock := fakeLimiter(t)
	const n = 5 * IPCMessageRate
	for range n {
		lim.admit(0)
	}
	// The first second's worth is the burst; the rest goes at the rate.
	want := time.Duration(n-IPCMessageRate) * time.Second / IPCMessageRate
	if *waited < want-limiterQuantum || *waited > want {
		t.Errorf("%d messages at once waited %v, want about %v", n, *waited, want)
	}
	if got := floodLines(buf); got != 1 {
		t.Fatalf("one flood logged %d lines, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "what=messages") {
		t.Errorf("flood log %q does not say what flooded", buf.String())
	}
	// Still at the limit: the same burst, no new line.
	for range IPCMessageRate {
		lim.admit(0)
	}
	if got := floodLines(buf); got != 1 {
		t.Errorf("a continued flood logged %d lines, want 1", got)
	}
	// Quiet long enough to refill, then a new flood: a new line.
	*clock = clock.Add(2 * time.Second)
	for range 2 * IPCMessageRate {
		lim.admit(0)
	}
	if got := floodLines(buf); got != 2 {
		t.Errorf("two floods logged %d lines, want 2:\n%s", got, buf.String())
	}
}

func TestIPCLimiterDescriptors(t *testing.T) {
	lim, buf, waited, _ := fakeLimiter(t)
	const msgs = 1000 // 16000 descriptors, 8 times the rate
	for range msgs {
		lim.admit(16)
	}
	want := time.Duration(msgs*16-IPCFDRate) * time.Second / IPCFDRate
	if *waited < want-limiterQuantum || *waited > want {
		t.Errorf("%d descriptors at once waited %v, want about %v", msgs*16, *waited, want)
	}
	if got := floodLines(buf); got != 1 || !strings.Contains(buf.String(), "what=descriptors") {
		t.Errorf("descriptor flood logged %d lines, want 1 about descriptors:\n%s", got, buf.String())
	}
}

func TestIPCLimiterReleased(t *testing.T) {
	done := make(chan struct{})
	lim := newIPCLimiter(hclog.NewNullLogger(), done, IPCMessageRate, IPCFDRate)
	close(done)
	ok := true
	for i := 0; i < 2*IPCMessageRate && ok; i++ {
		ok = lim.admit(0)
	}
	if ok {
		t.Error("admit kept reading a released connection over its limit")
	}
}
