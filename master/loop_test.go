package master

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
)

// Restart, reload and stop logic, tested without processes: a scripted fake
// starter stands in for fork/exec, the test plays the reaper and the
// workers, and testing/synctest's fake clock runs backoffs and timeouts.

type fakeProc struct {
	pid      int
	req      spawnRequest
	at       time.Time
	sigs     chan syscall.Signal
	drains   chan time.Duration
	released chan struct{}
	once     sync.Once
	reports  bool // reportsExec (readiness_test.go)
}

func (p *fakeProc) signal(sig syscall.Signal) error {
	select {
	case p.sigs <- sig:
	default:
		panic("fakeProc: too many signals")
	}
	return nil
}

func (p *fakeProc) drain(d time.Duration) {
	select {
	case p.drains <- d:
	default:
	}
}

func (p *fakeProc) release() { p.once.Do(func() { close(p.released) }) }

func (p *fakeProc) send(*ipc.Message) error { return errors.New("fake process: no ipc") }
func (p *fakeProc) call(context.Context, *ipc.Message) (*ipc.Message, error) {
	return nil, errors.New("fake process: no ipc")
}

type fakeStarter struct {
	calls   int
	failAt  int // this call (1-based) fails
	nextPID int
	starts  chan *fakeProc
	execs   bool // its processes report their exec outcome
}

func (s *fakeStarter) start(req spawnRequest) (int, process, error) {
	s.calls++
	if s.calls == s.failAt {
		return 0, nil, errors.New("no such thing")
	}
	s.nextPID++
	p := &fakeProc{
		pid: s.nextPID, req: req, at: time.Now(),
		sigs: make(chan syscall.Signal, 64), drains: make(chan time.Duration, 4),
		released: make(chan struct{}), reports: s.execs,
	}
	s.starts <- p
	return p.pid, p, nil
}

type fakeSockets struct {
	dropped chan int
	queue   func() (queued, limit int, ok bool) // nil: no TCP listener
}

func (s *fakeSockets) acceptQueue() (int, int, bool) {
	if s.queue == nil {
		return 0, 0, false
	}
	return s.queue()
}

func (s *fakeSockets) forSlot(int) ([]*os.File, []string, error) { return nil, nil, nil }
func (s *fakeSockets) dropSlot(slot int)                         { s.dropped <- slot }
func (s *fakeSockets) listen(int, int, sockshare.Spec) (*os.File, error) {
	return nil, errors.New("fake sockets: no run-time listeners")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type harness struct {
	t       *testing.T
	st      *fakeStarter
	socks   *fakeSockets
	exits   chan exitEvent
	events  chan workerEvent
	sigs    chan os.Signal
	ready   chan struct{}
	notes   chan string
	logs    *syncBuffer
	tailMu  sync.Mutex
	tails   map[int]*tail // a fake relay's last lines, by pid
	result  chan error
	cancel  context.CancelFunc
	workers int
	cmds    chan command
	hub     *eventHub
	sd      *sdRecord // every sd_notify state and STATUS= line, in order
}

// sdRecord keeps what the loop sent its service manager, in order.
type sdRecord struct {
	mu    sync.Mutex
	sent  []string
	reads int // how many take has returned
}

func (r *sdRecord) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, s)
}

// take returns what was sent since the last take.
func (r *sdRecord) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := slices.Clone(r.sent[r.reads:])
	r.reads = len(r.sent)
	return s
}

// start runs a loop with opts (Command defaults to /bin/true) inside the
// current synctest bubble.
func startLoop(t *testing.T, opts Options, setup ...func(*fakeStarter)) *harness {
	t.Helper()
	return startLoopWatchdog(t, opts, 0, setup...)
}

func startLoopWatchdog(t *testing.T, opts Options, watchdog time.Duration, setup ...func(*fakeStarter)) *harness {
	t.Helper()
	return startLoopDeps(t, opts, watchdog, nil, setup...)
}

// startLoopDeps is startLoop with a watchdog interval and the cluster's
// leftovers (nil: none).
func startLoopDeps(t *testing.T, opts Options, watchdog time.Duration, cluster leftovers, setup ...func(*fakeStarter)) *harness {
	t.Helper()
	return startLoopHub(t, opts, watchdog, newEventHub(), cluster, setup...)
}

