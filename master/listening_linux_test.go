package master

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseSyscall(t *testing.T) {
	t.Parallel()
	nr, args, ok := parseSyscall([]byte("288 0xa 0x0 0x0 0x80800 0x0 0x0 0x7ffd5e0 0x7f12\n"))
	if !ok || nr != 288 || args != [6]uint64{10, 0, 0, 0x80800, 0, 0} {
		t.Errorf("parseSyscall(accept4) = %d, %#x, %v", nr, args, ok)
	}
	for _, in := range []string{"running\n", "-1 0x7ffd 0x7f12\n", "", "7 0x1 0x2\n", "7 zz 0 0 0 0 0 0 0\n"} {
		if _, _, ok := parseSyscall([]byte(in)); ok {
			t.Errorf("parseSyscall(%q) ok, want not blocked in a syscall", in)
		}
	}
}

// TestWaitingOnBlockedThread blocks a thread of the test process in
// accept, poll and select on a socket of its own and checks that the probe
// finds it by inode (through a dup, for accept: not by fd number).
func TestWaitingOnBlockedThread(t *testing.T) {
	for _, how := range []string{"accept", "poll", "select"} {
		t.Run(how, func(t *testing.T) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			if err := unix.Listen(fd, 8); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			dup, err := unix.Dup(fd)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dup)
			if got, _ := waitingOn(os.Getpid(), []uint64{st.Ino}); got != "" {
				t.Fatalf("waitingOn before any thread waits = %q, want none", got)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				runtime.LockOSThread() // the blocked syscall keeps this thread
				switch how {
				case "accept":
					nfd, _, err := unix.Accept(dup)
					if err == nil {
						unix.Close(nfd)
					}
				case "poll":
					fds := []unix.PollFd{{Fd: int32(dup), Events: unix.POLLIN}}
					_, _ = unix.Poll(fds, -1)
				case "select":
					var set unix.FdSet
					set.Set(dup)
					_, _ = unix.Select(dup+1, &set, nil, nil, nil)
				}
			}()
			var got string
			if !eventually(t, func() bool {
				got, err = waitingOn(os.Getpid(), []uint64{st.Ino})
				return got != "" || err != nil
			}) || err != nil || got != how {
				t.Errorf("waitingOn = %q, %v; want %q", got, err, how)
			}
			// Wake the thread with a connection.
			c, err := net.Dial("tcp", sockName(t, fd))
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			<-done
		})
	}
}

func sockName(t *testing.T, fd int) string {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	a := sa.(*unix.SockaddrInet4)
	return fmt.Sprintf("127.0.0.1:%d", a.Port)
}

func TestEpollHas(t *testing.T) {
	t.Parallel()
	info := "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n" +
		"tfd:        4 events:       19 data:                4  pos:0 ino:2f1a sdev:8\n" +
		"tfd:        7 events: 80000019 data:                7  pos:0 ino:b4 sdev:9\n"
	for _, tt := range []struct {
		ino  uint64
		want bool
	}{{0x2f1a, true}, {0xb4, true}, {0x1057, false}, {0x2f1b, false}} {
		if got := epollHas([]byte(info), map[uint64]bool{tt.ino: true}); got != tt.want {
			t.Errorf("epollHas(ino %#x) = %v, want %v", tt.ino, got, tt.want)
		}
	}
}

// needTool returns the path of a program the test runs, skipping the test
// when it is missing outside CI (.ci/run installs it under CI=true).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found under CI (.ci/run installs it): %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// listeningTiming waits for worker 0 to be ready and returns how long after
// its start it took its listener (the listen_at line it printed) and how
// long until the master saw it ready.
func listeningTiming(t *testing.T, m *runningMaster) (listen, ready time.Duration) {
	t.Helper()
	started := m.first("worker started", "worker", 0)
	rl := m.first("worker ready", "worker", 0)
	line := m.stdoutLine("listen_at: ")
	_, v, _ := strings.Cut(line, "listen_at: ")
	us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		t.Fatalf("listen_at line %q: %v", line, err)
	}
	ts := func(l map[string]any) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, l["@timestamp"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	t0 := ts(started)
	return time.UnixMicro(us).Sub(t0), ts(rl).Sub(t0)
}

