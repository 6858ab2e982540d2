package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
	"golang.org/x/sys/unix"
)

// fdStore is a stand-in for systemd's side of the fd store: the NOTIFY_SOCKET
// of the service, keeping the fds that arrive with FDSTORE=1 by their
// FDNAME=, as systemd does for FileDescriptorStoreMax=, and reporting the
// names that FDSTOREREMOVE=1 removes.
type fdStore struct {
	path    string
	stored  chan storedFD
	removed chan string
}

type storedFD struct {
	name string
	f    *os.File
}

func newFDStore(t *testing.T) *fdStore {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fdStore{path: path, stored: make(chan storedFD, 64), removed: make(chan string, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*16))
		for {
			n, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return // closed by the cleanup
			}
			msg := string(buf[:n])
			var fds []int
			if cmsgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil {
				for _, m := range cmsgs {
					if got, err := unix.ParseUnixRights(&m); err == nil {
						fds = append(fds, got...)
					}
				}
			}
			name := "stored" // systemd's name for an fd sent without FDNAME=
			for _, line := range strings.Split(msg, "\n") {
				if v, ok := strings.CutPrefix(line, "FDNAME="); ok {
					name = v
				}
			}
			if !strings.Contains("\n"+msg+"\n", "\nFDSTORE=1\n") {
				for _, fd := range fds {
					unix.Close(fd) // systemd too drops fds sent without FDSTORE=1
				}
				if strings.Contains("\n"+msg+"\n", "\nFDSTOREREMOVE=1\n") {
					s.removed <- name
				}
				continue
			}
			for _, fd := range fds {
				s.stored <- storedFD{name: name, f: os.NewFile(uintptr(fd), name)}
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		for {
			select {
			case sf := <-s.stored:
				sf.f.Close()
			default:
				return
			}
		}
	})
	return s
}

func (s *fdStore) next(t *testing.T) storedFD {
	t.Helper()
	select {
	case sf := <-s.stored:
		t.Cleanup(func() { sf.f.Close() })
		return sf
	case <-time.After(failAfter(t)):
		t.Fatal("no fd arrived at the fd store")
		return storedFD{}
	}
}

// rawLoad keeps clients sending one request per connection and tells a
// refused connection (nothing listening: the failure the fd store
// prevents) from one cut while in flight (a killed worker's).
type rawLoad struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	ok      atomic.Int64
	refused atomic.Int64
	cut     atomic.Int64
	mu      sync.Mutex
	pids    map[int]int // answering worker pid -> answers
	errs    []string
}

func startRawLoad(t *testing.T, addr string, clients int) *rawLoad {
	l := &rawLoad{stop: make(chan struct{}), pids: make(map[int]int)}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				l.once(t, addr)
			}
		}()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *rawLoad) once(t *testing.T, addr string) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			l.refused.Add(1)
		}
		l.note("dial: " + err.Error())
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(failAfter(t)))
	if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		l.cut.Add(1)
		return
	}
	b, err := io.ReadAll(conn)
	_, body, found := strings.Cut(string(b), "\r\n\r\n")
	var pid, id, gen int
	if err != nil || !found {
		l.cut.Add(1)
		return
	}
	if _, err := fmt.Sscanf(body, "pid=%d worker=%d gen=%d", &pid, &id, &gen); err != nil {
		l.cut.Add(1)
		return
	}
	l.ok.Add(1)
	l.mu.Lock()
	l.pids[pid]++
	l.mu.Unlock()
}

func (l *rawLoad) note(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, s)
	}
}