// startLoopHub starts a loop that publishes its events to hub, so a test
// can subscribe before the first worker starts, with the cluster's
// leftovers (nil: none).
func startLoopHub(t *testing.T, opts Options, watchdog time.Duration, hub *eventHub, cluster leftovers, setup ...func(*fakeStarter)) *harness {
	t.Helper()
	return startLoopWith(t, opts, watchdog, hub, cluster, nil, setup...)
}

// startLoopWith is startLoopHub with a hook that sets more of the loop's
// dependencies (memory samples, the OOM kill count, thread records).
func startLoopWith(t *testing.T, opts Options, watchdog time.Duration, hub *eventHub, cluster leftovers, deps func(*loopDeps), setup ...func(*fakeStarter)) *harness {
	t.Helper()
	if opts.Command == nil {
		opts.Command = []string{"/bin/true"}
	}
	h := &harness{
		t:      t,
		st:     &fakeStarter{starts: make(chan *fakeProc, 256)},
		socks:  &fakeSockets{dropped: make(chan int, 16)},
		exits:  make(chan exitEvent),
		events: make(chan workerEvent),
		sigs:   make(chan os.Signal),
		ready:  make(chan struct{}),
		notes:  make(chan string, 64),
		logs:   &syncBuffer{},
		tails:  make(map[int]*tail),
		result: make(chan error, 1),
		cmds:   make(chan command),
		hub:    hub,
		sd:     &sdRecord{},
	}
	opts.Signals = h.sigs
	opts.Logger = hclog.New(&hclog.LoggerOptions{Output: h.logs, Level: hclog.Trace})
	cfg, err := normalize(opts)
	if err != nil {
		t.Fatalf("normalize: %v", err)
	}
	h.workers = cfg.Workers
	for _, f := range setup {
		f(h.st)
	}
	var once sync.Once
	d := loopDeps{
		starter:  h.st,
		sockets:  h.socks,
		exits:    h.exits,
		events:   h.events,
		cluster:  cluster,
		output:   h.takeTail,
		sdNotify: func(s string) { h.sd.add(s); h.notes <- s },
		sdStatus: func(s string) { h.sd.add("STATUS=" + s) },
		ready:    func() { once.Do(func() { close(h.ready) }) },
		jitter:   func() float64 { return 0.5 },
		watchdog: watchdog,
		commands: h.cmds,
		hub:      h.hub,
	}
	if deps != nil {
		deps(&d)
	}
	l := newLoop(cfg, cfg.Logger, d)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.result <- l.run(ctx)
		h.hub.close()
	}()
	t.Cleanup(cancel)
	return h
}

// nextStart waits (on the fake clock, at most limit) for the next started
// worker.
func (h *harness) nextStart(limit time.Duration) *fakeProc {
	h.t.Helper()
	select {
	case p := <-h.st.starts:
		return p
	case <-time.After(limit):
		h.t.Fatalf("no worker started within %v", limit)
		return nil
	}
}

// noStart checks that no worker starts within d.
func (h *harness) noStart(d time.Duration) {
	h.t.Helper()
	if d == 0 {
		synctest.Wait()
		select {
		case p := <-h.st.starts:
			h.t.Fatalf("worker %d generation %d started, want none", p.req.slot, p.req.gen)
		default:
		}
		return
	}
	select {
	case p := <-h.st.starts:
		h.t.Fatalf("worker %d generation %d started, want none", p.req.slot, p.req.gen)
	case <-time.After(d):
	}
}

func (h *harness) starts(n int) []*fakeProc {
	h.t.Helper()
	ps := make([]*fakeProc, n)
	for i := range ps {
		ps[i] = h.nextStart(time.Second)
	}
	return ps
}

// startsReady waits for n started workers and reports each ready over IPC.
func (h *harness) startsReady(n int) []*fakeProc {
	h.t.Helper()
	ps := h.starts(n)
	for _, p := range ps {
		h.readyIPC(p)
	}
	return ps
}

// printed makes line the last output of p, as the relay would record it.
func (h *harness) printed(p *fakeProc, line string) {
	t := &tail{}
	t.set([]byte(line), nil)
	h.tailMu.Lock()
	h.tails[p.pid] = t
	h.tailMu.Unlock()
}

