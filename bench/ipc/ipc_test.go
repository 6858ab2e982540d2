// Package ipcbench measures clusterd's master↔worker messaging through the
// public APIs of both ends (master.Master.Send, Request, Dispatch and
// OnMessage in this process; worker.Send, Messages, Request, Handle and
// HandleJobs in the workers it supervises), beside Node.js's cluster IPC
// (node_ipc.js, node_dispatch.js) and a bare socketpair ping-pong in the
// same run. docs/BENCHMARKS.md has the figures:
//
//	go test -run '^$' -bench . -benchtime 2s ./bench/ipc
package ipcbench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/worker"
)

// helperEnv makes the re-executed test binary run a helper instead of the
// benchmarks.
const helperEnv = "CLUSTERD_TEST_HELPER"

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	master.DispatchExecWorker()
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "worker":
		os.Exit(benchWorker())
	case "pingpong":
		os.Exit(pingPong())
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", os.Getenv(helperEnv))
	os.Exit(2)
}

// payload is every benchmark message: about 64 bytes of msgpack, as in
// ipc's benchmarks and node_ipc.js.
type payload struct {
	Seq int    `msgpack:"seq"`
	Pad string `msgpack:"pad"`
}

var pad = string(make([]byte, 48))

// jobDone is a worker's answer to a job of BenchmarkDispatch.
type jobDone struct {
	Seq int `msgpack:"seq"`
}

// command tells the worker what to do next.
type command struct {
	Op      string `msgpack:"op"` // "send", "count" or "request"
	N       int    `msgpack:"n"`
	Callers int    `msgpack:"callers,omitempty"`
}

// result is the worker's answer to a "count" or "request" command.
type result struct {
	Done  bool   `msgpack:"done"`
	Nanos int64  `msgpack:"nanos,omitempty"` // wall time of the whole run
	P50   int64  `msgpack:"p50,omitempty"`
	P99   int64  `msgpack:"p99,omitempty"`
	Err   string `msgpack:"err,omitempty"`
}

// workerProfileEnv, set to a path prefix, has every bench worker write a
// CPU profile of its whole life to PREFIX.PID, as -cpuprofile does for the
// master in the test process:
//
//	CLUSTERD_BENCH_WORKER_CPUPROFILE=/tmp/worker.prof go test -run '^$' \
//		-bench Dispatch -cpuprofile /tmp/master.prof ./bench/ipc
const workerProfileEnv = "CLUSTERD_BENCH_WORKER_CPUPROFILE"

// benchWorker is the worker: it runs the commands the master sends.
func benchWorker() int {
	if prefix := os.Getenv(workerProfileEnv); prefix != "" {
		stop, err := startProfile(fmt.Sprintf("%s.%d", prefix, os.Getpid()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
	}
	worker.DrainOnSignal(syscall.SIGTERM)
	msgs := worker.Messages()
	worker.Handle(func(ctx context.Context, req worker.Message) (any, error) {
		return req.Raw(), nil // the request itself, as the reply
	})
	worker.HandleJobs(func(ctx context.Context, j worker.Job) (any, error) {
		var p payload
		if err := j.Decode(&p); err != nil {
			return nil, err
		}
		return jobDone{Seq: p.Seq}, nil
	})
	if err := worker.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		var m worker.Message
		var ok bool
		select {
		case m, ok = <-msgs:
		case <-worker.Drain():
			return 0
		}
		if !ok {
			return 0
		}
		var c command
		if err := m.Decode(&c); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var r result
		switch c.Op {
		case "send":
			for i := 1; i <= c.N; i++ {
				if err := worker.Send(payload{Seq: i, Pad: pad}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return 1
				}
			}
			continue
		case "count":
			for i := 1; i <= c.N; i++ {
				var p payload
				if err := (<-msgs).Decode(&p); err != nil || p.Seq != i {
					r.Err = fmt.Sprintf("message %d: seq %d, %v", i, p.Seq, err)
					break
				}
			}
		case "request":
			r = requests(c.N, c.Callers)
		}
		r.Done = true
		if err := worker.Send(r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
}

// startProfile starts a CPU profile written to path; stop ends it.
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}, nil
}

// requests makes n requests to the master from callers goroutines and
// measures them.
func requests(n, callers int) result {
	lat := make([]int64, n)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t := time.Now()
				if _, err := worker.Request(context.Background(), payload{Seq: i, Pad: pad}); err != nil {
					failed.Store(err.Error())
					return
				}
				lat[i] = int64(time.Since(t))
			}
		})
	}
	wg.Wait()
	r := result{Nanos: int64(time.Since(start))}
	if s, ok := failed.Load().(string); ok {
		r.Err = s
		return r
	}
	slices.Sort(lat)
	r.P50, r.P99 = lat[len(lat)/2], lat[len(lat)*99/100]
	return r
}

