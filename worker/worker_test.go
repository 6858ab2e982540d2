package worker

import (
	"net"
	"testing"
	"time"
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
