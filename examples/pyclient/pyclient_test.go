// Package pyclient_test runs examples/pyclient/worker.py, a worker written in
// Python from docs/PROTOCOL.md alone, against the Go side of the wire.
package pyclient_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/clusterd/clusterd/worker/workertest"
)

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	master.DispatchExecWorker()
	os.Exit(m.Run())
}

// python3 returns the interpreter's path, or skips the test outside CI
// (CI=true: .ci/run installs it, and a missing one fails the test).
func python3(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3 is not installed: .ci/run installs it under CI (%v)", err)
		}
		t.Skipf("python3 is not on PATH (%v): install Python 3 to run examples/pyclient", err)
	}
	return p
}

// The bodies worker.py sends, as Go reads them.
type (
	helloMsg struct {
		Hello string `msgpack:"hello"`
		PID   int    `msgpack:"pid"`
		Slot  int    `msgpack:"worker"`
		Addr  string `msgpack:"addr"`
	}
	answer struct {
		Answer int `msgpack:"answer"`
	}
	replyMsg struct {
		Reply answer `msgpack:"reply"`
	}
	ping struct {
		Op  string `msgpack:"op"`
		PID int    `msgpack:"pid"`
	}
	query struct {
		Q string `msgpack:"q"`
	}
	echoMsg struct {
		Echo query `msgpack:"echo"`
	}
	pongMsg struct {
		Pong query `msgpack:"pong"`
	}
)