// cluster is a master with bench workers, and what they sent.
type cluster struct {
	m       *master.Master
	counted atomic.Int64  // messages counted by OnMessage since the last reset
	want    atomic.Int64  // the count at which reached is signalled
	reached chan struct{} // signalled when counted reaches want
	results chan result
}

func startCluster(b *testing.B, workers int) *cluster {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	c := &cluster{reached: make(chan struct{}, 1), results: make(chan result, 1)}
	m, err := master.New(master.Options{
		Command: []string{exe},
		Env:     []string{helperEnv + "=worker"},
		Workers: workers,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
		Stdout:  io.Discard,
		Stderr:  os.Stderr,
		// The default paces a worker at 20,000 messages/s (a flood guard);
		// this measures the channel itself.
		IPCMessageRate: -1,
		OnMessage: func(from master.WorkerRef, msg *ipc.Message) {
			// A result is a map with "done"; payloads start with "seq". The
			// counting path decodes nothing, as a fast consumer would not.
			if c.want.Load() > 0 {
				if c.counted.Add(1) == c.want.Load() {
					c.reached <- struct{}{}
				}
				return
			}
			var r result
			if err := msg.Decode(&r); err != nil || !r.Done {
				r = result{Done: true, Err: fmt.Sprintf("unexpected message (%v)", err)}
			}
			c.results <- r
		},
		HandleRequest: func(ctx context.Context, from master.WorkerRef, req *ipc.Message) (any, error) {
			return req.Body, nil
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	c.m = m
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background()) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			b.Errorf("stop: %v", err)
		}
		if err := <-errc; err != nil {
			b.Errorf("master: %v", err)
		}
	})
	select {
	case <-m.Ready():
	case err := <-errc:
		b.Fatalf("master: %v", err)
	}
	return c
}

func (c *cluster) result(b *testing.B) result {
	b.Helper()
	r := <-c.results
	if r.Err != "" {
		b.Fatal(r.Err)
	}
	return r
}

// nodeFigure is what node_ipc.js prints for one mode.
type nodeFigure struct {
	PerSec float64 `json:"per_s"`
	// node_dispatch.js: CPU time per job of the primary and of the workers
	PrimaryCPU float64 `json:"primary_cpu_us_per_job"`
	WorkersCPU float64 `json:"workers_cpu_us_per_job"`
	P50        float64 `json:"p50_ns"`
	P99        float64 `json:"p99_ns"`
}

// nodeCount is how many messages, requests or jobs the Node scripts
// measure.
const nodeCount = 100000

// nodeIPC is the node_ipc.js command line for mode.
func nodeIPC(mode string) []string {
	return []string{"node_ipc.js", mode, fmt.Sprint(nodeCount)}
}

