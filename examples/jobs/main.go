// Command jobs spreads work over a cluster of its own workers with
// master.Dispatch, the way a Node program spreads it with worker.send by
// hand:
//
//	go build -o bin/ ./examples/jobs
//	bin/jobs -workers 4 -jobs 100000 [-chaos]
//
// The master forks -workers copies of itself; each does jobs with
// worker.HandleJobs: it hashes the job's 4 KiB payload (SHA-256) and
// answers with the job's number and the digest. The master dispatches
// -jobs jobs, 256 at a time, checks every digest, and prints one line per
// worker incarnation with the jobs it answered, then, as its last line:
//
//	jobs=M completed=C failed=F duplicates=D rate=R jobs/s
//
// completed counts the jobs whose one answer the caller got and checked;
// failed the jobs that returned an error (or a wrong digest); duplicates
// the deliveries beyond each job's first (a job redelivered after its
// worker died may have run twice: at least once, never hidden), plus any
// answer a caller got twice (there must be none). With -chaos the master
// kill -9s a random worker every 200 ms while the jobs run; every job must
// still complete exactly once as seen by the caller. The exit code is 0
// when every job completed, 1 otherwise.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/worker"
)

const (
	payloadSize = 4 << 10
	window      = 256                    // jobs in flight
	chaosEvery  = 200 * time.Millisecond // -chaos: a kill -9 this often
)

// job is what the master sends; result what a worker answers.
type (
	job struct {
		N       int    `msgpack:"n"`
		Payload []byte `msgpack:"payload"`
	}
	result struct {
		N      int    `msgpack:"n"`
		Digest []byte `msgpack:"digest"`
	}
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == master.ExecWorkerArg {
		err := master.ExecWorker(os.Args[2:])
		fmt.Fprintln(os.Stderr, "jobs:", err)
		os.Exit(127)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("jobs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workers := fs.Int("workers", runtime.NumCPU(), "number of workers")
	jobs := fs.Int("jobs", 100000, "number of jobs")
	chaos := fs.Bool("chaos", false, "kill -9 a random worker every 200ms while the jobs run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "jobs: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if worker.IsWorker() {
		if err := serve(); err != nil {
			fmt.Fprintf(stderr, "jobs: %v\n", err)
			return 1
		}
		return 0
	}
	switch {
	case *workers < 1:
		fmt.Fprintf(stderr, "jobs: -workers %d: want at least 1\n", *workers)
		return 2
	case *jobs < 1:
		fmt.Fprintf(stderr, "jobs: -jobs %d: want at least 1\n", *jobs)
		return 2
	}
	ok, err := supervise(*workers, *jobs, *chaos, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "jobs: %v\n", err)
		return 1
	}
	if !ok {
		return 1
	}
	return 0
}

// serve is a worker: it does jobs until the master drains it.
func serve() error {
	worker.DrainOnSignal(syscall.SIGTERM, syscall.SIGINT)
	worker.HandleJobs(func(ctx context.Context, j worker.Job) (any, error) {
		var in job
		if err := j.Decode(&in); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(in.Payload)
		return result{N: in.N, Digest: sum[:]}, nil
	})
	if err := worker.Ready(); err != nil {
		return err
	}
	<-worker.Drain()
	return nil
}

// payload is job n's payload: deterministic, so the master can check the
// digest.
func payload(n int) []byte {
	b := make([]byte, payloadSize)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(n)*0x9e3779b97f4a7c15+uint64(i))
	}
	return b
}