func (l *rawLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// answeredBy counts answers from any of pids.
func (l *rawLoad) answeredBy(pids []int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, p := range pids {
		n += l.pids[p]
	}
	return n
}

// waitOK waits until n more requests than before have succeeded.
func (l *rawLoad) waitOK(t *testing.T, n int64) {
	t.Helper()
	want := l.ok.Load() + n
	deadline := time.Now().Add(failAfter(t))
	for l.ok.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("only %d requests succeeded, want %d (refused %d, cut %d)", l.ok.Load(), want, l.refused.Load(), l.cut.Load())
		}
		// Polling a counter of the test's own clients with a failure
		// deadline: there is no event to wait on.
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFDStoreSurvivesKill9: clusterd hands its listening socket to the fd
// store; after a kill -9 of the master (its workers die with it) the
// stand-in for systemd starts a new clusterd with the stored socket as
// LISTEN_FDS, as systemd does for Restart=. Under load, no connection is
// refused at any time: the socket, and its accept queue, never closed.
func TestFDStoreSurvivesKill9(t *testing.T) {
	store := newFDStore(t)
	flags := []string{"--listen", "web=tcp://127.0.0.1:0", "-w", "2", "--ready", "ipc"}
	c1 := startCluster(t, clusterConfig{flags: flags, env: []string{"NOTIFY_SOCKET=" + store.path}})
	sf := store.next(t)
	if sf.name != "web" {
		t.Errorf("stored fd named %q, want web (the --listen name)", sf.name)
	}
	addr, _ := c1.waitStarted()
	if _, l := c1.waitLog(0, "listeners kept by the service manager"); l.int("stored") != 1 {
		t.Errorf("log %v, want stored=1", l)
	}

	load := startRawLoad(t, addr, 4)
	load.waitOK(t, 50)
	if err := syscall.Kill(c1.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c1.wait()
	okAtKill := load.ok.Load()

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c2 := startCluster(t, clusterConfig{
		flags:  flags,
		prefix: []string{master.ExecWorkerArg, "--", exe}, // sets LISTEN_PID to the master's pid
		extra:  []*os.File{sf.f},
		env:    []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=" + sf.name, "NOTIFY_SOCKET=" + store.path},
	})
	addr2, pids2 := c2.waitStarted()
	if addr2 != addr {
		t.Errorf("the new master listens on %s, want the stored socket's %s", addr2, addr)
	}
	load.waitOK(t, 50)
	load.halt()
	if n := load.refused.Load(); n != 0 {
		t.Errorf("%d connections refused across the kill and restart, want 0 (%q)", n, load.errs)
	}
	if load.answeredBy(pids2) == 0 {
		t.Errorf("no answer from the new master's workers %v", pids2)
	}
	t.Logf("requests: %d answered (%d before the kill), %d cut in flight by the kill, %d refused",
		load.ok.Load(), okAtKill, load.cut.Load(), load.refused.Load())
	// The new master adopted the stored socket by its name and did not
	// store it again: systemd holds it already.
	if n := c2.countLogs(0, "listeners kept by the service manager"); n != 0 {
		t.Errorf("the adopted socket was stored again")
	}
	select {
	case again := <-store.stored:
		again.f.Close()
		t.Errorf("fd %q stored again by the new master", again.name)
	default:
	}
	c2.signal(syscall.SIGTERM)
	if code, last := c2.wait(); code != 0 {
		t.Fatalf("clusterd exited %d (%s), want 0", code, last)
	}
}

// TestFDStoreKeepsHealedListener: when the master heals a stored listener
// that stopped listening, it stores it again (FDSTOREREMOVE=1 of its name,
// then FDSTORE=1), so a master started after a kill -9 gets a socket that
// listens. The test shuts the socket down through the copy the stand-in
// holds, which is the same socket the master and its workers hold.
func TestFDStoreKeepsHealedListener(t *testing.T) {
	store := newFDStore(t)
	flags := []string{"--listen", "web=tcp://127.0.0.1:0", "-w", "2", "--ready", "ipc"}
	c1 := startCluster(t, clusterConfig{flags: flags, env: []string{"NOTIFY_SOCKET=" + store.path}})
	first := store.next(t)
	addr, _ := c1.waitStarted()
	cursor := c1.logLen()
	rc, err := first.f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_RD) }); err != nil || serr != nil {
		t.Fatalf("shutdown the stored socket: %v, %v", err, serr)
	}
	// The workers' accept fails; the master heals the socket at their exit.
	c1.waitLog(cursor, "listener stopped listening; listening again", "name", "web")
	c1.waitLog(cursor, "healed listener kept by the service manager again", "name", "web")
	select {
	case name := <-store.removed:
		if name != "web" {
			t.Errorf("FDSTOREREMOVE of %q, want web", name)
		}
	case <-time.After(failAfter(t)):
		t.Fatal("the master did not remove the healed listener's old fd from the store")
	}
	again := store.next(t)
	if again.name != "web" {
		t.Errorf("stored again as %q, want web", again.name)
	}
	var v int
	if rc, err = again.f.SyscallConn(); err == nil {
		err = rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN) })
	}
	if err == nil {
		err = serr
	}
	if err != nil || v != 1 {
		t.Errorf("the fd stored again: SO_ACCEPTCONN %d, %v; want a listening socket", v, err)
	}
	if err := syscall.Kill(c1.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c1.wait()

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c2 := startCluster(t, clusterConfig{
		flags:  flags,
		prefix: []string{master.ExecWorkerArg, "--", exe},
		extra:  []*os.File{again.f},
		env:    []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=web", "NOTIFY_SOCKET=" + store.path},
	})
	if addr2, _ := c2.waitStarted(); addr2 != addr {
		t.Errorf("the new master listens on %s, want the stored socket's %s", addr2, addr)
	}
	get(t, "http://"+addr+"/")
	if n := c2.countLogs(0, "listener stopped listening; listening again"); n != 0 {
		t.Errorf("the new master had to heal the socket it got from the store")
	}
	c2.signal(syscall.SIGTERM)
	if code, last := c2.wait(); code != 0 {
		t.Fatalf("clusterd exited %d (%s), want 0", code, last)
	}
}
