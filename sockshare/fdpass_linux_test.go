package sockshare

import (
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// unixPair returns a connected stream socketpair as *net.UnixConn, closed at cleanup.
func unixPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatalf("FileConn: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1])
}

func TestSendRecvFDsRoundTrip(t *testing.T) {
	a, b := unixPair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rc, _ := r.SyscallConn()
	var rfd int
	rc.Control(func(fd uintptr) { rfd = int(fd) })
	wc, _ := w.SyscallConn()
	var wfd int
	wc.Control(func(fd uintptr) { wfd = int(fd) })
	if err := SendFDs(a, []byte("hello"), rfd, wfd); err != nil {
		t.Fatalf("SendFDs: %v", err)
	}
	buf := make([]byte, 16)
	n, fds, err := RecvFDs(b, buf, 2)
	if err != nil {
		t.Fatalf("RecvFDs: %v", err)
	}
	if string(buf[:n]) != "hello" || len(fds) != 2 {
		t.Fatalf("RecvFDs = %q, %d fds, want hello, 2", buf[:n], len(fds))
	}
	for _, f := range fds {
		f.Close()
	}
}
