package master

import (
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// Worker health in the loop, on the fake starter and the fake clock:
// hangs, watchdog, memory and request limits, and the exit causes they
// leave in the log.

func (h *harness) heartbeat(p *fakeProc) { h.events <- workerEvent{pid: p.pid, kind: evHeartbeat} }

// wantLog waits (on the fake clock) until the loop has logged want.
func (h *harness) wantLog(want string) {
	h.t.Helper()
	synctest.Wait()
	if logs := h.logs.String(); !strings.Contains(logs, want) {
		h.t.Fatalf("log lacks %q:\n%s", want, logs)
	}
}

func (h *harness) scaleTo(n int) {
	h.t.Helper()
	c := &scaleCmd{n: n, reply: make(chan error, 1)}
	h.cmds <- c
	if err := <-c.reply; err != nil {
		h.t.Fatalf("scale to %d: %v", n, err)
	}
}

func (h *harness) workerInfo(slot int) WorkerInfo {
	h.t.Helper()
	c := &workersCmd{reply: make(chan []WorkerInfo, 1)}
	h.cmds <- c
	for _, w := range <-c.reply {
		if w.Slot == slot && !w.Replacing {
			return w
		}
	}
	h.t.Fatalf("no worker in slot %d", slot)
	return WorkerInfo{}
}

func TestLoopHangReplacedNewFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub := newEventHub()
		sub := hub.subscribe(64)
		h := startLoopHub(t, Options{Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}, KillTimeout: 5 * time.Second}, 0, hub, nil)
		ps := h.startsReady(2)
		<-h.ready
		h.heartbeat(ps[0])
		h.heartbeat(ps[1])
		// Worker 1 keeps heartbeating; worker 0 falls silent.
		for range 9 {
			time.Sleep(time.Second)
			h.heartbeat(ps[1])
		}
		h.noStart(0)
		time.Sleep(time.Second) // 10s: the default timeout, ten intervals of 1s
		h.heartbeat(ps[1])
		p := h.nextStart(time.Millisecond)
		if p.req.slot != 0 || p.req.gen != 2 {
			t.Fatalf("started worker %d generation %d, want worker 0 generation 2", p.req.slot, p.req.gen)
		}
		h.wantLog("worker hung")
		// The hung one serves (what it can) until its replacement is ready.
		h.noSignal(ps[0])
		if w := h.workerInfo(0); w.Hangs != 1 {
			t.Errorf("WorkerInfo.Hangs = %d, want 1", w.Hangs)
		}
		h.readyIPC(p)
		h.heartbeat(p)
		h.wantSignal(ps[0], syscall.SIGTERM, 0)
		h.wantSignal(ps[0], syscall.SIGKILL, 6*time.Second)
		h.exit(ps[0], exitStatus{signal: syscall.SIGKILL})
		h.wantLog(`cause="killed by clusterd: drain deadline passed (kill timeout 5s) while draining for hang: no heartbeat for 10s"`)
		h.noStart(0)
		if w := h.workerInfo(0); !strings.HasPrefix(w.LastCause, "killed by clusterd: drain deadline passed") || w.Restarts != 0 {
			t.Errorf("WorkerInfo = %+v, want the hang's cause and no restart counted", w)
		}
		h.heartbeat(ps[1])
		h.stop(ps[1], p)
		var hang, exit *Event
		for e := range sub.C {
			switch {
			case e.Kind == EventHang:
				hang = &e
			case e.Kind == EventExit && e.PID == ps[0].pid:
				exit = &e
			}
		}
		if hang == nil || hang.PID != ps[0].pid || hang.Reason != "hang: no heartbeat for 10s" {
			t.Errorf("hang event %+v, want one for pid %d", hang, ps[0].pid)
		}
		if exit == nil || !exit.ExitedAfterDisconnect || !strings.Contains(exit.Cause, "drain deadline passed") {
			t.Errorf("exit event %+v, want a planned exit with the drain deadline as cause", exit)
		}
	})
}

func TestLoopWorkerWithoutHeartbeatsIsNotWatched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}})
		ps := h.startsReady(1)
		h.noStart(time.Minute)
		h.stop(ps...)
	})
}

func TestLoopHeartbeatTimeoutOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}, HeartbeatTimeout: -1})
		ps := h.startsReady(1)
		h.heartbeat(ps[0])
		h.noStart(time.Minute)
		h.stop(ps...)
	})
}

func TestLoopHangReplacementFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{
			Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}, HeartbeatInterval: 100 * time.Millisecond,
			MinUptime: time.Millisecond,
		})
		ps := h.startsReady(1)
		h.heartbeat(ps[0])
		p := h.nextStart(2 * time.Second)
		h.exit(p, exitStatus{code: 1})
		// The hung worker cannot serve and has no replacement: it is
		// killed as a failure, and the restart policy starts another.
		h.wantSignal(ps[0], syscall.SIGKILL, 0)
		h.exit(ps[0], exitStatus{signal: syscall.SIGKILL})
		h.wantLog("its replacement failed")
		again := h.nextStart(time.Second)
		h.readyIPC(again)
		if w := h.workerInfo(0); w.Restarts != 1 || w.Hangs != 1 {
			t.Errorf("WorkerInfo = %+v, want 1 restart and 1 hang", w)
		}
		h.stop(again)
	})
}

func TestLoopWatchdogKeepAlives(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoop(t, Options{Workers: 2, Watchdog: 2 * time.Second})
		ps := h.starts(2)
		wd := func(p *fakeProc) { h.events <- workerEvent{pid: p.pid, kind: evWatchdog} }
		wd(ps[0])
		wd(ps[1])
		for range 5 {
			time.Sleep(1900 * time.Millisecond)
			wd(ps[1]) // keeps sending: left alone
		}
		// Worker 0 sent one and stopped: replaced once 2s passed.
		p := h.nextStart(time.Millisecond)
		if p.req.slot != 0 {
			t.Fatalf("replacement in slot %d, want 0", p.req.slot)
		}
		h.wantLog("hang: no WATCHDOG=1 for 2s")
		h.wantSignal(ps[0], syscall.SIGTERM, 0) // ReadyExec: the replacement is ready at once
		h.exit(ps[0], exitStatus{code: 0})
		h.noSignal(ps[1])
		wd(ps[1])
		h.stop(ps[1], p)
	})
}

func TestLoopMaxMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rss := make(chan map[int]int64, 1)
		h := startLoopWith(t, Options{
			Workers: 2, Ready: ReadyMode{Kind: ReadyIPC}, MaxMemory: 48 << 20, SampleInterval: time.Second,
		}, 0, newEventHub(), nil, func(d *loopDeps) {
			d.memory = func([]int) (map[int]int64, error) {
				select {
				case m := <-rss:
					return m, nil
				default:
					return map[int]int64{}, nil
				}
			}
		})
		ps := h.startsReady(2)
		rss <- map[int]int64{ps[0].pid: 100 << 20, ps[1].pid: 48 << 20}
		p := h.nextStart(2 * time.Second)
		if p.req.slot != 0 {
			t.Fatalf("replacement in slot %d, want 0", p.req.slot)
		}
		h.wantLog(`worker over memory limit: generation=1 pid=1 worker=0 rss=100.0MiB limit=48.0MiB rss_bytes=104857600 limit_bytes=50331648`)
		h.noSignal(ps[0])
		h.noSignal(ps[1]) // at the limit is not over it
		h.readyIPC(p)
		h.wantSignal(ps[0], syscall.SIGTERM, 0)
		h.exit(ps[0], exitStatus{code: 0})
		h.wantLog(`cause="exited with code 0 after clusterd asked it to stop (memory limit: rss 100.0MiB over 48.0MiB)"`)
		if w := h.workerInfo(1); w.Memory != 48<<20 {
			t.Errorf("WorkerInfo.Memory = %d, want %d", w.Memory, 48<<20)
		}
		h.stop(ps[1], p)
	})
}

func TestLoopRetireRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The harness's jitter is 0.5: 100 + 0.5*(10+1) = 105.
		h := startLoop(t, Options{Workers: 1, Ready: ReadyMode{Kind: ReadyIPC}, RetireRequests: 100, RetireJitter: 10})
		ps := h.startsReady(1)
		stats := func(n int64) {
			h.events <- workerEvent{pid: ps[0].pid, kind: evStats, stats: map[string]int64{RequestsStat: n}}
		}
		stats(104)
		h.noStart(0)
		stats(105)
		p := h.nextStart(time.Millisecond)
		h.wantLog("max requests: served 105 of 105")
		h.readyIPC(p)
		h.wantSignal(ps[0], syscall.SIGTERM, 0)
		h.exit(ps[0], exitStatus{code: 0})
		h.stop(p)
	})
}

