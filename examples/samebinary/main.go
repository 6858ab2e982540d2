// Command samebinary is one program that is both a clusterd master and its
// workers, as a Node program that branches on cluster.isPrimary is:
//
//	go build -o bin/ ./examples/samebinary
//	bin/samebinary -addr 127.0.0.1:8080 -workers 4
//
// The master forks -workers copies of itself (default: one per CPU). Each
// worker asks the master for -addr with worker.Listen (the master creates
// the socket once and passes it to every worker) and answers every HTTP
// request with one line, "pid=P worker=W total=T", where T is the number of
// requests the whole cluster has answered, which it asks the master for
// with worker.Request; it reports its own count with worker.Send. The master
// prints each worker's count and the total every few seconds; on SIGTERM
// (or SIGINT) it drains the workers, prints the counts, and "total=T" as its
// last line, and exits 0. SIGHUP reloads the workers one by one.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/clusterd/clusterd/worker"
)

// reportEvery is how often the master prints the counts.
const reportEvery = 5 * time.Second

// report is what a worker sends the master: the address it serves on once,
// then its running count of answered requests.
type report struct {
	Addr     string `msgpack:"addr,omitempty"`
	Requests int64  `msgpack:"requests"`
}

// totalQuery asks the master for the cluster's total; totalReply answers it.
type (
	totalQuery struct {
		Total bool `msgpack:"total"`
	}
	totalReply struct {
		Total int64 `msgpack:"total"`
	}
)

func main() {
	// The master starts each worker through this program's exec-worker
	// mode, which execs the worker command (this program again).
	if len(os.Args) > 1 && os.Args[1] == master.ExecWorkerArg {
		err := master.ExecWorker(os.Args[2:])
		fmt.Fprintln(os.Stderr, "samebinary:", err)
		os.Exit(127)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the exec-worker step; it returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("samebinary", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "HOST:PORT the workers serve HTTP on")
	workers := fs.Int("workers", runtime.NumCPU(), "number of workers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "samebinary: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if _, err := sockshare.ParseSpec("tcp://" + *addr); err != nil {
		fmt.Fprintf(stderr, "samebinary: -addr: %v\n", err)
		return 2
	}
	var err error
	if worker.IsWorker() {
		err = serve(*addr)
	} else {
		if *workers < 1 {
			fmt.Fprintf(stderr, "samebinary: -workers %d: want at least 1\n", *workers)
			return 2
		}
		err = supervise(*addr, *workers, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "samebinary: %v\n", err)
		return 1
	}
	return 0
}

// serve is the worker: HTTP on the master's socket for addr until the
// master drains it.
func serve(addr string) error {
	// The master's drain comes over IPC, and its stop signal with it:
	// both start the drain instead of killing the worker.
	worker.DrainOnSignal(syscall.SIGTERM, syscall.SIGINT)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	ln, err := worker.Listen(ctx, "tcp", addr)
	cancel()
	if err != nil {
		return err
	}
	if err := worker.Send(report{Addr: ln.Addr().String()}); err != nil {
		ln.Close() // the error of Send is the one to report
		return err
	}
	id, _ := worker.ID()
	var answered atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The count goes first: the master reads a worker's messages and
		// requests in order, so the total includes this request.
		if err := worker.Send(report{Requests: answered.Add(1)}); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		reply, err := worker.Request(r.Context(), totalQuery{Total: true})
		var total totalReply
		if err == nil {
			err = reply.Decode(&total)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "pid=%d worker=%d total=%d\n", os.Getpid(), id, total.Total)
	})}
	if err := worker.Ready(); err != nil {
		ln.Close() // the error of Ready is the one to report
		return err
	}
	if err := worker.ServeHTTP(context.Background(), srv, ln); err != nil {
		return err
	}
	// Every answer's count was sent before the answer; make sure the last
	// ones are written before the process exits.
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	return worker.Flush(fctx)
}

// counts are the request counts the workers report, by worker incarnation,
// kept by the master. OnMessage and HandleRequest run on the workers'
// session goroutines, so a mutex guards them.
type counts struct {
	mu     sync.Mutex
	by     map[master.WorkerRef]int64
	addr   string
	served chan struct{} // closed when the first worker reports its address
}

func (c *counts) add(from master.WorkerRef, r report) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Addr != "" && c.addr == "" {
		c.addr = r.Addr
		close(c.served)
	}
	// A worker's handlers send their counts concurrently, so they may
	// arrive out of order: keep the highest.
	c.by[from] = max(c.by[from], r.Requests)
}

func (c *counts) total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t int64
	for _, n := range c.by {
		t += n
	}
	return t
}

// print writes one line per worker, in slot order, then the total.
func (c *counts) print(w io.Writer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	refs := make([]master.WorkerRef, 0, len(c.by))
	var total int64
	for ref, n := range c.by {
		refs = append(refs, ref)
		total += n
	}
	slices.SortFunc(refs, func(a, b master.WorkerRef) int {
		return cmp.Or(cmp.Compare(a.Slot, b.Slot), cmp.Compare(a.Generation, b.Generation))
	})
	for _, ref := range refs {
		fmt.Fprintf(w, "worker=%d pid=%d generation=%d requests=%d\n", ref.Slot, ref.PID, ref.Generation, c.by[ref])
	}
	fmt.Fprintf(w, "total=%d\n", total)
}

// supervise is the master: it runs n workers of this program until SIGTERM
// or SIGINT, printing their counts.
func supervise(addr string, n int, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	c := &counts{by: make(map[master.WorkerRef]int64), served: make(chan struct{})}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Stop(sigs)
	m, err := master.New(master.Options{
		Command: []string{exe, "-addr", addr},
		Workers: n,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
		Signals: sigs,
		Logger:  hclog.New(&hclog.LoggerOptions{Name: "samebinary", Level: hclog.Info, Output: stderr}),
		Stdout:  stdout,
		Stderr:  stderr,
		OnMessage: func(from master.WorkerRef, msg *ipc.Message) {
			var r report
			if err := msg.Decode(&r); err == nil {
				c.add(from, r)
			}
		},
		HandleRequest: func(ctx context.Context, from master.WorkerRef, req *ipc.Message) (any, error) {
			var q totalQuery
			if err := req.Decode(&q); err != nil || !q.Total {
				return nil, &ipc.RemoteError{Code: ipc.CodeBadRequest, Text: "samebinary: want a total query"}
			}
			return totalReply{Total: c.total()}, nil
		},
	})
	if err != nil {
		return err
	}
	done := make(chan struct{})
	var printer sync.WaitGroup
	printer.Go(func() {
		select {
		case <-m.Ready():
			<-c.served // each worker reports its address before it is ready
			c.mu.Lock()
			fmt.Fprintf(stdout, "serving http://%s with %d workers\n", c.addr, n)
			c.mu.Unlock()
		case <-done:
			return
		}
		t := time.NewTicker(reportEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				c.print(stdout)
			case <-done:
				return
			}
		}
	})
	err = m.Run(context.Background())
	close(done)
	printer.Wait()
	c.print(stdout)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
