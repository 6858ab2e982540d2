package worker_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/clusterd/clusterd/worker"
)

// A complete worker: it takes the listeners clusterd hands it (or binds its
// own address alone), says it is ready, and drains on the master's drain
// message or its stop signal without losing a request. Run it with
// `clusterd run --listen :8080 --ready ipc -- ./server`.
func ExampleServeHTTP() {
	worker.DrainOnSignal(syscall.SIGTERM)
	lns, err := worker.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	if len(lns) == 0 { // not under clusterd
		ln, err := net.Listen("tcp", ":8080")
		if err != nil {
			log.Fatal(err)
		}
		lns = append(lns, ln)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := worker.ID()
		fmt.Fprintf(w, "worker %d, pid %d\n", id, os.Getpid())
	})}
	if err := worker.Ready(); err != nil {
		log.Fatal(err)
	}
	if err := worker.ServeHTTP(context.Background(), srv, lns...); err != nil {
		log.Fatal(err)
	}
}

// Programs that serve something other than HTTP watch Drain themselves.
func ExampleDrain() {
	worker.DrainOnSignal() // SIGTERM, clusterd's default stop signal
	if err := worker.Ready(); err != nil {
		log.Fatal(err)
	}
	<-worker.Drain()
	if d, ok := worker.DrainDeadline(); ok {
		log.Printf("draining until %v", d)
	}
	// Stop accepting, finish the work in progress, then exit.
}
