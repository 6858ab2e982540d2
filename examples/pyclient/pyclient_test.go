// Package pyclient_test runs examples/pyclient/worker.py, a worker written in
// Python from docs/PROTOCOL.md alone, against the Go side of the wire.
package pyclient_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/clusterd/clusterd/worker/workertest"
)

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
	if hm != (helloMsg{Hello: "from python", PID: w.PID(), Slot: 1}) {
		t.Errorf("first user message = %+v", hm)
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

	f := w.Listened()["tcp://127.0.0.1:0"]
	if f == nil {
		t.Fatalf("python worker asked for no socket (%v)", w.Listened())
	}
	addr, err := sockshare.Addr(f)
	if err != nil {
		t.Fatal(err)
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