// TestPythonWorker has workertest play the master for worker.py: the hello,
// a ready message, a user message each way, a request each way, heartbeats
// with stats, a listening socket passed with SCM_RIGHTS and served, and a
// drain.
func TestPythonWorker(t *testing.T) {
	py := python3(t)
	pings := make(chan ping, 1)
	stdout, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	w := workertest.Start(t, workertest.Options{
		Command:     []string{py, "worker.py", "tcp://127.0.0.1:0"},
		Listen:      []string{}, // the socket comes from a listen request
		WorkerID:    1,
		Generation:  4,
		HeartbeatMS: 10,
		Stdout:      wr,
		Stderr:      os.Stderr,
		HandleRequest: func(ctx context.Context, req *ipc.Message) (any, error) {
			var p ping
			if err := req.Decode(&p); err != nil {
				return nil, err
			}
			pings <- p
			return answer{Answer: 42}, nil
		},
	})
	wr.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	hello, err := w.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello.PID != w.PID() || hello.WorkerID != 1 || hello.Generation != 4 || hello.Version != ipc.Version {
		t.Errorf("python hello = %+v, want pid %d, worker 1, generation 4, version %d", hello, w.PID(), ipc.Version)
	}

	next := func(v any) {
		t.Helper()
		select {
		case m, ok := <-w.Messages():
			if !ok {
				t.Fatal("python worker's messages ended")
			}
			if m.Kind != ipc.KindUser {
				t.Fatalf("message of kind %s, want user", m.Kind)
			}
			if err := m.Decode(v); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	var hm helloMsg
	next(&hm)
	f := w.Listened()["tcp://127.0.0.1:0"]
	if f == nil {
		t.Fatalf("python worker asked for no socket (%v)", w.Listened())
	}
	addr, err := sockshare.Addr(f)
	if err != nil {
		t.Fatal(err)
	}
	if hm != (helloMsg{Hello: "from python", PID: w.PID(), Slot: 1, Addr: addr.String()}) {
		t.Errorf("first user message = %+v, want the hello of pid %d, worker 1, on %s", hm, w.PID(), addr)
	}
	if p := <-pings; p.Op != "ping" || p.PID != w.PID() {
		t.Errorf("python request = %+v, want op ping from pid %d", p, w.PID())
	}
	var rm replyMsg
	next(&rm)
	if rm.Reply.Answer != 42 {
		t.Errorf("python saw the reply %+v, want answer 42", rm)
	}
	if err := w.Send(query{Q: "echo me"}); err != nil {
		t.Fatal(err)
	}
	var em echoMsg
	next(&em)
	if em.Echo.Q != "echo me" {
		t.Errorf("echo = %+v, want echo me", em)
	}
	r, err := w.Request(ctx, query{Q: "pong me"})
	if err != nil {
		t.Fatal(err)
	}
	var pm pongMsg
	if err := r.Decode(&pm); err != nil || r.Kind != ipc.KindResponse || pm.Pong.Q != "pong me" {
		t.Errorf("reply to a request = %s %+v, %v; want a response pong me", r.Kind, pm, err)
	}

	hb, stats, err := w.NextHeartbeat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hb.Seq == 0 || stats["heartbeats"] != int64(hb.Seq) {
		t.Errorf("heartbeat %d with stats %v, want the stats of the same heartbeat", hb.Seq, stats)
	}

	resp, err := http.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from python pid "+strconv.Itoa(w.PID())+"\n" {
		t.Errorf("GET from the python worker = %q", body)
	}

	deadline := time.Now().Add(time.Minute).Truncate(time.Second)
	if err := w.Drain(ctx, deadline); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(ctx); err != nil {
		t.Errorf("python worker after drain: %v, want exit 0", err)
	}
	out := bufio.NewScanner(stdout)
	var lines []string
	for out.Scan() {
		lines = append(lines, out.Text())
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "master replied {'answer': 42}") || !strings.HasPrefix(lines[1], "pyclient: draining until "+deadline.UTC().Format("2006-01-02 15:04:05")) {
		t.Errorf("python worker printed %q, want the reply and the drain deadline", lines)
	}
}

// TestPythonWorkerUnderMaster runs worker.py under a real master (package
// master, as `clusterd run -w 2 --ready ipc -- python3 worker.py ADDR`
// does): both workers say hello and ready, get one socket from the master
// and serve it, their user messages reach OnMessage, their requests
// HandleRequest, the master's Request and Send reach them, and their
// heartbeats and stats show in Workers.
func TestPythonWorkerUnderMaster(t *testing.T) {
	py := python3(t)
	msgs := make(chan ipc.Message, 16)
	m, err := master.New(master.Options{
		Command:           []string{py, "worker.py", "tcp://127.0.0.1:0"},
		Workers:           2,
		Ready:             master.ReadyMode{Kind: master.ReadyIPC},
		HeartbeatInterval: 10 * time.Millisecond,
		// Not under test: a loaded machine must not make the workers hung.
		HeartbeatTimeout: time.Minute,
		Stdout:           io.Discard,
		Stderr:           os.Stderr,
		OnMessage: func(from master.WorkerRef, m *ipc.Message) {
			msgs <- ipc.Message{Kind: m.Kind, Body: append([]byte(nil), m.Body...)}
		},
		HandleRequest: func(ctx context.Context, from master.WorkerRef, req *ipc.Message) (any, error) {
			var p ping
			if err := req.Decode(&p); err != nil || p.Op != "ping" || p.PID != from.PID {
				return nil, &ipc.RemoteError{Code: ipc.CodeBadRequest, Text: "want a ping from the sender"}
			}
			return answer{Answer: 42}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background()) }()
	stopped := false
	defer func() {
		if !stopped {
			m.Stop(context.Background())
			<-errc
		}
	}()
	select {
	case <-m.Ready():
	case err := <-errc:
		stopped = true
		t.Fatalf("master stopped before its workers were ready: %v", err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}

	next := func(v any) {
		t.Helper()
		select {
		case msg := <-msgs:
			if err := msg.Decode(v); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	// Per worker: its hello message, then the reply it saw, in that order;
	// the two workers' messages interleave.
	addrs := map[string]bool{}
	pids := map[int]bool{}
	for range 4 {
		var raw map[string]any
		next(&raw)
		switch {
		case raw["hello"] == "from python":
			addrs[fmt.Sprint(raw["addr"])] = true
			pids[int(toInt(raw["pid"]))] = true
		case raw["reply"] != nil:
			if r, ok := raw["reply"].(map[string]any); !ok || toInt(r["answer"]) != 42 {
				t.Errorf("python saw the reply %v, want answer 42", raw["reply"])
			}
		default:
			t.Errorf("unexpected message %v", raw)
		}
	}
	if len(addrs) != 1 || len(pids) != 2 {
		t.Fatalf("python workers %v listen on %v, want two workers on one address", pids, addrs)
	}
	var addr string
	for a := range addrs {
		addr = a
	}
	served := map[string]bool{}
	for len(served) < 2 {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		served[string(b)] = true
	}
	for pid := range pids {
		if !served["hello from python pid "+strconv.Itoa(pid)+"\n"] {
			t.Errorf("pid %d did not answer on the shared socket (answers: %v)", pid, served)
		}
	}

	for slot := range 2 {
		r, err := m.Request(ctx, slot, query{Q: "pong me"})
		if err != nil {
			t.Fatal(err)
		}
		var pm pongMsg
		if err := r.Decode(&pm); err != nil || pm.Pong.Q != "pong me" {
			t.Errorf("worker %d answered %+v, %v; want pong me", slot, pm, err)
		}
		if err := m.Send(slot, query{Q: "echo me"}); err != nil {
			t.Fatal(err)
		}
		var em echoMsg
		next(&em)
		if em.Echo.Q != "echo me" {
			t.Errorf("worker %d echoed %+v, want echo me", slot, em)
		}
	}

	// Heartbeats every 10ms: wait, within the deadline, until both workers
	// have reported stats with one.
	for {
		n := 0
		for _, w := range m.Workers() {
			if !w.LastHeartbeat.IsZero() && w.Stats["heartbeats"] > 0 {
				n++
			}
		}
		if n == 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("workers without heartbeats and stats: %+v", m.Workers())
		case <-time.After(5 * time.Millisecond):
		}
	}

	stopped = true
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Errorf("master Run after Stop: %v", err)
	}
}

// toInt reads a msgpack integer decoded into an interface value.
func toInt(v any) int64 {
	switch n := v.(type) {
	case int8:
		return int64(n)
	case int16:
		return int64(n)
	case int32:
		return int64(n)
	case int64:
		return n
	case uint8:
		return int64(n)
	case uint16:
		return int64(n)
	case uint32:
		return int64(n)
	case uint64:
		return int64(n)
	}
	return -1
}