func (h *harness) takeTail(pid int) *tail {
	h.tailMu.Lock()
	defer h.tailMu.Unlock()
	t := h.tails[pid]
	delete(h.tails, pid)
	return t
}

func (h *harness) exit(p *fakeProc, s exitStatus) { h.exits <- exitEvent{pid: p.pid, status: s} }

// readyIPC plays a worker's hello and ready message.
func (h *harness) readyIPC(p *fakeProc) {
	h.events <- workerEvent{pid: p.pid, kind: evOnline}
	h.events <- workerEvent{pid: p.pid, kind: evReady, source: ReadyIPC}
}

func (h *harness) signal(sig syscall.Signal) { h.sigs <- sig }

// wantSignal waits for a signal to p, at most limit on the fake clock.
func (h *harness) wantSignal(p *fakeProc, want syscall.Signal, limit time.Duration) {
	h.t.Helper()
	var timeout <-chan time.Time
	if limit == 0 {
		synctest.Wait()
	} else {
		timeout = time.After(limit)
	}
	select {
	case got := <-p.sigs:
		if got != want {
			h.t.Fatalf("worker %d pid %d got %v, want %v", p.req.slot, p.pid, got, want)
		}
	case <-timeout:
		h.t.Fatalf("worker %d pid %d got no %v within %v", p.req.slot, p.pid, want, limit)
	default:
		if limit == 0 {
			h.t.Fatalf("worker %d pid %d got no %v", p.req.slot, p.pid, want)
		}
		select {
		case got := <-p.sigs:
			if got != want {
				h.t.Fatalf("worker %d pid %d got %v, want %v", p.req.slot, p.pid, got, want)
			}
		case <-timeout:
			h.t.Fatalf("worker %d pid %d got no %v within %v", p.req.slot, p.pid, want, limit)
		}
	}
}

func (h *harness) noSignal(p *fakeProc) {
	h.t.Helper()
	synctest.Wait()
	select {
	case got := <-p.sigs:
		h.t.Fatalf("worker %d pid %d got %v, want none", p.req.slot, p.pid, got)
	default:
	}
}

func (h *harness) wait(limit time.Duration) error {
	h.t.Helper()
	select {
	case err := <-h.result:
		return err
	case <-time.After(limit):
		h.t.Fatalf("loop did not end within %v", limit)
		return nil
	}
}

// stop stops the loop gracefully and plays the workers' exits.
func (h *harness) stop(live ...*fakeProc) {
	h.t.Helper()
	h.signal(syscall.SIGTERM)
	for _, p := range live {
		h.wantSignal(p, syscall.SIGTERM, time.Second)
		h.exit(p, exitStatus{code: 0})
	}
	if err := h.wait(time.Minute); err != nil {
		h.t.Fatalf("run after stop = %v, want nil", err)
	}
}

func TestLoopStartsAllSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 3})
		ps := h.starts(3)
		for i, p := range ps {
			if p.req.slot != i || p.req.gen != 1 {
				t.Errorf("start %d: worker %d generation %d, want worker %d generation 1", i, p.req.slot, p.req.gen, i)
			}
		}
		synctest.Wait()
		select {
		case <-h.ready:
		default:
			t.Fatal("ready not signalled with exec readiness")
		}
		if got := <-h.notes; got != "READY=1" {
			t.Errorf("sd_notify = %q, want READY=1", got)
		}
		h.stop(ps...)
		if !strings.Contains(h.logs.String(), "all workers ready") {
			t.Errorf("log lacks %q:\n%s", "all workers ready", h.logs)
		}
	})
}