// reportNode measures Node's figure right after ours, once per
// sub-benchmark (in its last round, see lastRound), with the timer
// stopped, and reports it beside ours: node is the script and its
// arguments, rate is ours, unit its unit.
func reportNode(b *testing.B, node []string, rate float64, unit string, latency bool) nodeFigure {
	b.StopTimer()
	defer b.StartTimer()
	path, err := exec.LookPath("node")
	if err != nil {
		b.Logf("no Node.js figures: %v", err)
		return nodeFigure{}
	}
	cmd := exec.Command(path, node...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var f nodeFigure
	if err == nil {
		err = json.Unmarshal(out, &f)
	}
	if err != nil {
		b.Fatalf("node %s: %v", strings.Join(node, " "), err)
	}
	b.ReportMetric(f.PerSec, "node-"+unit)
	b.ReportMetric(rate/f.PerSec, "x-node")
	if latency {
		b.ReportMetric(f.P50, "node-p50-ns")
		b.ReportMetric(f.P99, "node-p99-ns")
	}
	return f
}

// lastRound reports whether a round of a benchmark that took elapsed is
// (most likely) its last, the one whose figures are printed: the testing
// package stops growing b.N once a round takes about -test.benchtime. Node
// runs only then, so that it runs once per printed line, next to it.
func lastRound(elapsed time.Duration) bool {
	bt := flag.Lookup("test.benchtime")
	if bt == nil {
		return true
	}
	d, err := time.ParseDuration(bt.Value.String())
	if err != nil {
		return true // a count ("100x"): a single round
	}
	return elapsed >= d/2
}

// BenchmarkMessages sends b.N user messages each way through the public
// APIs and reports the rate, beside Node's cluster messages.
func BenchmarkMessages(b *testing.B) {
	c := startCluster(b, 1)
	b.Run("to-worker", func(b *testing.B) {
		start := time.Now()
		msg := command{Op: "count", N: b.N}
		if err := c.m.Send(0, msg); err != nil {
			b.Fatal(err)
		}
		for i := 1; i <= b.N; i++ {
			if err := c.m.Send(0, payload{Seq: i, Pad: pad}); err != nil {
				b.Fatal(err)
			}
		}
		c.result(b)
		elapsed := time.Since(start)
		rate := float64(b.N) / elapsed.Seconds()
		b.ReportMetric(rate, "msgs/s")
		if lastRound(elapsed) {
			reportNode(b, nodeIPC("to-worker"), rate, "msgs/s", false)
		}
	})
	b.Run("to-master", func(b *testing.B) {
		c.counted.Store(0)
		c.want.Store(int64(b.N))
		defer c.want.Store(0)
		start := time.Now()
		if err := c.m.Send(0, command{Op: "send", N: b.N}); err != nil {
			b.Fatal(err)
		}
		<-c.reached
		elapsed := time.Since(start)
		rate := float64(b.N) / elapsed.Seconds()
		b.ReportMetric(rate, "msgs/s")
		if lastRound(elapsed) {
			reportNode(b, nodeIPC("to-primary"), rate, "msgs/s", false)
		}
	})
}

// BenchmarkRequest makes b.N requests with 1 and with 64 callers: from the
// master to the worker (Master.Request, answered by worker.Handle), and from
// the worker to the master (worker.Request, answered by HandleRequest). The
// single-caller run reports the median round trip beside Node's and beside a
// bare socketpair ping-pong with another process.
func BenchmarkRequest(b *testing.B) {
	c := startCluster(b, 1)
	raw := rawPingPong(b)
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("to-worker/callers=%d", callers), func(b *testing.B) {
			lat := make([]int64, b.N)
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, callers)
			start := time.Now()
			for range callers {
				wg.Go(func() {
					for {
						i := int(next.Add(1)) - 1
						if i >= b.N {
							return
						}
						t := time.Now()
						if _, err := c.m.Request(context.Background(), 0, payload{Seq: i, Pad: pad}); err != nil {
							errs <- err
							return
						}
						lat[i] = int64(time.Since(t))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			close(errs)
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
			slices.Sort(lat)
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "req/s")
			b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
			if callers == 1 {
				b.ReportMetric(float64(raw), "raw-p50-ns")
			}
			if lastRound(elapsed) {
				reportNode(b, nodeIPC(fmt.Sprintf("request-%d", callers)), rate, "req/s", true)
			}
		})
		b.Run(fmt.Sprintf("to-master/callers=%d", callers), func(b *testing.B) {
			if err := c.m.Send(0, command{Op: "request", N: b.N, Callers: callers}); err != nil {
				b.Fatal(err)
			}
			r := c.result(b)
			rate := float64(b.N) / (float64(r.Nanos) / 1e9)
			b.ReportMetric(rate, "req/s")
			b.ReportMetric(float64(r.P50), "p50-ns")
			b.ReportMetric(float64(r.P99), "p99-ns")
		})
	}
}

// Dispatch: jobs spread over dispatchWorkers workers, dispatchWindow
// outstanding per worker (master.DefaultJobQueue), as Node programs spread
// them with worker.send.
const (
	dispatchWorkers = 2
	dispatchWindow  = 256
)

// BenchmarkDispatch runs b.N jobs through Master.Dispatch, with jobs of
// about 64 bytes and of 4 KiB of msgpack (a payload's pad of 48 and 4079
// bytes), that the workers decode and answer at once with the job's
// number, which the caller checks. Node's figure (node_dispatch.js) is a
// cluster primary doing the same with worker.send: the same workers,
// window, pads and answers.
func BenchmarkDispatch(b *testing.B) {
	c := startCluster(b, dispatchWorkers)
	for _, size := range []struct {
		name string
		pad  int
	}{{"64B", 48}, {"4KiB", 4079}} {
		b.Run("body="+size.name, func(b *testing.B) {
			pad := strings.Repeat("x", size.pad)
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, dispatchWorkers*dispatchWindow)
			self0, workers0 := clusterCPU(b, c.m)
			start := time.Now()
			for range dispatchWorkers * dispatchWindow {
				wg.Go(func() {
					for {
						i := int(next.Add(1)) - 1
						if i >= b.N {
							return
						}
						res, err := c.m.Dispatch(context.Background(), payload{Seq: i, Pad: pad})
						var d jobDone
						if err == nil {
							err = res.Decode(&d)
						}
						if err == nil && d.Seq != i {
							err = fmt.Errorf("job %d: answer for job %d", i, d.Seq)
						}
						if err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			self1, workers1 := clusterCPU(b, c.m)
			close(errs)
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "jobs/s")
			perJob := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
			b.ReportMetric(perJob(self1-self0), "master-cpu-us/job")
			b.ReportMetric(perJob(workers1-workers0), "workers-cpu-us/job")
			if lastRound(elapsed) {
				f := reportNode(b, []string{"node_dispatch.js", fmt.Sprint(size.pad), fmt.Sprint(nodeCount),
					fmt.Sprint(dispatchWorkers), fmt.Sprint(dispatchWindow)}, rate, "jobs/s", false)
				b.ReportMetric(f.PrimaryCPU, "node-primary-cpu-us/job")
				b.ReportMetric(f.WorkersCPU, "node-workers-cpu-us/job")
			}
		})
	}
}

// clusterCPU is the CPU time used so far by this process (the master and
// the benchmark's callers) and by m's workers, from /proc/PID/stat (utime
// and stime, in the clock ticks of 10 ms that Linux reports there), as
// node_dispatch.js measures Node's processes.
func clusterCPU(b *testing.B, m *master.Master) (self, workers time.Duration) {
	b.Helper()
	self = processCPU(b, "self")
	for _, w := range m.Workers() {
		workers += processCPU(b, fmt.Sprint(w.PID))
	}
	return self, workers
}

// processCPU is the CPU time process pid ("self" for this one) has used.
func processCPU(b *testing.B, pid string) time.Duration {
	b.Helper()
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// The command name, in parentheses, may hold spaces; utime and stime
	// are the 12th and 13th fields after it.
	_, rest, ok := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		b.Fatalf("/proc/%s/stat: cannot read %q", pid, stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%s/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// rawPingPongs is how many round trips rawPingPong measures.
const rawPingPongs = 20000

// rawPingPong measures the median round trip of 64 bytes over a bare
// blocking socketpair with a child process that echoes them: the least a
// round trip between two processes costs, without framing, goroutines or
// the Go poller.
func rawPingPong(b *testing.B) int64 {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(os.NewSyscallError("socketpair", err))
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "pingpong"), os.NewFile(uintptr(fds[1]), "pingpong-child")
	defer mine.Close()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=pingpong")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	theirs.Close()
	defer cmd.Wait()
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	// Blocking calls on the raw descriptor, from a goroutine locked to its
	// thread: nothing but the two system calls per side.
	rc, err := mine.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	if err := unix.SetNonblock(fd, false); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64)
	lat := make([]int64, rawPingPongs)
	for i := range lat {
		t := time.Now()
		if err := rawRoundTrip(fd, buf); err != nil {
			b.Fatal(err)
		}
		lat[i] = int64(time.Since(t))
	}
	slices.Sort(lat)
	return lat[len(lat)/2]
}

func rawRoundTrip(fd int, buf []byte) error {
	if _, err := unix.Write(fd, buf); err != nil {
		return os.NewSyscallError("write", err)
	}
	for got := 0; got < len(buf); {
		n, err := unix.Read(fd, buf[got:])
		if err != nil || n == 0 {
			return fmt.Errorf("read: %d, %v", n, err)
		}
		got += n
	}
	return nil
}

// pingPong is the child of rawPingPong: it echoes 64-byte messages on fd 3
// until the parent closes it.
func pingPong() int {
	buf := make([]byte, 64)
	for {
		for got := 0; got < len(buf); {
			n, err := unix.Read(3, buf[got:])
			if n == 0 || err != nil {
				return 0
			}
			got += n
		}
		if _, err := unix.Write(3, buf); err != nil {
			return 0
		}
	}
}
