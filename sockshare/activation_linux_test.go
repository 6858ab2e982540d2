package sockshare

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	registerHelper("activated", helperActivated)
}

// Variables that script the "activated" helper.
const (
	// envSetListenPID makes the helper set LISTEN_PID to its own pid first, as
	// clusterd's exec-worker step does before it runs the worker program.
	envSetListenPID = "CLUSTERD_TEST_SET_LISTEN_PID"
	// envExpectFDs is the number of sockets the helper expects; with 0 it only
	// reports what Files returned.
	envExpectFDs = "CLUSTERD_TEST_EXPECT_FDS"
	// envUseListeners makes the helper take its sockets with Listeners instead of
	// Files and Sockets.
	envUseListeners = "CLUSTERD_TEST_USE_LISTENERS"
)

// TestActivation passes a TCP and a UDP socket to a helper the way a clusterd
// master or systemd does, and talks to the helper through them.
func TestActivation(t *testing.T) {
	t.Parallel()
	t.Run("Files", func(t *testing.T) { testActivation(t) })
	t.Run("Listeners", func(t *testing.T) { testActivation(t, envUseListeners+"=1") })
}

func testActivation(t *testing.T, extraEnv ...string) {
	tcp := mustListen(t, "web=tcp://127.0.0.1:0", ListenOptions{})
	udp := mustListen(t, "dns=udp://127.0.0.1:0", ListenOptions{})
	env := append(ListenEnv([]string{"web", "dns"}), envSetListenPID+"=1", envExpectFDs+"=2")
	env = append(env, extraEnv...)
	h := startHelper(t, "activated", []*os.File{tcp, udp}, env...)
	// exec.Cmd called Fd on both files to pass them: their mode must not change.
	mustNonblocking(t, "tcp socket after starting a child with it", tcp)
	mustNonblocking(t, "udp socket after starting a child with it", udp)

	if got := h.line(t); got != "files web dns" {
		t.Fatalf("helper reported %q, want %q", got, "files web dns")
	}
	tcpAddr, _ := Addr(tcp)
	udpAddr, _ := Addr(udp)
	tcp.Close() // the helper holds the only copies now
	udp.Close()

	c, err := net.Dial("tcp", tcpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "tcp ok" {
		t.Fatalf("tcp read = %q, %v; want %q", buf[:n], err, "tcp ok")
	}
	u, err := net.Dial("udp", udpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	n, err = u.Read(buf)
	if err != nil || string(buf[:n]) != "udp ok" {
		t.Fatalf("udp read = %q, %v; want %q", buf[:n], err, "udp ok")
	}
	if err := h.wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
}

// TestActivationNotForUs gives the helper LISTEN_* variables meant for another
// process (this one): it must find no sockets.
func TestActivationNotForUs(t *testing.T) {
	t.Parallel()
	tcp := mustListen(t, "tcp://127.0.0.1:0", ListenOptions{})
	env := append(ListenEnv([]string{"web"}), EnvListenPID+"="+strconv.Itoa(os.Getpid()), envExpectFDs+"=0")
	h := startHelper(t, "activated", []*os.File{tcp}, env...)
	if got := h.line(t); got != "files" {
		t.Errorf("helper reported %q, want no files", got)
	}
	if err := h.wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
}

// TestActivationMissingFD promises the helper more sockets than it gets.
func TestActivationMissingFD(t *testing.T) {
	t.Parallel()
	tcp := mustListen(t, "tcp://127.0.0.1:0", ListenOptions{})
	// Descriptors 3..1002: the helper's runtime cannot have all of them open.
	env := []string{EnvListenFDs + "=1000", envSetListenPID + "=1", envExpectFDs + "=0"}
	h := startHelper(t, "activated", []*os.File{tcp}, env...)
	got := h.line(t)
	if !strings.HasPrefix(got, "error socket activation: fd ") || !strings.Contains(got, "bad file descriptor") {
		t.Errorf("helper reported %q, want a bad file descriptor error", got)
	}
	if err := h.wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
}

// helperActivated takes its sockets with Files(true), checks what Files promises,
// reports "files <names...>", and with two sockets answers one TCP connection and
// one datagram.
func helperActivated() error {
	if os.Getenv(envSetListenPID) != "" {
		if err := os.Setenv(EnvListenPID, strconv.Itoa(os.Getpid())); err != nil {
			return err
		}
	}
	expect, err := strconv.Atoi(os.Getenv(envExpectFDs))
	if err != nil {
		return err
	}
	// Before Files: exec cleared close-on-exec on the passed descriptors.
	for fd := ListenFDsStart; fd < ListenFDsStart+expect; fd++ {
		fdfl, fl, err := fdFlags(fd)
		if err != nil {
			return err
		}
		if fdfl&unix.FD_CLOEXEC != 0 || fl&unix.O_NONBLOCK == 0 {
			return fmt.Errorf("inherited fd %d: flags %#x status %#x, want inheritable and non-blocking", fd, fdfl, fl)
		}
	}
	if os.Getenv(envUseListeners) != "" {
		socks, err := Listeners(true)
		if err != nil {
			return err
		}
		defer closeSockets(socks)
		if len(socks) != expect {
			return fmt.Errorf("Listeners returned %d sockets, want %d", len(socks), expect)
		}
		names := []string{"files"}
		for _, s := range socks {
			names = append(names, s.Name)
		}
		fmt.Println(strings.Join(names, " "))
		return serveActivated(socks)
	}
	files, err := Files(true)
	for _, key := range []string{EnvListenPID, EnvListenFDs, EnvListenFDNames} {
		if v, ok := os.LookupEnv(key); ok {
			return fmt.Errorf("Files(true) left %s=%s", key, v)
		}
	}
	if err != nil {
		fmt.Println("error", err)
		return nil
	}
	names := []string{"files"}
	for _, f := range files {
		names = append(names, f.Name())
	}
	if len(files) != expect {
		return fmt.Errorf("Files returned %d files, want %d", len(files), expect)
	}
	for _, f := range files {
		if err := cloexecNonblocking(f); err != nil {
			return fmt.Errorf("after Files: %w", err)
		}
	}
	if again, err := Files(true); err != nil || len(again) != 0 {
		return fmt.Errorf("second Files(true) = %d files, %v; want none", len(again), err)
	}
	if expect == 0 {
		fmt.Println(strings.Join(names, " "))
		return nil
	}
	socks, err := Sockets(files)
	if err != nil {
		return err
	}
	defer closeSockets(socks)
	for _, f := range files {
		if nb, err := isNonblocking(f); err != nil || !nb {
			return fmt.Errorf("%s after Sockets: non-blocking %v, %v", f.Name(), nb, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	fmt.Println(strings.Join(names, " "))
	return serveActivated(socks)
}

// serveActivated answers one TCP connection on socks[0] and one datagram on
// socks[1].
func serveActivated(socks []Socket) error {
	conn, err := socks[0].Listener.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("tcp ok")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, from, err := socks[1].PacketConn.ReadFrom(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("datagram %q, want ping", buf[:n])
	}
	_, err = socks[1].PacketConn.WriteTo([]byte("udp ok"), from)
	return err
}