func TestLoopRestartSameSlotNewGeneration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, MinUptime: time.Second, BackoffMin: 100 * time.Millisecond})
		ps := h.starts(2)
		time.Sleep(2 * time.Second) // up longer than MinUptime
		h.exit(ps[1], exitStatus{signal: syscall.SIGKILL})
		start := time.Now()
		p := h.nextStart(time.Second)
		if d := time.Since(start); d != 0 {
			t.Errorf("restart after %v of uptime took %v, want immediate", 2*time.Second, d)
		}
		if p.req.slot != 1 || p.req.gen != 2 {
			t.Errorf("replacement is worker %d generation %d, want worker 1 generation 2", p.req.slot, p.req.gen)
		}
		// The reaped worker's process group was killed, its resources released.
		h.wantSignal(ps[1], syscall.SIGKILL, time.Second)
		<-ps[1].released
		if !strings.Contains(h.logs.String(), `[WARN]  worker exited: generation=1 pid=2 worker=1 uptime=2s signal=SIGKILL`) {
			t.Errorf("exit log missing:\n%s", h.logs)
		}
		h.stop(ps[0], p)
	})
}

func TestLoopBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{
			Workers: 1, MinUptime: time.Second, BackoffMin: 100 * time.Millisecond,
			BackoffMax: 400 * time.Millisecond, MaxRestarts: -1,
		})
		p := h.nextStart(time.Second)
		// jitter 0.5: delays are 3/4 of 100, 200, 400, 400 ms, never below min.
		want := []time.Duration{100 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond}
		for i, w := range want {
			h.exit(p, exitStatus{code: 1})
			start := time.Now()
			p = h.nextStart(time.Second)
			if d := time.Since(start); d != w {
				t.Errorf("restart %d after %v, want %v", i+1, d, w)
			}
			if p.req.gen != i+2 {
				t.Errorf("restart %d has generation %d, want %d", i+1, p.req.gen, i+2)
			}
		}
		// A worker that stayed up MinUptime resets the backoff.
		time.Sleep(time.Second)
		h.exit(p, exitStatus{code: 1})
		start := time.Now()
		p = h.nextStart(time.Second)
		if d := time.Since(start); d != 0 {
			t.Errorf("restart after min uptime took %v, want immediate", d)
		}
		h.exit(p, exitStatus{code: 1})
		start = time.Now()
		p = h.nextStart(time.Second)
		if d := time.Since(start); d != 100*time.Millisecond {
			t.Errorf("first short-lived restart after reset took %v, want 100ms", d)
		}
		h.stop(p)
	})
}

func TestLoopIntensityExceeded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{
			Workers: 2, MinUptime: time.Second, BackoffMin: 10 * time.Millisecond,
			MaxRestarts: 4, RestartWindow: 10 * time.Second,
		})
		ps := h.starts(2)
		p := ps[1]
		for range 4 {
			h.exit(p, exitStatus{code: 1})
			p = h.nextStart(time.Second)
		}
		h.printed(p, "listen tcp :8080: bind: address already in use")
		h.exit(p, exitStatus{code: 1})
		h.noStart(time.Second)
		// Every other worker is drained.
		h.wantSignal(ps[0], syscall.SIGTERM, time.Second)
		h.exit(ps[0], exitStatus{signal: syscall.SIGTERM})
		err := h.wait(time.Second)
		var ie *IntensityError
		if !errors.As(err, &ie) {
			t.Fatalf("run = %v, want *IntensityError", err)
		}
		const want = `restart intensity exceeded: 5 restarts in 10s (last: worker 1 exited with code 1, after it printed "listen tcp :8080: bind: address already in use")`
		if err.Error() != want {
			t.Errorf("run = %q, want %q", err, want)
		}
		if !strings.Contains(h.logs.String(), "[ERROR] restart intensity exceeded") {
			t.Errorf("log lacks the intensity error:\n%s", h.logs)
		}
	})
}

func TestLoopRestartPolicies(t *testing.T) {
	t.Run("on-failure", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 2, Restart: RestartOnFailure, BackoffMin: time.Millisecond})
			ps := h.starts(2)
			h.exit(ps[0], exitStatus{code: 0})
			h.noStart(time.Second)
			h.exit(ps[1], exitStatus{code: 3})
			p := h.nextStart(time.Second)
			h.exit(p, exitStatus{code: 0})
			if err := h.wait(time.Second); err != nil {
				t.Errorf("run after clean exits = %v, want nil", err)
			}
		})
	})
	t.Run("never", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 1, Restart: RestartNever})
			p := h.nextStart(time.Second)
			h.exit(p, exitStatus{code: 2})
			err := h.wait(time.Second)
			if err == nil || !strings.Contains(err.Error(), "worker 0 exited with code 2") {
				t.Errorf("run = %v, want an error naming worker 0's exit", err)
			}
		})
	})
}

func TestLoopReadyTimeoutRestarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{
			Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}, ReadyTimeout: 5 * time.Second,
			BackoffMin: 100 * time.Millisecond,
		})
		p := h.nextStart(time.Second)
		start := time.Now()
		h.wantSignal(p, syscall.SIGKILL, time.Minute)
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("killed after %v, want 5s", d)
		}
		h.exit(p, exitStatus{signal: syscall.SIGKILL})
		p = h.nextStart(time.Second)
		h.readyIPC(p)
		synctest.Wait()
		select {
		case <-h.ready:
		default:
			t.Fatal("not ready after the replacement said ready")
		}
		if !strings.Contains(h.logs.String(), "reason=\"not ready after 5s\"") {
			t.Errorf("log lacks the reason:\n%s", h.logs)
		}
		h.stop(p)
	})
}

func TestLoopReadyDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyDelay, Delay: 300 * time.Millisecond}})
		p := h.nextStart(time.Second)
		start := time.Now()
		<-h.ready
		if d := time.Since(start); d != 300*time.Millisecond {
			t.Errorf("ready after %v, want 300ms", d)
		}
		h.stop(p)
	})
}

func TestLoopRollingReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 3, Ready: ReadyMode{Kind: ReadyIPC}, KillTimeout: 10 * time.Second})
		old := h.startsReady(3)
		<-h.ready
		<-h.notes // READY=1
		h.signal(syscall.SIGHUP)
		if got := <-h.notes; got != "RELOADING=1" {
			t.Errorf("sd_notify = %q, want RELOADING=1", got)
		}
		var fresh []*fakeProc
		for i := range 3 {
			p := h.nextStart(time.Second)
			if p.req.slot != i || p.req.gen != 2 {
				t.Fatalf("reload started worker %d generation %d, want worker %d generation 2", p.req.slot, p.req.gen, i)
			}
			// The old worker keeps serving until its replacement is ready.
			time.Sleep(time.Second)
			h.noSignal(old[i])
			h.noStart(0)
			h.readyIPC(p)
			h.wantSignal(old[i], syscall.SIGTERM, time.Second)
			select {
			case d := <-old[i].drains:
				if d != 10*time.Second {
					t.Errorf("drain timeout %v, want 10s", d)
				}
			default:
				t.Errorf("worker %d got no drain message", i)
			}
			h.exit(old[i], exitStatus{code: 0})
			fresh = append(fresh, p)
		}
		if got := <-h.notes; got != "READY=1" {
			t.Errorf("sd_notify = %q, want READY=1", got)
		}
		logs := h.logs.String()
		for _, want := range []string{"reload started", "reload done"} {
			if !strings.Contains(logs, want) {
				t.Errorf("log lacks %q:\n%s", want, logs)
			}
		}
		h.stop(fresh...)
	})
}

func TestLoopReloadBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 4, ReloadBatch: 2, Ready: ReadyMode{Kind: ReadyIPC}})
		old := h.startsReady(4)
		h.signal(syscall.SIGHUP)
		a, b := h.nextStart(time.Second), h.nextStart(time.Second)
		h.noStart(time.Second)
		h.readyIPC(a)
		c := h.nextStart(time.Second) // a's slot is done: the batch refills
		if c.req.slot != 2 {
			t.Errorf("third replacement for worker %d, want 2", c.req.slot)
		}
		h.readyIPC(b)
		d := h.nextStart(time.Second)
		h.readyIPC(c)
		h.readyIPC(d)
		for _, p := range old {
			h.wantSignal(p, syscall.SIGTERM, time.Second)
			h.exit(p, exitStatus{code: 0})
		}
		h.stop(a, b, c, d)
	})
}