// A worker's readiness by each way of waiting on a listener that the probe
// knows, and the fallback for the ones it does not.
const (
	nodeServer = `const http = require('node:http');
const s = http.createServer((req, res) => res.end(process.pid + ' node\n'));
process.stdout.write('listen_at: ' + Math.round((performance.timeOrigin + performance.now()) * 1000) + '\n');
s.listen({fd: 3});
process.on('SIGTERM', () => { s.close(() => process.exit(0)); s.closeIdleConnections(); });
`
	asyncioServer = `import asyncio, os, socket, sys, time, signal
async def handle(r, w):
    await r.readline()
    w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 8\r\n\r\nasyncio\n")
    await w.drain()
    w.close()
async def main():
    sock = socket.socket(fileno=3)
    print("listen_at: %d" % (time.time_ns() // 1000), flush=True)
    srv = await asyncio.start_server(handle, sock=sock)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, srv.close)
    async with srv:
        try:
            await srv.serve_forever()
        except asyncio.CancelledError:
            pass
asyncio.run(main())
`
	// Waits on its listener in none of the ways the probe sees.
	sleepingServer = `import socket, sys, time, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
sock = socket.socket(fileno=3)
sock.setblocking(False)
print("listen_at: %d" % (time.time_ns() // 1000), flush=True)
while True:
    time.sleep(0.01)
    try:
        c, _ = sock.accept()
    except BlockingIOError:
        continue
    c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 9\r\n\r\nsleeping\n")
    c.close()
`
	selectServer = `import os, select, socket, sys, time, signal
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
sock = socket.socket(fileno=3)
print("listen_at: %d" % (time.time_ns() // 1000), flush=True)
while True:
    r, _, _ = select.select([sock], [], [])
    try:
        c, _ = sock.accept()
    except BlockingIOError:
        continue
    c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 7\r\n\r\nselect\n")
    c.close()
`
)

func script(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRealReadyListening(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		tool    string // needed on PATH
		command func(t *testing.T) []string
		mode    []string
		how     string // "accept", "epoll" or "" for the fallback
	}{
		{name: "go", mode: []string{"never-ready", "listen-stamp"}, how: "epoll"},
		{name: "accept", mode: []string{"never-ready", "listen-stamp", "accept"}, how: "accept"},
		{name: "node", tool: "node", how: "epoll", command: func(t *testing.T) []string {
			return []string{needTool(t, "node"), script(t, "server.js", nodeServer)}
		}},
		{name: "asyncio", tool: "python3", how: "epoll", command: func(t *testing.T) []string {
			return []string{needTool(t, "python3"), script(t, "server.py", asyncioServer)}
		}},
		{name: "select", tool: "python3", how: "select", command: func(t *testing.T) []string {
			return []string{needTool(t, "python3"), script(t, "server.py", selectServer)}
		}},
		{name: "sleeping", tool: "python3", how: "", command: func(t *testing.T) []string {
			return []string{needTool(t, "python3"), script(t, "server.py", sleepingServer)}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A long fallback where detection is expected, so that a busy
			// machine cannot turn it into a fallback.
			mode := "listening=40s"
			if tt.how == "" {
				mode = "listening=1s"
			}
			c := masterConfig{
				Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: mode, ReadyTimeout: 50 * time.Second,
				WorkerMode: tt.mode,
			}
			if tt.command != nil {
				c.Command = tt.command(t)
			}
			m := startMaster(t, c)
			m.next("all workers ready")
			const fellBack = "worker not seen waiting on its listener: ready after a delay"
			if tt.how == "" {
				if n := m.count(fellBack, "worker", 0); n != 1 {
					t.Errorf("%d fallback lines, want 1", n)
				}
				return
			}
			if l := m.first("worker waits on its listener", "worker", 0); l["how"] != tt.how {
				t.Errorf("detected by %v, want %s", l["how"], tt.how)
			}
			if n := m.count(fellBack); n != 0 {
				t.Errorf("%d fallback lines, want none", n)
			}
			listen, ready := listeningTiming(t, m)
			t.Logf("%s: listening %v after start, seen ready %v after start", tt.name, listen, ready)
		})
	}
}

