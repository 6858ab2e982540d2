package ipc_test

import (
	"context"
	"fmt"
	"log"

	"github.com/clusterd/clusterd/ipc"
)

// A master and a worker, both ends in one process for the example. In clusterd
// the worker's end is inherited by the child process (see ipc.EnvIPCFD).
func Example() {
	ctx := context.Background()
	masterEnd, workerEnd, err := ipc.Pair()
	if err != nil {
		log.Fatal(err)
	}
	master, err := ipc.NewConn(masterEnd, ipc.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer master.Close()
	worker, err := ipc.NewConn(workerEnd, ipc.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer worker.Close()

	go func() {
		if _, err := worker.Handshake(ctx, ipc.Hello{PID: 200, WorkerID: 0, Generation: 1}); err != nil {
			log.Print(err)
			return
		}
		ready, err := ipc.NewMessage(ipc.KindReady, &ipc.Ready{Listeners: 1})
		if err == nil {
			err = worker.Send(ready)
		}
		if err != nil {
			log.Print(err)
		}
	}()

	peer, err := master.Handshake(ctx, ipc.Hello{PID: 100, WorkerID: -1})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("hello from worker", peer.WorkerID, "generation", peer.Generation)
	m, err := master.Recv()
	if err != nil {
		log.Fatal(err)
	}
	var r ipc.Ready
	if err := m.Decode(&r); err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.Kind, "with", r.Listeners, "listener")
	// Output:
	// hello from worker 0 generation 1
	// ready with 1 listener
}

// Call pairs a request with its reply; the other end answers with Message.Reply.
func ExampleConn_Call() {
	ctx := context.Background()
	a, b, err := ipc.Pair()
	if err != nil {
		log.Fatal(err)
	}
	client, err := ipc.NewConn(a, ipc.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	server, err := ipc.NewConn(b, ipc.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()

	go func() {
		for {
			req, err := server.Recv()
			if err != nil {
				return
			}
			var n int
			if err := req.Decode(&n); err != nil {
				return
			}
			reply, err := req.Reply(ipc.KindResponse, n*n)
			if err != nil || server.Send(reply) != nil {
				return
			}
		}
	}()

	req, err := ipc.NewMessage(ipc.KindRequest, 12)
	if err != nil {
		log.Fatal(err)
	}
	reply, err := client.Call(ctx, req)
	if err != nil {
		log.Fatal(err)
	}
	var square int
	if err := reply.Decode(&square); err != nil {
		log.Fatal(err)
	}
	fmt.Println(square)
	// Output: 144
}