func TestLoopOOMKillCause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ooms uint64 = 7
		h := startLoopWith(t, Options{Workers: 1, MinUptime: time.Millisecond}, 0, newEventHub(), nil, func(d *loopDeps) {
			d.oomKills = func() (uint64, bool) { return ooms, true }
		})
		p := h.nextStart(time.Second)
		h.exit(p, exitStatus{signal: syscall.SIGKILL})
		h.wantLog(`cause="killed by signal SIGKILL from another process"`)
		p = h.nextStart(time.Second)
		synctest.Wait()
		ooms = 8 // the loop only reads it while the test waits
		h.exit(p, exitStatus{signal: syscall.SIGKILL})
		h.wantLog(`cause="killed by the kernel's OOM killer`)
		p = h.nextStart(time.Second)
		h.stop(p)
	})
}

func TestExitCause(t *testing.T) {
	l := &loop{cfg: &config{Options: Options{KillTimeout: 3 * time.Second, StopSignal: syscall.SIGTERM}}}
	for _, tc := range []struct {
		name   string
		w      worker
		status exitStatus
		oom    bool
		want   string
	}{
		{"crash code", worker{}, exitStatus{code: 2}, false, "crashed: exit code 2"},
		{"crash signal", worker{}, exitStatus{signal: syscall.SIGSEGV}, false, "crashed: signal SIGSEGV"},
		{"clean exit", worker{}, exitStatus{}, false, "exited by itself with code 0"},
		{"someone else", worker{}, exitStatus{signal: syscall.SIGTERM}, false, "killed by signal SIGTERM from another process"},
		{"oom", worker{}, exitStatus{signal: syscall.SIGKILL}, true, "killed by the kernel's OOM killer (signal SIGKILL, the oom_kill count moved)"},
		{"oom counter but clusterd killed it", worker{killed: true, why: "reload aborted"}, exitStatus{signal: syscall.SIGKILL}, true, "killed by clusterd: reload aborted"},
		{"drained", worker{signalled: true, why: "replaced by reload"}, exitStatus{}, false, "exited with code 0 after clusterd asked it to stop (replaced by reload)"},
		{"stop signal default action", worker{signalled: true, why: "stop"}, exitStatus{signal: syscall.SIGTERM}, false, "stopped by clusterd (stop): signal SIGTERM"},
		{"deadline with connections", worker{killed: true, deadline: true, why: "stop", stats: map[string]int64{ConnectionsStat: 3}}, exitStatus{signal: syscall.SIGKILL}, false,
			"killed by clusterd: drain deadline passed (kill timeout 3s, 3 connections still open) while draining for stop"},
		{"hang killed", worker{killed: true, why: "hang: no heartbeat for 2s"}, exitStatus{signal: syscall.SIGKILL}, false, "killed by clusterd: hang: no heartbeat for 2s"},
		{"crash while draining", worker{signalled: true, why: "stop"}, exitStatus{signal: syscall.SIGABRT}, false, "crashed: signal SIGABRT (while stopping for stop)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := l.exitCause(&tc.w, tc.status, tc.oom); got != tc.want {
				t.Errorf("exitCause(%s) = %q, want %q", tc.status, got, tc.want)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 48 << 20: "48.0MiB", 3 << 29: "1.5GiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestLoopDumpBeforeKill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var recorded []string
		h := startLoopWith(t, Options{Workers: 1, KillTimeout: 2 * time.Second, DumpSignal: syscall.SIGQUIT, DumpWait: 500 * time.Millisecond},
			0, newEventHub(), nil, func(d *loopDeps) {
				d.threads = func(w *worker, why string) { recorded = append(recorded, why) }
			})
		p := h.nextStart(time.Second)
		h.signal(syscall.SIGTERM)
		h.wantSignal(p, syscall.SIGTERM, 0)
		h.wantSignal(p, syscall.SIGQUIT, 3*time.Second)
		if len(recorded) != 1 || recorded[0] != "drain deadline passed" {
			t.Errorf("threads recorded for %q, want once for the drain deadline", recorded)
		}
		h.noSignal(p)
		h.wantSignal(p, syscall.SIGKILL, time.Second)
		h.exit(p, exitStatus{signal: syscall.SIGKILL})
		h.wantLog(`cause="killed by clusterd: drain deadline passed (kill timeout 2s) while draining for stop, after a dump with SIGQUIT"`)
		if err := h.wait(time.Second); err != nil {
			t.Errorf("run = %v, want nil", err)
		}
	})
}

