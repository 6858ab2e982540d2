package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/clusterd/clusterd/worker"
)

// worker.Listeners and worker.Sockets give a program the master's
// listeners in every --balance mode: the inherited sockets in shared mode,
// balanced listeners in round-robin and least-conn, in the same order and
// with the same names and addresses.

func init() { helpers["sockets"] = socketsHelper }

// socketsHelper takes its listeners with worker.Sockets, prints them on one
// line, "sockets worker=W: NAME=ADDR NAME=ADDR ...", and serves HTTP on
// each: GET / answers "listener=I name=NAME worker=W". With -listen-unix
// PATH it takes that socket with worker.Listen first, and serves it as
// listener -1, name "listen".
func socketsHelper(args []string) int {
	fs := flag.NewFlagSet("sockets", flag.ContinueOnError)
	listenUnix := fs.String("listen-unix", "", "a unix socket path to take with worker.Listen before worker.Sockets")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	id, _ := worker.ID()
	worker.DrainOnSignal(syscall.SIGTERM)
	var first []sockshare.Socket
	if *listenUnix != "" {
		ln, err := worker.Listen(context.Background(), "unix", *listenUnix)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sockets helper: %v\n", err)
			return 1
		}
		first = append(first, sockshare.Socket{Name: "listen", Listener: ln})
	}
	socks, err := worker.Sockets()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sockets helper: %v\n", err)
		return 1
	}
	var line strings.Builder
	fmt.Fprintf(&line, "sockets worker=%d:", id)
	lns := make([]net.Listener, len(socks))
	for i, s := range socks {
		if s.Listener == nil {
			fmt.Fprintf(os.Stderr, "sockets helper: socket %s is not a listener\n", s.Name)
			return 1
		}
		fmt.Fprintf(&line, " %s=%s", s.Name, s.Listener.Addr())
		lns[i] = s.Listener
	}
	if len(first) > 0 {
		// Listed after Sockets' line, at index -1.
		socks = append(socks, first...)
		lns = append(lns, first[0].Listener)
	}
	fmt.Println(line.String())
	if err := worker.Ready(); err != nil {
		fmt.Fprintf(os.Stderr, "sockets helper: %v\n", err)
		return 1
	}
	errs := make(chan error, len(lns))
	for i, ln := range lns {
		mux := http.NewServeMux()
		index := i
		if socks[i].Name == "listen" {
			index = -1
		}
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "listener=%d name=%s worker=%d\n", index, socks[i].Name, id)
		})
		go func() { errs <- worker.ServeHTTP(context.Background(), &http.Server{Handler: mux}, ln) }()
	}
	for range lns {
		if err := <-errs; err != nil {
			fmt.Fprintf(os.Stderr, "sockets helper: %v\n", err)
			return 1
		}
	}
	return 0
}

// socketsCluster starts 2 socketsHelper workers under --balance balance
// with three listeners: "web" and an unnamed one on TCP, and an unnamed
// unix socket, which the workers take with worker.Listen first when
// listenFirst is set. It returns the cluster, the bound addresses in order
// (the unix one last) and a client for them.
func socketsCluster(t *testing.T, balance string, listenFirst bool) (*cluster, []string, *http.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "app.sock")
	var workerArgs []string
	if listenFirst {
		workerArgs = []string{"-listen-unix", sock}
	}
	c := startCluster(t, clusterConfig{
		flags: []string{"--listen=web=tcp://127.0.0.1:0", listenAny, "--listen=unix://" + sock,
			"-w", "2", "--ready", "ipc", "--balance", balance},
		helper:     "sockets",
		workerArgs: workerArgs,
	})
	c.waitStarted()
	var addrs []string
	c.mu.Lock()
	for _, e := range c.logs {
		if e.msg() == "listening" {
			addrs = append(addrs, e.str("addr"))
		}
	}
	c.mu.Unlock()
	if len(addrs) != 3 || addrs[2] != sock {
		t.Fatalf("master listens on %q, want 2 tcp addresses and %s", addrs, sock)
	}
	client := &http.Client{Timeout: failAfter(t), Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			if addr == "app.sock:80" {
				return d.DialContext(ctx, "unix", sock)
			}
			return d.DialContext(ctx, network, addr)
		},
	}}
	return c, addrs, client
}

// checkAnswer fetches / from the listener at addr (the unix socket for a
// path) and fails the test unless the answer starts with prefix.
func checkAnswer(t *testing.T, client *http.Client, addr, prefix string) {
	t.Helper()
	url := "http://" + addr + "/"
	if strings.HasPrefix(addr, "/") {
		url = "http://app.sock/"
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Errorf("GET / of %s: %v", addr, err)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.HasPrefix(string(body), prefix) {
		t.Errorf("GET / of %s = %q, %v; want an answer starting %q", addr, body, err, prefix)
	}
}

func TestListenersInEveryBalanceMode(t *testing.T) {
	for _, balance := range []string{"shared", "round-robin", "least-conn"} {
		t.Run(balance, func(t *testing.T) {
			c, addrs, client := socketsCluster(t, balance, false)
			// Unnamed sockets are "unknown", as LISTEN_FDNAMES names them.
			want := fmt.Sprintf(": web=%s unknown=%s unknown=%s", addrs[0], addrs[1], addrs[2])
			for id := range 2 {
				if line := c.waitStdout(fmt.Sprintf("sockets worker=%d:", id)); !strings.HasSuffix(line, want) {
					t.Errorf("worker %d printed %q, want it to end %q", id, line, want)
				}
			}
			for i, name := range []string{"web", "unknown", "unknown"} {
				checkAnswer(t, client, addrs[i], fmt.Sprintf("listener=%d name=%s worker=", i, name))
			}
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
			}
		})
	}
}

// A socket worker.Listen took is not in the result of worker.Sockets, in
// the balanced modes as in shared mode.
func TestSocketsAfterListen(t *testing.T) {
	for _, balance := range []string{"shared", "round-robin"} {
		t.Run(balance, func(t *testing.T) {
			c, addrs, client := socketsCluster(t, balance, true)
			want := fmt.Sprintf(": web=%s unknown=%s", addrs[0], addrs[1])
			for id := range 2 {
				if line := c.waitStdout(fmt.Sprintf("sockets worker=%d:", id)); !strings.HasSuffix(line, want) {
					t.Errorf("worker %d printed %q, want it to end %q", id, line, want)
				}
			}
			checkAnswer(t, client, addrs[0], "listener=0 name=web worker=")
			checkAnswer(t, client, addrs[1], "listener=1 name=unknown worker=")
			checkAnswer(t, client, addrs[2], "listener=-1 name=listen worker=")
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
			}
		})
	}
}
