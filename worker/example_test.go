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

// Listen is the one call for a program that runs alone, under systemd and
// under clusterd: it takes the inherited socket for the address, or gets the
// master's, or binds it itself.
func ExampleListen() {
	worker.DrainOnSignal()
	ln, err := worker.Listen(context.Background(), "tcp", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	if err := worker.Ready(); err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	if err := worker.ServeHTTP(context.Background(), srv, ln); err != nil {
		log.Fatal(err)
	}
}

// A worker that takes instructions from the master reads Messages beside
// Drain, answers the master's requests with Handle, and asks the master
// with Request.
func ExampleMessages() {
	type config struct {
		Level string `msgpack:"level"`
	}
	worker.Handle(func(ctx context.Context, req worker.Message) (any, error) {
		var q struct {
			Op string `msgpack:"op"`
		}
		if err := req.Decode(&q); err != nil {
			return nil, err
		}
		return map[string]int{"pid": os.Getpid()}, nil
	})
	msgs := worker.Messages()
	if err := worker.Ready(); err != nil {
		log.Fatal(err)
	}
	reply, err := worker.Request(context.Background(), map[string]string{"op": "config"})
	if err != nil {
		log.Fatal(err)
	}
	var c config
	if err := reply.Decode(&c); err != nil {
		log.Fatal(err)
	}
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return // the master is gone
			}
			if err := m.Decode(&c); err != nil {
				log.Print(err)
			}
		case <-worker.Drain():
			return
		}
	}
}

// Metrics reach the master with every heartbeat, and show in its worker
// table.
func ExampleNewCounter() {
	requests := worker.NewCounter("requests")
	open := worker.NewGauge("open_conns")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		requests.Inc()
		open.Add(1)
		defer open.Add(-1)
		fmt.Fprintln(w, "ok")
	})
}

// Draining is the drain as a context, with the master's deadline.
func ExampleDraining() {
	ctx := worker.Draining()
	<-ctx.Done()
	if d, ok := ctx.Deadline(); ok {
		log.Printf("draining, to be gone by %v", d)
	}
}
