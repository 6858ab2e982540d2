package worker

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/clusterd/clusterd/sockshare"
)

func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

func TestIDAndGeneration(t *testing.T) {
	tests := []struct {
		env map[string]string
		id  int
		ok  bool
		gen int
	}{
		{map[string]string{}, 0, false, 0},
		{map[string]string{"CLUSTERD_WORKER_ID": "3", "CLUSTERD_WORKER_GEN": "7"}, 3, true, 7},
		{map[string]string{"CLUSTERD_WORKER_ID": "0"}, 0, true, 0},
		{map[string]string{"CLUSTERD_WORKER_ID": "-1", "CLUSTERD_WORKER_GEN": "x"}, 0, false, 0},
		{map[string]string{"CLUSTERD_WORKER_ID": "two"}, 0, false, 0},
	}
	for _, tt := range tests {
		p := newProcess(lookupIn(tt.env))
		id, ok := p.id()
		if id != tt.id || ok != tt.ok || p.generation() != tt.gen {
			t.Errorf("env %v: id() = %d, %v, generation() = %d; want %d, %v, %d",
				tt.env, id, ok, p.generation(), tt.id, tt.ok, tt.gen)
		}
	}
}

func TestNotify(t *testing.T) {
	testNotify(t, t.TempDir()+"/notify")
}

func testNotify(t *testing.T, names ...string) {
	for _, name := range names {
		sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer sock.Close()
		lookup := lookupIn(map[string]string{EnvNotifySocket: name})
		if err := notify(lookup, "READY=1"); err != nil {
			t.Fatalf("notify(%s) = %v", name, err)
		}
		buf := make([]byte, 64)
		sock.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := sock.Read(buf)
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Errorf("datagram on %s = %q, %v; want READY=1", name, buf[:n], err)
		}
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	if err := notify(lookupIn(nil), "READY=1"); err != nil {
		t.Errorf("notify without NOTIFY_SOCKET = %v, want nil", err)
	}
	lookup := lookupIn(map[string]string{EnvNotifySocket: t.TempDir() + "/absent"})
	if err := notify(lookup, "READY=1"); err == nil {
		t.Error("notify to a missing socket = nil, want an error")
	}
}

func TestIPCFDErrors(t *testing.T) {
	for _, v := range []string{"x", "-1", "2"} {
		p := newProcess(lookupIn(map[string]string{"CLUSTERD_IPC_FD": v}))
		if _, err := p.ipcConn(); err == nil {
			t.Errorf("CLUSTERD_IPC_FD=%s: ipcConn() = nil error, want one", v)
		}
	}
	p := newProcess(lookupIn(nil))
	if c, err := p.ipcConn(); c != nil || err != nil {
		t.Errorf("without CLUSTERD_IPC_FD: ipcConn() = %v, %v; want nil, nil", c, err)
	}
}

// TestOutsideClusterd checks the documented results of the messaging
// functions in a process that clusterd did not start (the test binary).
func TestOutsideClusterd(t *testing.T) {
	if IsWorker() {
		t.Skip("the test binary runs under clusterd")
	}
	if err := Send("x"); !errors.Is(err, ErrNotWorker) {
		t.Errorf("Send = %v, want ErrNotWorker", err)
	}
	if _, err := Request(t.Context(), "x"); !errors.Is(err, ErrNotWorker) {
		t.Errorf("Request = %v, want ErrNotWorker", err)
	}
	if err := Flush(t.Context()); !errors.Is(err, ErrNotWorker) {
		t.Errorf("Flush = %v, want ErrNotWorker", err)
	}
	if _, ok := <-Messages(); ok {
		t.Error("Messages delivered a message outside clusterd")
	}
	if err := Draining().Err(); err != nil {
		t.Errorf("Draining().Err() = %v, want nil", err)
	}
	ln, err := Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || a.Port == 0 {
		t.Errorf("Listen alone bound %v, want a port of 127.0.0.1", ln.Addr())
	}
	for _, tt := range []struct{ network, addr, want string }{
		{"udp", "127.0.0.1:0", `worker: listen udp 127.0.0.1:0: network "udp": want tcp, tcp4, tcp6 or unix`},
		{"tcp", "127.0.0.1:x", `worker: listen tcp 127.0.0.1:x: listen address "tcp://127.0.0.1:x"`},
	} {
		if _, err := Listen(t.Context(), tt.network, tt.addr); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Listen(%q, %q) = %v, want an error starting %q", tt.network, tt.addr, err, tt.want)
		}
	}
}

func TestMetrics(t *testing.T) {
	var m metrics
	c, err := m.counter("requests")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(2)
	c.Inc()
	if again, _ := m.counter("requests"); again != c {
		t.Error("counter(requests) twice gave two counters")
	}
	g, err := m.gauge("open_conns")
	if err != nil {
		t.Fatal(err)
	}
	g.Set(7)
	g.Add(-2)
	if got := m.snapshot(); len(got) != 2 || got["requests"] != 3 || got["open_conns"] != 5 {
		t.Errorf("snapshot = %v, want requests 3, open_conns 5", got)
	}
	if _, err := m.gauge("requests"); err == nil {
		t.Error("gauge(requests) of a counter = nil error")
	}
	for _, name := range []string{"", "Requests", "9lives", "a-b", "_x", strings.Repeat("a", 65)} {
		if _, err := m.counter(name); err == nil {
			t.Errorf("counter(%q) = nil error, want an invalid name", name)
		}
	}
}

func TestAddrMatcher(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	tests := []struct {
		spec  string
		bound net.Addr
		want  bool
	}{
		{"tcp://127.0.0.1:8080", tcp("127.0.0.1:8080"), true},
		{"tcp://127.0.0.1:8080", tcp("127.0.0.1:8081"), false},
		{"tcp://127.0.0.1:8080", tcp("0.0.0.0:8080"), false},
		{"tcp://:8080", tcp("[::]:8080"), true},
		{"tcp://0.0.0.0:8080", tcp("[::]:8080"), true},
		{"tcp://:8080", tcp("127.0.0.1:8080"), false},
		{"tcp://localhost:8080", tcp("127.0.0.1:8080"), true},
		{"tcp://[::1]:8080", tcp("[::1]:8080"), true},
		{"tcp://127.0.0.1:0", tcp("127.0.0.1:8080"), false},
		{"unix:///run/a.sock", &net.UnixAddr{Name: "/run/a.sock", Net: "unix"}, true},
		{"unix:///run/a.sock", &net.UnixAddr{Name: "/run/b.sock", Net: "unix"}, false},
		{"unix:///run/a.sock", tcp("127.0.0.1:8080"), false},
	}
	for _, tt := range tests {
		spec, err := sockshare.ParseSpec(tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		match, err := addrMatcher(t.Context(), spec)
		if err != nil {
			t.Fatalf("addrMatcher(%s): %v", tt.spec, err)
		}
		if got := match(tt.bound); got != tt.want {
			t.Errorf("addrMatcher(%s)(%v) = %v, want %v", tt.spec, tt.bound, got, tt.want)
		}
	}
}
