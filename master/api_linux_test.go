package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"golang.org/x/sys/unix"
)

// The api-worker helper: a worker that speaks the ipc protocol directly
// (master and worker must not import each other) and does what the
// master's messages ask, so tests can drive the master's command, event
// and message API end to end.

func init() { registerHelper("api-worker", helperAPIWorker) }

// Environment of the api-worker helper.
const (
	// envAPIListen: ask the master for this address at start, serve HTTP
	// on it, then say ready.
	envAPIListen = "CLUSTERD_TEST_API_LISTEN"
	// envAPINeverReadyFrom: never say ready from this generation on.
	envAPINeverReadyFrom = "CLUSTERD_TEST_API_NEVER_READY_FROM"
)

// apiMsg is the body of every message between the tests and the
// api-worker helper.
type apiMsg struct {
	Op   string `msgpack:"op"`
	Seq  int    `msgpack:"seq,omitempty"`
	N    int    `msgpack:"n,omitempty"`
	Addr string `msgpack:"addr,omitempty"`
	PID  int    `msgpack:"pid,omitempty"`
	FD   int    `msgpack:"fd,omitempty"`
	OK   bool   `msgpack:"ok,omitempty"`
	Text string `msgpack:"text,omitempty"`
}

// helperAPIWorker answers, as messages (KindUser) from the master:
//
//	seq        {seq}: the next of a numbered series; counted and checked
//	seq-done   reply seq-result {n, ok: every seq in order}
//	flood      {n}: send n messages seq 0..n-1, then flood-done {n}
//	calls      {n callers, seq requests each}: requests "echo" to the
//	           master from n goroutines at once, then calls-result {n, ok}
//	listen     {addr}: a listen request; reply listened {addr, fd} or
//	           listened {text: the error, addr: its code}
//	ping       reply pong {pid}
//
// and, as requests (KindRequest): echo {seq} → {seq, pid}; fail → a
// KindError with code "nope"; die → exit 3 without answering. It sends
// heartbeats and stats ("received": messages so far) at the master's
// interval.
func helperAPIWorker() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "api-worker:", err)
		return 2
	}
	conn, env, hello, err := dialMaster()
	if err != nil {
		return fail(err)
	}
	pid := os.Getpid()
	send := func(v apiMsg) {
		m, err := ipc.NewMessage(ipc.KindUser, v)
		if err == nil {
			err = conn.Send(m)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "api-worker: send:", err)
		}
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d %d\n", pid, env.WorkerID, env.Generation)
	})}
	srv.SetKeepAlivesEnabled(false)
	// listen asks the master for addr and serves on the socket.
	listen := func(addr string) apiMsg {
		req, _ := ipc.NewMessage(ipc.KindListenRequest, ipc.ListenRequest{Addr: addr})
		r, err := conn.Call(context.Background(), req)
		if err != nil {
			var re *ipc.RemoteError
			if errors.As(err, &re) {
				return apiMsg{Op: "listened", Addr: re.Code, Text: err.Error()}
			}
			return apiMsg{Op: "listened", Text: err.Error()}
		}
		var body ipc.ListenReply
		if err := r.Decode(&body); err != nil || len(r.FDs) != 1 {
			r.CloseFDs()
			return apiMsg{Op: "listened", Text: fmt.Sprintf("bad listen reply (%v, %d fds)", err, len(r.FDs))}
		}
		f := r.FDs[0]
		// Not f.Fd(): that would make the socket, shared with the other
		// workers, blocking.
		fd, err := rawFD(f)
		if err != nil {
			return apiMsg{Op: "listened", Text: err.Error()}
		}
		ln, err := net.FileListener(f)
		if err != nil {
			return apiMsg{Op: "listened", Text: err.Error()}
		}
		// f stays open (and its number valid) for the test to find in /proc.
		go srv.Serve(ln)
		return apiMsg{Op: "listened", Addr: body.Addr, FD: fd}
	}
	if addr := os.Getenv(envAPIListen); addr != "" {
		if r := listen(addr); r.Text != "" {
			return fail(errors.New(r.Text))
		}
	}
	neverFrom, _ := strconv.Atoi(os.Getenv(envAPINeverReadyFrom))
	if neverFrom == 0 || env.Generation < neverFrom {
		if err := conn.Send(&ipc.Message{Kind: ipc.KindReady}); err != nil {
			return fail(err)
		}
	}
	var received atomic.Int64
	if hello.HeartbeatMS > 0 {
		go func() {
			t := time.NewTicker(time.Duration(hello.HeartbeatMS) * time.Millisecond)
			defer t.Stop()
			for seq := uint64(1); ; seq++ {
				<-t.C
				hb, _ := ipc.NewMessage(ipc.KindHeartbeat, ipc.Heartbeat{Seq: seq})
				st, _ := ipc.NewMessage(ipc.KindStats, ipc.Stats{Counters: map[string]int64{"received": received.Load()}})
				if conn.Send(hb) != nil || conn.Send(st) != nil {
					return
				}
			}
		}()
	}
	term := make(chan os.Signal, 1)
	go func() {
		// SIGTERM (the drain) ends the worker with 0; it stops reading.
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM)
		<-sigs
		term <- syscall.SIGTERM
	}()
	msgs := make(chan *ipc.Message)
	go func() {
		for {
			m, err := conn.Recv()
			if err != nil {
				close(msgs)
				return
			}
			msgs <- m
		}
	}()
	next, inOrder := 0, true
	var calls sync.WaitGroup
	for {
		var m *ipc.Message
		select {
		case <-term:
			calls.Wait()
			return 0
		case m = <-msgs:
			if m == nil {
				return 0 // the master went away
			}
		}
		received.Add(1)
		var v apiMsg
		if err := m.Decode(&v); err != nil {
			return fail(err)
		}
		switch m.Kind {
		case ipc.KindUser:
			switch v.Op {
			case "seq":
				if v.Seq != next {
					inOrder = false
				}
				next++
			case "seq-done":
				send(apiMsg{Op: "seq-result", N: next, OK: inOrder})
			case "flood":
				for i := range v.N {
					send(apiMsg{Op: "seq", Seq: i})
				}
				send(apiMsg{Op: "flood-done", N: v.N})
			case "calls":
				calls.Add(1)
				go func() {
					defer calls.Done()
					send(workerCalls(conn, v.N, v.Seq))
				}()
			case "listen":
				calls.Add(1)
				go func() {
					defer calls.Done()
					send(listen(v.Addr))
				}()
			case "ping":
				send(apiMsg{Op: "pong", PID: pid})
			}
		case ipc.KindRequest:
			var r *ipc.Message
			switch v.Op {
			case "echo":
				r, err = m.Reply(ipc.KindResponse, apiMsg{Op: "echo", Seq: v.Seq, PID: pid})
			case "fail":
				r, err = m.Reply(ipc.KindError, ipc.Error{Code: "nope", Text: "asked to fail"})
			case "die":
				os.Exit(3)
			default:
				r, err = m.Reply(ipc.KindError, ipc.Error{Code: ipc.CodeUnsupported, Text: v.Op})
			}
			if err == nil {
				err = conn.Send(r)
			}
			if err != nil {
				return fail(err)
			}
		}
	}
}