func TestLoopReloadAbort(t *testing.T) {
	t.Run("ready timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}, ReadyTimeout: 3 * time.Second})
			old := h.startsReady(2)
			h.signal(syscall.SIGHUP)
			n0 := h.nextStart(time.Second)
			h.readyIPC(n0)
			h.wantSignal(old[0], syscall.SIGTERM, time.Second)
			h.exit(old[0], exitStatus{code: 0})
			n1 := h.nextStart(time.Second)
			h.wantSignal(n1, syscall.SIGKILL, 10*time.Second)
			h.exit(n1, exitStatus{signal: syscall.SIGKILL})
			h.noStart(time.Minute)
			h.noSignal(old[1]) // the old worker keeps serving
			logs := h.logs.String()
			if !strings.Contains(logs, `reload aborted: error="reload: worker 1 (pid 4) not ready after 3s"`) {
				t.Errorf("log lacks the abort naming slot and cause:\n%s", logs)
			}
			// A later reload works.
			h.signal(syscall.SIGHUP)
			m0 := h.nextStart(time.Second)
			h.readyIPC(m0)
			h.wantSignal(n0, syscall.SIGTERM, time.Second)
			h.exit(n0, exitStatus{code: 0})
			m1 := h.nextStart(time.Second)
			h.readyIPC(m1)
			h.wantSignal(old[1], syscall.SIGTERM, time.Second)
			h.exit(old[1], exitStatus{code: 0})
			h.stop(m0, m1)
		})
	})
	t.Run("replacement exits", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}})
			old := h.nextStart(time.Second)
			h.readyIPC(old)
			h.signal(syscall.SIGHUP)
			n := h.nextStart(time.Second)
			h.exit(n, exitStatus{code: 1})
			h.noStart(time.Minute)
			h.noSignal(old)
			if !strings.Contains(h.logs.String(), "reload: worker 0 (pid 2) exited with code 1 before it was ready") {
				t.Errorf("log lacks the abort:\n%s", h.logs)
			}
			h.stop(old)
		})
	})
}

func TestLoopSecondHUPRestartsReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}})
		old := h.startsReady(2)
		h.signal(syscall.SIGHUP)
		n0 := h.nextStart(time.Second)
		h.signal(syscall.SIGHUP)
		h.wantSignal(n0, syscall.SIGKILL, time.Second) // the first reload's replacement
		h.exit(n0, exitStatus{signal: syscall.SIGKILL})
		m0 := h.nextStart(time.Second)
		if m0.req.slot != 0 || m0.req.gen != 3 {
			t.Errorf("restarted reload began with worker %d generation %d, want worker 0 generation 3", m0.req.slot, m0.req.gen)
		}
		h.readyIPC(m0)
		h.wantSignal(old[0], syscall.SIGTERM, time.Second)
		m1 := h.nextStart(time.Second)
		h.readyIPC(m1)
		h.wantSignal(old[1], syscall.SIGTERM, time.Second)
		h.exit(old[0], exitStatus{code: 0})
		h.exit(old[1], exitStatus{code: 0})
		h.stop(m0, m1)
	})
}

func TestLoopCrashDuringReloadWaitsForReplacement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}})
		old := h.nextStart(time.Second)
		h.readyIPC(old)
		h.signal(syscall.SIGHUP)
		n := h.nextStart(time.Second)
		h.exit(old, exitStatus{code: 1})
		h.noStart(10 * time.Second) // the replacement takes over the slot
		h.readyIPC(n)
		h.stop(n)
	})
}