func TestRealReadyListeningNoListener(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{Workers: 1, Ready: "listening=100ms", WorkerMode: []string{"never-ready"}})
	m.next("all workers ready")
	if n := m.count("worker has no inherited listener: ready after a delay", "worker", 0, "delay", "100ms"); n != 1 {
		t.Errorf("%d lines saying why the worker is ready by delay, want 1", n)
	}
}

func TestRealReadyListeningIPCWorker(t *testing.T) {
	t.Parallel()
	// No listener, so only the IPC ready message can be quicker than the
	// (long) fallback delay.
	m := startMaster(t, masterConfig{Workers: 2, Ready: "listening=40s", ReadyTimeout: 50 * time.Second})
	m.next("all workers ready")
	if n := m.count("worker has no inherited listener: ready after a delay"); n != 2 {
		t.Errorf("%d no-listener lines, want 2", n)
	}
}

// TestRealReadyListeningLatency measures, for a Go and a Node server, how
// long after a worker's start it takes its listener and how long until the
// master sees it ready (run with -v for the figures; nothing is asserted on
// them: the machine may be busy).
func TestRealReadyListeningLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	for _, server := range []string{"go", "node"} {
		t.Run(server, func(t *testing.T) {
			var ratios []float64
			var listens, readies []time.Duration
			for range 7 {
				c := masterConfig{Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "listening=40s",
					ReadyTimeout: 50 * time.Second, WorkerMode: []string{"never-ready", "listen-stamp"}}
				if server == "node" {
					c.Command = []string{needTool(t, "node"), script(t, "server.js", nodeServer)}
				}
				m := startMaster(t, c)
				m.next("all workers ready")
				listen, ready := listeningTiming(t, m)
				listens, readies = append(listens, listen), append(readies, ready)
				ratios = append(ratios, float64(ready)/float64(listen))
				_ = unix.Kill(-m.pid, unix.SIGKILL)
				m.wait()
			}
			slices.Sort(listens)
			slices.Sort(readies)
			slices.Sort(ratios)
			mid := len(ratios) / 2
			t.Logf("%s: median listen %v, median ready %v, median ratio %.2f (min %.2f, max %.2f)",
				server, listens[mid], readies[mid], ratios[mid], ratios[0], ratios[len(ratios)-1])
		})
	}
}

// TestRealReloadNodeDefaultReadiness reloads Node workers under load with
// the default readiness (listening) and measures, from the log, the fewest
// workers ready and not draining at any moment of the reload. The fallback
// delay is made long: on a machine busy enough, Node may take longer than
// the default 10s to start, and the test is about detection.
func TestRealReloadNodeDefaultReadiness(t *testing.T) {
	t.Parallel()
	const n = 3
	m := startMaster(t, masterConfig{
		Workers: n, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "listening=50s", ReadyTimeout: time.Minute,
		Command: []string{needTool(t, "node"), script(t, "server.js", nodeServer)},
	})
	addr := m.addr()
	m.next("all workers ready")
	var from, to int
	total := underLoad(t, addr, func() {
		m.signal(syscall.SIGHUP)
		m.next("reload started")
		m.mu.Lock()
		from = m.cursor - 1
		m.mu.Unlock()
		m.next("reload done")
		m.mu.Lock()
		to = m.cursor
		m.mu.Unlock()
	})
	m.mu.Lock()
	serving, fewest := n, n
	for _, l := range m.logs[from:to] {
		switch l["@message"] {
		case "worker ready":
			serving++
		case "draining worker":
			serving--
		}
		fewest = min(fewest, serving)
	}
	m.mu.Unlock()
	if fewest < n-1 {
		t.Errorf("at least once only %d of %d workers were ready during the reload, want %d or more", fewest, n, n-1)
	}
	if n := m.count("worker not seen waiting on its listener: ready after a delay"); n != 0 {
		t.Errorf("%d Node workers ready by the fallback delay, want every one detected", n)
	}
	t.Logf("reload of %d Node workers: at least %d ready at every moment, %d requests, none failed", n, fewest, total)
}
