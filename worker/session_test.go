package worker

import (
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

// TestHandlersBound: with MaxConcurrentRequests handlers running, run
// waits for one of them to end; the goroutines they ran on take the next
// handlers rather than new ones being started.
func TestHandlersBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHandlers(func(f func()) { f() })
		release := make(chan struct{})
		var running atomic.Int32
		block := func() {
			running.Add(1)
			<-release
			running.Add(-1)
		}
		for range MaxConcurrentRequests {
			h.run(block)
		}
		var ranLast atomic.Bool
		queued := make(chan struct{})
		go func() {
			h.run(func() { ranLast.Store(true) })
			close(queued)
		}()
		synctest.Wait()
		if n := running.Load(); n != MaxConcurrentRequests {
			t.Fatalf("%d handlers running, want %d", n, MaxConcurrentRequests)
		}
		select {
		case <-queued:
			t.Fatalf("run returned with %d handlers running", MaxConcurrentRequests)
		default:
		}
		close(release)
		<-queued
		synctest.Wait() // every goroutine idle again
		if !ranLast.Load() {
			t.Error("the handler that waited did not run")
		}
		for range 3 * MaxConcurrentRequests {
			h.run(func() {})
		}
		synctest.Wait()
		if h.started != MaxConcurrentRequests {
			t.Errorf("%d goroutines started, want %d", h.started, MaxConcurrentRequests)
		}
		h.end() // returns: every goroutine ends
	})
}

// TestHandlersReuseBeforeStarting: handlers that return at once, handed
// over faster than they run (one CPU, the reader never blocking), are run
// by the goroutines that exist rather than by a new goroutine each: run
// lets the ones it handed tasks to run before it starts another. (Without
// that, this started MaxConcurrentRequests goroutines.)
func TestHandlersReuseBeforeStarting(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	h := newHandlers(func(f func()) { f() })
	var ran atomic.Int32
	const tasks = 4 * MaxConcurrentRequests
	for range tasks {
		h.run(func() { ran.Add(1) })
	}
	h.end()
	if n := ran.Load(); n != tasks {
		t.Fatalf("%d tasks ran, want %d", n, tasks)
	}
	// 4 to 7 here (the scheduler sometimes runs the yielding reader first);
	// MaxConcurrentRequests before run yielded.
	if h.started > MaxConcurrentRequests/8 {
		t.Errorf("%d goroutines started for %d tasks that return at once, want at most %d", h.started, tasks, MaxConcurrentRequests/8)
	}
}