// supervise runs the cluster, dispatches the jobs and prints the summary;
// ok reports whether every job completed once.
func supervise(workers, jobs int, chaos bool, stdout, stderr io.Writer) (ok bool, err error) {
	exe, err := os.Executable()
	if err != nil {
		return false, fmt.Errorf("find own executable: %w", err)
	}
	opts := master.Options{
		Command: []string{exe},
		Workers: workers,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
		Logger:  hclog.New(&hclog.LoggerOptions{Name: "jobs", Level: hclog.Warn, Output: stderr}),
		Stdout:  stdout,
		Stderr:  stderr,
		Signals: make(chan os.Signal), // the jobs end the run, not signals
	}
	if chaos {
		// Killed workers come back at once, as often as they are killed,
		// and a job may lose a few workers before one answers it.
		opts.MaxRestarts = -1
		opts.MinUptime = time.Millisecond
		opts.BackoffMin, opts.BackoffMax = time.Millisecond, 10*time.Millisecond
		opts.JobAttempts = 20
	}
	m, err := master.New(opts)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-runErr:
		return false, fmt.Errorf("cluster did not start: %w", err)
	}

	var (
		next, completed, failed atomic.Int64
		answeredTwice           atomic.Int64
		seen                    = make([]atomic.Bool, jobs)
		mu                      sync.Mutex
		perWorker               = map[master.WorkerRef]int{}
		firstErr                error
		wg                      sync.WaitGroup
	)
	start := time.Now()
	stopChaos := make(chan struct{})
	var chaosWG sync.WaitGroup
	if chaos {
		chaosWG.Go(func() { killRandomly(m, stopChaos) })
	}
	for range window {
		wg.Go(func() {
			for {
				n := int(next.Add(1)) - 1
				if n >= jobs {
					return
				}
				p := payload(n)
				res, err := m.Dispatch(ctx, job{N: n, Payload: p})
				var out result
				if err == nil {
					err = res.Decode(&out)
				}
				if err == nil {
					if want := sha256.Sum256(p); out.N != n || !bytes.Equal(out.Digest, want[:]) {
						err = fmt.Errorf("job %d: answer for job %d with a wrong digest", n, out.N)
					}
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				if seen[n].Swap(true) {
					answeredTwice.Add(1)
					continue
				}
				completed.Add(1)
				mu.Lock()
				perWorker[res.Worker]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopChaos)
	chaosWG.Wait()

	refs := make([]master.WorkerRef, 0, len(perWorker))
	for ref := range perWorker {
		refs = append(refs, ref)
	}
	slices.SortFunc(refs, func(a, b master.WorkerRef) int {
		if a.Slot != b.Slot {
			return a.Slot - b.Slot
		}
		return a.Generation - b.Generation
	})
	for _, ref := range refs {
		fmt.Fprintf(stdout, "worker=%d pid=%d generation=%d jobs=%d\n", ref.Slot, ref.PID, ref.Generation, perWorker[ref])
	}
	if firstErr != nil {
		fmt.Fprintf(stderr, "jobs: first failure: %v\n", firstErr)
	}
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopCancel()
	if err := m.Stop(stopCtx); err != nil && !errors.Is(err, master.ErrNotRunning) {
		fmt.Fprintf(stderr, "jobs: stop: %v\n", err)
	}
	if err := <-runErr; err != nil {
		fmt.Fprintf(stderr, "jobs: run: %v\n", err)
	}
	dups := int64(m.Redeliveries()) + answeredTwice.Load()
	rate := float64(jobs) / elapsed.Seconds()
	fmt.Fprintf(stdout, "jobs=%d completed=%d failed=%d duplicates=%d rate=%.0f jobs/s\n",
		jobs, completed.Load(), failed.Load(), dups, rate)
	return completed.Load() == int64(jobs) && answeredTwice.Load() == 0, nil
}

// killRandomly kill -9s a random worker every chaosEvery until stop.
func killRandomly(m *master.Master, stop <-chan struct{}) {
	t := time.NewTicker(chaosEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ws := m.Workers()
		if len(ws) == 0 {
			continue
		}
		w := ws[rand.IntN(len(ws))]
		if w.PID > 0 {
			_ = syscall.Kill(w.PID, syscall.SIGKILL) // it may have exited meanwhile
		}
	}
}