func TestLoopGracefulStop(t *testing.T) {
	t.Run("kill timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 2, KillTimeout: 5 * time.Second, StopSignal: syscall.SIGINT})
			ps := h.starts(2)
			h.signal(syscall.SIGTERM)
			h.wantSignal(ps[0], syscall.SIGINT, time.Second)
			h.wantSignal(ps[1], syscall.SIGINT, time.Second)
			if got := <-h.notes; got != "READY=1" {
				t.Errorf("sd_notify = %q, want READY=1", got)
			}
			if got := <-h.notes; got != "STOPPING=1" {
				t.Errorf("sd_notify = %q, want STOPPING=1", got)
			}
			h.exit(ps[0], exitStatus{code: 0})
			start := time.Now()
			h.wantSignal(ps[1], syscall.SIGKILL, time.Minute) // ignores its stop signal
			if d := time.Since(start); d != 5*time.Second {
				t.Errorf("SIGKILL after %v, want 5s", d)
			}
			select {
			case err := <-h.result:
				t.Fatalf("run returned %v before the last worker exited", err)
			default:
			}
			h.exit(ps[1], exitStatus{signal: syscall.SIGKILL})
			if err := h.wait(time.Second); err != nil {
				t.Errorf("run = %v, want nil", err)
			}
			h.noStart(0)
		})
	})
	t.Run("second signal", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 1})
			p := h.nextStart(time.Second)
			h.signal(syscall.SIGINT)
			h.wantSignal(p, syscall.SIGTERM, time.Second)
			// coreutils timeout signals the child, then its process group:
			// a second signal at once is the same request.
			time.Sleep(secondStopGrace - time.Millisecond)
			h.signal(syscall.SIGTERM)
			h.noSignal(p)
			time.Sleep(time.Millisecond)
			h.signal(syscall.SIGTERM)
			h.wantSignal(p, syscall.SIGKILL, 0)
			h.exit(p, exitStatus{signal: syscall.SIGKILL})
			if err := h.wait(time.Second); err != nil {
				t.Errorf("run = %v, want nil", err)
			}
		})
	})
	t.Run("quit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 2})
			ps := h.starts(2)
			h.signal(syscall.SIGQUIT)
			for _, p := range ps {
				h.wantSignal(p, syscall.SIGKILL, 0)
				h.exit(p, exitStatus{signal: syscall.SIGKILL})
			}
			if err := h.wait(time.Second); err != nil {
				t.Errorf("run = %v, want nil", err)
			}
		})
	})
	t.Run("context", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := startLoop(t, Options{Workers: 1, Restart: RestartAlways})
			p := h.nextStart(time.Second)
			h.cancel()
			h.wantSignal(p, syscall.SIGTERM, time.Second)
			h.exit(p, exitStatus{code: 1}) // no restart while stopping
			if err := h.wait(time.Second); err != nil {
				t.Errorf("run = %v, want nil", err)
			}
			h.noStart(0)
		})
	})
}

func TestLoopScale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2})
		ps := h.starts(2)
		h.signal(syscall.SIGTTIN)
		p2 := h.nextStart(time.Second)
		if p2.req.slot != 2 || p2.req.gen != 1 {
			t.Errorf("TTIN started worker %d generation %d, want worker 2 generation 1", p2.req.slot, p2.req.gen)
		}
		h.signal(syscall.SIGTTOU)
		h.wantSignal(p2, syscall.SIGTERM, time.Second)
		if got := <-h.socks.dropped; got != 2 {
			t.Errorf("dropped sockets of slot %d, want 2", got)
		}
		h.exit(p2, exitStatus{code: 0})
		h.noStart(time.Minute)
		h.signal(syscall.SIGTTIN) // slot 2 again: generations go on
		p3 := h.nextStart(time.Second)
		if p3.req.slot != 2 || p3.req.gen != 2 {
			t.Errorf("second TTIN started worker %d generation %d, want worker 2 generation 2", p3.req.slot, p3.req.gen)
		}
		h.stop(append(ps, p3)...)
	})
}

func TestLoopStartFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2}, func(st *fakeStarter) { st.failAt = 2 })
		p := h.nextStart(time.Second)
		h.wantSignal(p, syscall.SIGTERM, time.Second)
		h.exit(p, exitStatus{code: 0})
		err := h.wait(time.Second)
		if err == nil || !strings.Contains(err.Error(), "start worker 1: no such thing") {
			t.Errorf("run = %v, want the start error of worker 1", err)
		}
	})
}

func TestLoopRestartStartFailureRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, BackoffMin: 50 * time.Millisecond}, func(st *fakeStarter) { st.failAt = 2 })
		p := h.nextStart(time.Second)
		h.exit(p, exitStatus{code: 1})
		start := time.Now()
		// Start 2 (after 50ms) fails; start 3 follows after the next backoff (75ms).
		p = h.nextStart(time.Second)
		if d := time.Since(start); d != 125*time.Millisecond {
			t.Errorf("retry after %v, want 125ms", d)
		}
		h.stop(p)
	})
}

func TestLoopReadyOfOtherModeIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyNotify}})
		p := h.nextStart(time.Second)
		h.readyIPC(p)
		synctest.Wait()
		select {
		case <-h.ready:
			t.Fatal("an ipc ready message made a worker ready under --ready notify")
		default:
		}
		h.stop(p)
	})
}

func TestLoopProtocolErrorRestartsWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, MinUptime: time.Second})
		p := h.nextStart(time.Second)
		time.Sleep(2 * time.Second)
		h.events <- workerEvent{pid: p.pid, kind: evProtocol, err: errors.New("ipc: frame too large")}
		h.wantSignal(p, syscall.SIGKILL, time.Second)
		h.exit(p, exitStatus{signal: syscall.SIGKILL})
		q := h.nextStart(time.Second)
		if q.req.slot != 0 || q.req.gen != 2 {
			t.Errorf("replacement worker %d generation %d, want worker 0 generation 2", q.req.slot, q.req.gen)
		}
		if !strings.Contains(h.logs.String(), `reason="ipc protocol error: ipc: frame too large"`) {
			t.Errorf("exit log lacks the protocol error:\n%s", h.logs)
		}
		h.stop(q)
	})
}

func TestLoopScaleDownDuringReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}})
		old := h.startsReady(2)
		h.signal(syscall.SIGHUP)
		n0 := h.nextStart(time.Second)
		h.readyIPC(n0)
		h.wantSignal(old[0], syscall.SIGTERM, time.Second)
		n1 := h.nextStart(time.Second)
		h.signal(syscall.SIGTTOU) // removes slot 1, mid-replacement
		h.wantSignal(n1, syscall.SIGKILL, time.Second)
		h.wantSignal(old[1], syscall.SIGTERM, time.Second)
		<-h.socks.dropped
		h.exit(n1, exitStatus{signal: syscall.SIGKILL})
		h.exit(old[1], exitStatus{code: 0})
		h.exit(old[0], exitStatus{code: 0})
		h.noStart(time.Minute)
		if !strings.Contains(h.logs.String(), "reload done") {
			t.Errorf("reload did not finish after its last slot was removed:\n%s", h.logs)
		}
		h.stop(n0)
	})
}

func TestLoopMaintenanceStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2})
		ps := h.starts(2)
		h.signal(syscall.SIGWINCH)
		for _, p := range ps {
			h.wantSignal(p, syscall.SIGTERM, time.Second)
			h.exit(p, exitStatus{code: 0})
		}
		h.signal(syscall.SIGTTIN) // a slot more, started with the others
		h.noStart(time.Minute)
		select {
		case err := <-h.result:
			t.Fatalf("run returned %v while workers were stopped for maintenance", err)
		default:
		}
		h.signal(syscall.SIGHUP)
		back := h.starts(3)
		for i, p := range back {
			want := 2
			if i == 2 {
				want = 1
			}
			if p.req.slot != i || p.req.gen != want {
				t.Errorf("after HUP: worker %d generation %d, want worker %d generation %d", p.req.slot, p.req.gen, i, want)
			}
		}
		h.stop(back...)
	})
}

func TestLoopWatchdog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoopWatchdog(t, Options{Workers: 1}, 10*time.Second)
		p := h.nextStart(time.Second)
		if got := <-h.notes; got != "READY=1" {
			t.Fatalf("sd_notify %q, want READY=1", got)
		}
		start := time.Now()
		for i := range 3 {
			if got := <-h.notes; got != "WATCHDOG=1" {
				t.Fatalf("sd_notify %q, want WATCHDOG=1", got)
			}
			if d := time.Since(start); d != time.Duration(i+1)*10*time.Second {
				t.Errorf("watchdog %d after %v, want %v", i+1, d, time.Duration(i+1)*10*time.Second)
			}
		}
		h.stop(p)
	})
}

func TestWatchdogInterval(t *testing.T) {
	env := func(kv map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
	}
	for _, tc := range []struct {
		env  map[string]string
		want time.Duration
	}{
		{map[string]string{}, 0},
		{map[string]string{"WATCHDOG_USEC": "30000000"}, 15 * time.Second},
		{map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15 * time.Second},
		{map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, 0},
		{map[string]string{"WATCHDOG_USEC": "soon"}, 0},
	} {
		if got := watchdogInterval(env(tc.env), 42); got != tc.want {
			t.Errorf("watchdogInterval(%v) = %v, want %v", tc.env, got, tc.want)
		}
	}
}