func TestLoopAutoscale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		queue := make(chan int, 1)
		last := 0
		h := startLoopWith(t, Options{
			Workers: 1, MaxWorkers: 3, ScaleInterval: 100 * time.Millisecond, ScaleUpAfter: 300 * time.Millisecond,
			ScaleDownAfter: time.Second, ScaleCooldown: 500 * time.Millisecond,
		}, 0, newEventHub(), nil, func(d *loopDeps) {
			d.sockets.(*fakeSockets).queue = func() (int, int, bool) {
				select {
				case last = <-queue:
				default:
				}
				return last, 128, true
			}
		})
		first := h.nextStart(time.Second)
		h.noStart(time.Second) // an empty queue: nothing to do at MIN
		queue <- 5
		// Three busy samples (300ms) add one; the cool-down holds the next
		// back for 500ms (the samples during it count).
		second := h.nextStart(400 * time.Millisecond)
		h.wantLog(`autoscale: adding a worker: workers=2 min=1 max=3 queue=5 queue_peak=5 backlog=128 busy_for=300ms`)
		h.noStart(400 * time.Millisecond)
		third := h.nextStart(200 * time.Millisecond)
		if second.req.slot != 1 || third.req.slot != 2 {
			t.Fatalf("slots %d, %d started, want 1 and 2", second.req.slot, third.req.slot)
		}
		h.noStart(2 * time.Second) // at MAX, however long the queue stays
		queue <- 0
		// Idle for ScaleDownAfter: the highest slot drains, then after the
		// cool-down and another second the next one.
		h.wantSignal(third, syscall.SIGTERM, 1200*time.Millisecond)
		h.exit(third, exitStatus{code: 0})
		h.wantLog("autoscale: retiring a worker: workers=2 min=1 max=3 queue=0 idle_for=1s")
		h.noSignal(second)
		h.wantSignal(second, syscall.SIGTERM, 2*time.Second)
		h.exit(second, exitStatus{code: 0})
		h.noSignal(first)
		time.Sleep(5 * time.Second)
		h.noSignal(first) // at MIN
		h.stop(first)
	})
}

func TestLoopAutoscaleWaitsForBusyWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startLoopWith(t, Options{
			Workers: 1, MaxWorkers: 2, Ready: ReadyMode{Kind: ReadyIPC}, ScaleInterval: 100 * time.Millisecond,
			ScaleUpAfter: 100 * time.Millisecond, ScaleDownAfter: 100 * time.Millisecond, ScaleCooldown: 100 * time.Millisecond,
		}, 0, newEventHub(), nil, func(d *loopDeps) {
			d.sockets.(*fakeSockets).queue = func() (int, int, bool) { return 0, 128, true }
		})
		ps := h.startsReady(1)
		h.scaleTo(2)
		p := h.nextStart(time.Second)
		h.readyIPC(p)
		// An empty queue, but the library workers hold 5 open connections.
		for _, w := range []*fakeProc{ps[0], p} {
			h.events <- workerEvent{pid: w.pid, kind: evStats, stats: map[string]int64{ConnectionsStat: 5}}
		}
		time.Sleep(2 * time.Second)
		h.noSignal(p)
		h.events <- workerEvent{pid: p.pid, kind: evStats, stats: map[string]int64{ConnectionsStat: 0}}
		h.events <- workerEvent{pid: ps[0].pid, kind: evStats, stats: map[string]int64{ConnectionsStat: 1}}
		h.wantSignal(p, syscall.SIGTERM, time.Second)
		h.exit(p, exitStatus{code: 0})
		h.stop(ps[0])
	})
}

func TestLoopNoSamplingWithoutRange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sampled := 0
		h := startLoopWith(t, Options{Workers: 2, MaxWorkers: 2}, 0, newEventHub(), nil, func(d *loopDeps) {
			d.sockets.(*fakeSockets).queue = func() (int, int, bool) { sampled++; return 9, 128, true }
			d.memory = func([]int) (map[int]int64, error) { sampled++; return nil, nil }
		})
		ps := h.starts(2)
		time.Sleep(time.Minute)
		if sampled != 0 {
			t.Errorf("sampled %d times with MIN == MAX and no memory limit, want 0", sampled)
		}
		h.stop(ps...)
	})
}
