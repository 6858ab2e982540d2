// Command hello is an HTTP server written for clusterd: it answers every
// request with its pid and worker slot, and drains without losing a request.
//
//	go build -o bin/ ./cmd/clusterd ./examples/hello
//	bin/clusterd run --listen tcp://127.0.0.1:8080 -w 2 --ready ipc -- bin/hello
//
// It serves the sockets it inherits (the master's --listen). Without any, it
// listens on -addr (:8080) with worker.Listen: under clusterd the master
// creates that socket once and passes it to every worker,
//
//	bin/clusterd run -w 2 --ready ipc -- bin/hello -addr 127.0.0.1:9000
//
// and outside clusterd hello binds it alone.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/clusterd/clusterd/worker"
)

func main() {
	addr := flag.String("addr", ":8080", "address to listen on when no socket is inherited: the master's (under clusterd) or its own")
	reuseport := flag.Bool("reuseport", false, "with -addr: bind with SO_REUSEPORT itself, so several copies can share the port (for comparisons without clusterd)")
	flag.Parse()
	if *reuseport {
		// Same port, one socket per process: the kernel spreads connections.
		*addr = "reuseport:" + *addr
	}
	if err := run(context.Background(), *addr, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "hello: %v\n", err)
		os.Exit(1)
	}
}

// run serves until the worker is told to drain (the master's drain message
// or SIGTERM), then finishes every request it has accepted.
func run(ctx context.Context, addr string, log io.Writer) error {
	// SIGTERM (clusterd's stop signal) and SIGINT start the drain instead
	// of killing the process.
	worker.DrainOnSignal(syscall.SIGTERM, syscall.SIGINT)

	lns, err := worker.Listeners()
	if err != nil {
		return err
	}
	if len(lns) == 0 {
		ln, err := listen(ctx, addr)
		if err != nil {
			return err
		}
		lns = []net.Listener{ln}
	}

	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	// The sockets are listening already: connections wait in the backlog
	// until Serve accepts them, so the worker is ready now.
	if err := worker.Ready(); err != nil {
		for _, ln := range lns {
			ln.Close() // the error of Ready is the one to report
		}
		return err
	}
	id, _ := worker.ID()
	fmt.Fprintf(log, "hello: worker %d pid %d serving on %s\n", id, os.Getpid(), lns[0].Addr())
	return worker.ServeHTTP(ctx, srv, lns...)
}

// requests counts the requests answered; the master sees it in its worker
// table, reported with the worker's heartbeats.
var requests = worker.NewCounter("requests")

// hello answers with the serving process: "hello from pid 1234, worker 3".
func hello(w http.ResponseWriter, r *http.Request) {
	requests.Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	id, ok := worker.ID()
	if !ok {
		fmt.Fprintf(w, "hello from pid %d (not under clusterd)\n", os.Getpid())
		return
	}
	fmt.Fprintf(w, "hello from pid %d, worker %d, generation %d\n", os.Getpid(), id, worker.Generation())
}

// listenTimeout bounds the wait for the master's answer to a listen
// request: a master too old to know them never answers.
const listenTimeout = 30 * time.Second

// listen gets addr with worker.Listen: from the master under clusterd, bound
// here otherwise. A "reuseport:" prefix binds it here with SO_REUSEPORT.
func listen(ctx context.Context, addr string) (net.Listener, error) {
	rest, reuse := strings.CutPrefix(addr, "reuseport:")
	if !reuse {
		ctx, cancel := context.WithTimeout(ctx, listenTimeout)
		defer cancel()
		return worker.Listen(ctx, "tcp", addr)
	}
	spec, err := sockshare.ParseSpec(rest)
	if err != nil {
		return nil, err
	}
	f, err := sockshare.Listen(spec, sockshare.ListenOptions{ReusePort: true})
	if err != nil {
		return nil, err
	}
	socks, err := sockshare.Sockets([]*os.File{f})
	f.Close() // Sockets made its own copy
	if err != nil {
		return nil, err
	}
	return socks[0].Listener, nil
}
