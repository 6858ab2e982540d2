package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
)

// The tests in this file run the test binary as a worker, with the fds and
// environment a clusterd master gives one, and play the master's part.

// startHelper starts the test binary as helper name with extra files at fds
// 3, 4, ... and env added; it returns the child and a reader of its stdout.
// Cleanup kills its process group and waits for it.
func startHelper(t *testing.T, name string, extra []*os.File, env ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	useHelper(name)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + name}, env...)...)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if cmd.ProcessState == nil {
			cmd.Wait()
		}
	})
	r := bufio.NewReader(out)
	return cmd, r
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read helper output: %v (got %q)", err, line)
	}
	return strings.TrimSpace(line)
}

func nonBlocking(t *testing.T, f *os.File) bool {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		t.Fatal(err)
	}
	if ferr != nil {
		t.Fatal(ferr)
	}
	return flags&unix.O_NONBLOCK != 0
}

func TestWorkerUnderMaster(t *testing.T) {
	spec, err := sockshare.ParseSpec("web=tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := sockshare.Listen(spec, sockshare.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr, err := sockshare.Addr(ln)
	if err != nil {
		t.Fatal(err)
	}
	parent, child, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	notifyPath := t.TempDir() + "/notify"
	notifySock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notifySock.Close()

	cmd, out := startHelper(t, "serve", []*os.File{ln, child},
		"LISTEN_FDS=1", "LISTEN_FDNAMES=web", ipc.EnvIPCFD+"=4",
		ipc.EnvWorkerID+"=3", ipc.EnvWorkerGen+"=7", EnvNotifySocket+"="+notifyPath)
	child.Close()
	conn, err := ipc.NewConn(parent, ipc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	peer, err := conn.Handshake(ctx, ipc.Hello{PID: os.Getpid(), WorkerID: -1})
	if err != nil {
		t.Fatalf("handshake with worker: %v", err)
	}
	if peer.PID != cmd.Process.Pid || peer.WorkerID != 3 || peer.Generation != 7 {
		t.Errorf("worker hello = %+v, want pid %d, worker 3, generation 7", peer, cmd.Process.Pid)
	}
	m, err := conn.Recv()
	if err != nil || m.Kind != ipc.KindReady {
		t.Fatalf("first message after hello = %v, %v; want ready", m, err)
	}
	buf := make([]byte, 64)
	n, err := notifySock.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("sd_notify datagram = %q, %v; want READY=1", buf[:n], err)
	}
	// The worker converted its inherited socket: the open file description
	// the master shares with every worker must still be non-blocking.
	if !nonBlocking(t, ln) {
		t.Error("the shared socket is in blocking mode after the worker took it")
	}
	if line := readLine(t, out); line != "listeners=1 name=web" {
		t.Errorf("helper took %q, want listeners=1 name=web", line)
	}

	resp, err := http.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("worker 3 gen 7 pid %d\n", cmd.Process.Pid); string(body) != want {
		t.Errorf("GET = %q, want %q", body, want)
	}

	deadline := time.Now().Add(20 * time.Second).Truncate(time.Millisecond)
	dm, err := ipc.NewMessage(ipc.KindDrain, ipc.Drain{Deadline: deadline})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(dm); err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, out); line != "drained deadline="+deadline.UTC().Format(time.RFC3339Nano) {
		t.Errorf("helper after drain message: %q, want the deadline %v", line, deadline.UTC())
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("drained worker exited with %v, want 0", err)
	}
}

// helperServe is a worker as clusterd starts it; the test stands in for the
// master, and for exec-worker, which sets LISTEN_PID in a real worker.
func helperServe() int {
	os.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
	socks, err := Sockets()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := Listeners(); err != ErrListenersTaken {
		fmt.Fprintf(os.Stderr, "second Listeners = %v, want ErrListenersTaken\n", err)
		return 1
	}
	if err := Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("listeners=%d name=%s\n", len(socks), socks[0].Name)
	id, _ := ID()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "worker %d gen %d pid %d\n", id, Generation(), os.Getpid())
	})}
	if err := ServeHTTP(context.Background(), srv, socks[0].Listener); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, _ := DrainDeadline()
	fmt.Printf("drained deadline=%s\n", d.UTC().Format(time.RFC3339Nano))
	return 0
}

func TestDrainOnSignal(t *testing.T) {
	cmd, out := startHelper(t, "signal-drain", nil)
	if line := readLine(t, out); line != "waiting" {
		t.Fatalf("helper said %q, want waiting", line)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, out); line != "drained" {
		t.Errorf("helper after SIGTERM said %q, want drained", line)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("helper exited with %v, want 0", err)
	}
}

// helperSignalDrain waits for Drain with DrainOnSignal and no master.
func helperSignalDrain() int {
	DrainOnSignal()
	if err := Ready(); err != nil { // no master, no NOTIFY_SOCKET: a no-op
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("waiting")
	<-Drain()
	fmt.Println("drained")
	return 0
}

func TestNotifyAbstract(t *testing.T) {
	testNotify(t, "@clusterd-worker-test-"+fmt.Sprint(os.Getpid()))
}
