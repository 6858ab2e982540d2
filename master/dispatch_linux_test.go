package master

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
)

// Tests of Dispatch with real worker processes: job-worker helpers speak
// the protocol directly (package worker must not be linked here).

func init() { registerHelper("job-worker", helperJobWorker) }

// jobBody is a test job: N is echoed back with the attempt and the pid;
// Crash makes the worker exit 3 without answering; Stop makes it stop
// itself (SIGSTOP) on the job's first attempt, so that it neither answers
// nor sends heartbeats until it is continued.
type jobBody struct {
	N     int  `msgpack:"n"`
	Crash bool `msgpack:"crash"`
	Hold  bool `msgpack:"hold"` // never answered
	Stop  bool `msgpack:"stop"`
}

type jobAnswerBody struct {
	N       int `msgpack:"n"`
	Attempt int `msgpack:"attempt"`
	PID     int `msgpack:"pid"`
}

func helperJobWorker() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "job-worker:", err)
		return 2
	}
	conn, _, hello, err := dialMaster()
	if err != nil {
		return fail(err)
	}
	if hello.HeartbeatMS > 0 {
		go func() {
			t := time.NewTicker(time.Duration(hello.HeartbeatMS) * time.Millisecond)
			defer t.Stop()
			for range t.C {
				m, _ := ipc.NewMessage(ipc.KindHeartbeat, ipc.Heartbeat{})
				if conn.Send(m) != nil {
					return
				}
			}
		}()
	}
	ready, _ := ipc.NewMessage(ipc.KindReady, nil)
	if err := conn.Send(ready); err != nil {
		return fail(err)
	}
	for {
		m, err := conn.Recv()
		if err != nil {
			return 0
		}
		_ = m.CloseFDs()
		switch m.Kind {
		case ipc.KindDrain:
			return 0
		case ipc.KindJob:
			var j ipc.Job
			var b jobBody
			if err := m.Decode(&j); err != nil {
				return fail(err)
			}
			if err := (&ipc.Message{Body: j.Body}).Decode(&b); err != nil {
				return fail(err)
			}
			if b.Crash {
				os.Exit(3)
			}
			if b.Hold {
				continue
			}
			if b.Stop && j.Attempt == 1 {
				_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
				continue // continued: the job went to another worker meanwhile
			}
			r, err := m.Reply(ipc.KindResult, jobAnswerBody{N: b.N, Attempt: j.Attempt, PID: os.Getpid()})
			if err != nil {
				return fail(err)
			}
			if err := conn.Send(r); err != nil {
				return 0
			}
		}
	}
}

func startJobCluster(t *testing.T, opts Options) *apiCluster {
	usedHelpers.Store("job-worker", true)
	opts.HeartbeatInterval = 100 * time.Millisecond
	opts.MinUptime = time.Millisecond
	opts.BackoffMin, opts.BackoffMax = time.Millisecond, 10*time.Millisecond
	opts.MaxRestarts = -1
	return startAPI(t, opts, envHelper+"=job-worker")
}

func TestDispatchSurvivesKilledWorkers(t *testing.T) {
	c := startJobCluster(t, Options{Workers: 4, JobAttempts: 10})
	const jobs = 10000
	var (
		next, done atomic.Int64
		mu         sync.Mutex
		answers    = make([]int, jobs)
		errs       []error
		wg         sync.WaitGroup
	)
	killed := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			for {
				n := int(next.Add(1)) - 1
				if n >= jobs {
					return
				}
				res, err := c.m.Dispatch(context.Background(), jobBody{N: n})
				var a jobAnswerBody
				if err == nil {
					err = res.Decode(&a)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if a.N != n {
					errs = append(errs, fmt.Errorf("job %d answered as %d", n, a.N))
				} else {
					answers[n]++
				}
				mu.Unlock()
				if done.Add(1) == jobs/4 {
					close(killed)
				}
			}
		})
	}
	// Two workers die with jobs outstanding, a quarter into the run.
	<-killed
	ws := c.m.Workers()
	for _, w := range ws[:2] {
		if err := syscall.Kill(w.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d jobs failed; first: %v", len(errs), errs[0])
	}
	for n, k := range answers {
		if k != 1 {
			t.Errorf("job %d got %d answers, want exactly 1", n, k)
			break
		}
	}
	t.Logf("%d jobs, %d redelivered after the kills", jobs, c.m.Redeliveries())
}

