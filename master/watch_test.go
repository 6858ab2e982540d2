package master

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// checkCall is one call of the loop's checkListeners.
type checkCall struct {
	exited  *worker
	running int
}

// watchLoop returns a loop with two started workers, driven by direct calls
// (no run goroutine), whose listener check records its calls and answers
// replaced.
func watchLoop(t *testing.T, replaced *bool) (*loop, *fakeStarter, *[]checkCall, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg, err := normalize(Options{Command: []string{"/bin/true"}, Workers: 2, Ready: ReadyMode{Kind: ReadyIPC},
		Logger: hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})})
	if err != nil {
		t.Fatal(err)
	}
	st := &fakeStarter{starts: make(chan *fakeProc, 64)}
	var calls []checkCall
	l := newLoop(cfg, cfg.Logger, loopDeps{
		starter: st, sockets: &fakeSockets{dropped: make(chan int, 4)},
		sdNotify: func(string) {}, ready: func() {}, jitter: func() float64 { return 0.5 },
		checkListeners: func(exited *worker, running []*worker) bool {
			calls = append(calls, checkCall{exited: exited, running: len(running)})
			return *replaced
		},
	})
	for i := range 2 {
		if err := l.startWorker(l.newSlot(i)); err != nil {
			t.Fatal(err)
		}
	}
	return l, st, &calls, logs
}

func TestLoopChecksListenersOnExit(t *testing.T) {
	replaced := false
	l, st, calls, _ := watchLoop(t, &replaced)
	p := <-st.starts
	<-st.starts
	l.onExit(exitEvent{pid: p.pid, status: exitStatus{code: 1}})
	if len(*calls) != 1 || (*calls)[0].exited == nil || (*calls)[0].exited.pid != p.pid {
		t.Fatalf("after worker %d exited: listener checks %+v, want one naming it", p.pid, *calls)
	}
	if l.reload != nil {
		t.Error("a check that replaced nothing started a reload")
	}
}

func TestLoopChecksListenersPeriodically(t *testing.T) {
	replaced := false
	l, st, calls, logs := watchLoop(t, &replaced)
	<-st.starts
	<-st.starts
	now := time.Now()
	l.checkAt = now.Add(listenerCheckInterval)
	if d, ok := l.nextDeadline(); !ok || !d.Equal(l.checkAt) {
		t.Fatalf("nextDeadline = %v, %v; want the listener check at %v", d, ok, l.checkAt)
	}
	l.onTimers(now.Add(listenerCheckInterval - time.Millisecond))
	if len(*calls) != 0 {
		t.Fatalf("listener checked before its time: %+v", *calls)
	}
	l.onTimers(now.Add(listenerCheckInterval))
	if len(*calls) != 1 || (*calls)[0].exited != nil || (*calls)[0].running != 2 {
		t.Fatalf("periodic check: calls %+v, want one with the 2 running workers", *calls)
	}
	if want := now.Add(2 * listenerCheckInterval); !l.checkAt.Equal(want) {
		t.Errorf("next check at %v, want %v", l.checkAt, want)
	}
	// A replaced socket: the workers restart onto it, rolling.
	replaced = true
	l.onTimers(l.checkAt)
	if l.reload == nil {
		t.Fatal("a replaced listener did not start a rolling reload")
	}
	select {
	case p := <-st.starts:
		if p.req.slot != 0 {
			t.Errorf("reload started slot %d first, want 0", p.req.slot)
		}
	default:
		t.Fatal("the reload started no replacement worker")
	}
	if !strings.Contains(logs.String(), "restarting workers onto a replaced listener") {
		t.Errorf("no log line for the restart onto the replaced listener:\n%s", logs)
	}
	// While stopping, a replacement restarts nobody.
	l.reload = nil
	l.stopping = true
	l.onTimers(l.checkAt)
	if l.reload != nil {
		t.Error("a replaced listener started a reload during a stop")
	}
}