// workerCalls makes perCaller "echo" requests to the master from each of
// callers goroutines at once and checks that every reply answers its own
// request.
func workerCalls(conn *ipc.Conn, callers, perCaller int) apiMsg {
	var wg sync.WaitGroup
	var bad atomic.Int64
	var firstErr atomic.Value
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perCaller {
				seq := c*100000 + j
				req, _ := ipc.NewMessage(ipc.KindRequest, apiMsg{Op: "echo", Seq: seq})
				r, err := conn.Call(context.Background(), req)
				var v apiMsg
				if err == nil {
					err = r.Decode(&v)
				}
				if err != nil || v.Seq != seq {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("seq %d: reply %d, %v", seq, v.Seq, err))
				}
			}
		}()
	}
	wg.Wait()
	text, _ := firstErr.Load().(string)
	return apiMsg{Op: "calls-result", N: callers * perCaller, OK: bad.Load() == 0, Text: text}
}

// procSocketLink returns the inode of the socket at fd of process pid, from
// /proc ("socket:[12345]").
func procSocketLink(pid, fd int) (string, error) {
	target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(target, "socket:[") {
		return "", fmt.Errorf("pid %d fd %d is %s, not a socket", pid, fd, target)
	}
	return target, nil
}

// holdsInode reports whether process pid has a descriptor on inode.
func holdsInode(pid int, inode string) bool {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, e := range ents {
		if t, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil && t == inode {
			return true
		}
	}
	return false
}

// dialMaster is what a test worker speaking ipc directly does first: it
// adopts its inherited IPC end (CLUSTERD_IPC_FD, made close-on-exec) and
// says hello, within 30s.
func dialMaster() (*ipc.Conn, ipc.Env, ipc.Hello, error) {
	env, ok, err := ipc.ParseEnv(os.LookupEnv)
	if err != nil || !ok {
		return nil, env, ipc.Hello{}, fmt.Errorf("no ipc environment (%v)", err)
	}
	unix.CloseOnExec(env.IPCFD)
	conn, err := ipc.NewConn(os.NewFile(uintptr(env.IPCFD), "ipc"), ipc.Options{})
	if err != nil {
		return nil, env, ipc.Hello{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hello, err := conn.Handshake(ctx, ipc.Hello{PID: os.Getpid(), WorkerID: env.WorkerID, Generation: env.Generation})
	if err != nil {
		conn.Close()
		return nil, env, ipc.Hello{}, err
	}
	return conn, env, hello, nil
}