// A worker that holds a job and stops sending heartbeats (it is stopped)
// loses the job to the other worker once it counts as hung, without being
// killed (HeartbeatTimeout is far off).
func TestDispatchRedeliversJobOfHungWorker(t *testing.T) {
	c := startJobCluster(t, Options{Workers: 2, HeartbeatTimeout: time.Hour})
	t.Cleanup(func() {
		// Runs before the cluster's own cleanup stops it.
		for _, w := range c.m.Workers() {
			_ = syscall.Kill(w.PID, syscall.SIGCONT)
		}
	})
	pids := func() []int {
		var ps []int
		for _, w := range c.m.Workers() {
			ps = append(ps, w.PID)
		}
		slices.Sort(ps)
		return ps
	}
	before := pids()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.m.Dispatch(ctx, jobBody{N: 7, Stop: true})
	var a jobAnswerBody
	if err == nil {
		err = res.Decode(&a)
	}
	if err != nil {
		t.Fatalf("Dispatch of a job whose worker stops = %v", err)
	}
	if a.N != 7 || a.Attempt != 2 || res.Attempts != 2 {
		t.Errorf("answer %+v after %d attempts, want job 7 answered on attempt 2", a, res.Attempts)
	}
	if after := pids(); !slices.Equal(after, before) {
		t.Errorf("workers %v after the job, %v before: want the hung one left alone", after, before)
	}
	if !slices.Contains(before, a.PID) {
		t.Errorf("answered by pid %d, not one of the workers %v", a.PID, before)
	}
	if got := c.m.Redeliveries(); got != 1 {
		t.Errorf("%d redeliveries, want 1", got)
	}
}

func TestDispatchJobThatAlwaysCrashesItsWorker(t *testing.T) {
	c := startJobCluster(t, Options{Workers: 3, JobAttempts: 3})
	_, err := c.m.Dispatch(context.Background(), jobBody{Crash: true})
	if !errors.Is(err, ErrJobOrphaned) || !strings.Contains(err.Error(), "3 times") {
		t.Fatalf("Dispatch of a crashing job = %v, want ErrJobOrphaned after 3 attempts", err)
	}
	if got := c.m.Redeliveries(); got != 2 {
		t.Errorf("%d redeliveries, want 2", got)
	}
	// The cluster still works: the crashed workers were replaced and
	// ordinary jobs are done.
	for n := range 20 {
		res, err := c.m.Dispatch(context.Background(), jobBody{N: n})
		var a jobAnswerBody
		if err == nil {
			err = res.Decode(&a)
		}
		if err != nil || a.N != n || a.Attempt != 1 {
			t.Fatalf("job %d after the crashing one = %+v, %v", n, a, err)
		}
	}
	// Each attempt of the crashing job was lost with its worker.
	var lost, completed, failed uint64
	for _, s := range c.m.SlotStats() {
		lost, completed, failed = lost+s.JobsLost, completed+s.JobsCompleted, failed+s.JobsFailed
	}
	if lost != 3 || completed != 20 || failed != 0 {
		t.Errorf("SlotStats: %d jobs lost, %d completed, %d failed; want 3, 20 and 0", lost, completed, failed)
	}
}

func TestDispatchFailFastWithNoRoom(t *testing.T) {
	c := startJobCluster(t, Options{Workers: 1, MaxJobs: 1, JobsFailFast: true})
	// A job the worker never answers holds the only slot (once it got it:
	// the jobs below take it in turns until then).
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() {
		for {
			_, err := c.m.Dispatch(ctx, jobBody{N: 1, Hold: true})
			if !errors.Is(err, ErrJobQueueFull) {
				held <- err
				return
			}
		}
	}()
	var err error
	for {
		// Until the held job takes the slot, jobs go through.
		if _, err = c.m.Dispatch(context.Background(), jobBody{N: 2}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrJobQueueFull) {
		t.Errorf("Dispatch with the only slot taken = %v, want ErrJobQueueFull", err)
	}
	cancel()
	if err := <-held; !errors.Is(err, context.Canceled) {
		t.Errorf("held job after cancel = %v, want context.Canceled", err)
	}
	if _, err := c.m.Dispatch(context.Background(), jobBody{N: 3}); err != nil {
		t.Errorf("a job with room again = %v", err)
	}
}

func TestDispatchBeforeRun(t *testing.T) {
	m, err := New(Options{Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Dispatch(context.Background(), 1); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Dispatch before Run = %v, want ErrNotRunning", err)
	}
}
