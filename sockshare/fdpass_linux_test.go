package sockshare

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func init() {
	registerHelper("recv-listener", helperRecvListener)
}

// socketpair returns a connected unix socketpair of type sotype as *os.File, closed
// at cleanup.
func socketpair(t testing.TB, sotype int) (a, b *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, sotype|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b = os.NewFile(uintptr(fds[0]), "pair-a"), os.NewFile(uintptr(fds[1]), "pair-b")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// unixConn converts f to a *net.UnixConn closed at cleanup; f stays open.
func unixConn(t testing.TB, f *os.File) *net.UnixConn {
	t.Helper()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatalf("FileConn(%s): %v", f.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// unixPair returns both ends of a socketpair of type sotype as *net.UnixConn; the
// files are closed at once.
func unixPair(t testing.TB, sotype int) (a, b *net.UnixConn) {
	t.Helper()
	fa, fb := socketpair(t, sotype)
	a, b = unixConn(t, fa), unixConn(t, fb)
	fa.Close()
	fb.Close()
	return a, b
}

// pipeFDs returns a pipe's descriptors, closed at cleanup, to pass around.
func pipeFDs(t testing.TB) (r, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatalf("pipe2: %v", err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

// sameFile reports whether two descriptors refer to the same open file.
func sameFile(t testing.TB, a, b int) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatalf("fstat %d: %v", a, err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatalf("fstat %d: %v", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func TestSendRecvFDs(t *testing.T) {
	t.Parallel()
	for _, count := range []int{0, 1, 2, 7, 64} {
		t.Run(strconv.Itoa(count), func(t *testing.T) {
			a, b := unixPair(t, unix.SOCK_STREAM)
			var sent []int
			for range (count + 1) / 2 {
				r, w := pipeFDs(t)
				sent = append(sent, r, w)
			}
			sent = sent[:count]
			msg := []byte("message with " + strconv.Itoa(count) + " fds")
			if err := SendFDs(a, msg, sent...); err != nil {
				t.Fatalf("SendFDs: %v", err)
			}
			buf := make([]byte, 64)
			n, got, err := RecvFDs(b, buf, count)
			if err != nil {
				t.Fatalf("RecvFDs: %v", err)
			}
			defer closeFiles(got)
			if !bytes.Equal(buf[:n], msg) {
				t.Errorf("RecvFDs data = %q, want %q", buf[:n], msg)
			}
			if len(got) != count {
				t.Fatalf("RecvFDs returned %d files, want %d", len(got), count)
			}
			for i, f := range got {
				fd, err := connFD(f)
				if err != nil {
					t.Fatal(err)
				}
				if !sameFile(t, fd, sent[i]) {
					t.Errorf("file %d refers to another file than sent fd %d", i, sent[i])
				}
				if slices.Contains(sent, fd) {
					t.Errorf("file %d has the sender's descriptor number %d, want a new one", i, fd)
				}
				fl, _, err := fdFlags(fd)
				if err != nil {
					t.Fatal(err)
				}
				if fl&unix.FD_CLOEXEC == 0 {
					t.Errorf("received fd %d is not close-on-exec", fd)
				}
				if want := "fd " + strconv.Itoa(fd); f.Name() != want {
					t.Errorf("file name = %q, want %q", f.Name(), want)
				}
			}
		})
	}
}

// TestSendFDsPartialWrite sends more data than the socket buffer holds, so the
// first sendmsg writes part of it and SendFDs must finish with plain writes.
func TestSendFDsPartialWrite(t *testing.T) {
	t.Parallel()
	a, b := unixPair(t, unix.SOCK_STREAM)
	fd, err := connFD(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	r, _ := pipeFDs(t)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	errc := make(chan error, 1)
	go func() { errc <- SendFDs(a, msg, r) }()

	buf := make([]byte, len(msg))
	n, files, err := RecvFDs(b, buf, 1)
	if err != nil {
		t.Fatalf("RecvFDs: %v", err)
	}
	defer closeFiles(files)
	if len(files) != 1 {
		t.Fatalf("RecvFDs returned %d files, want 1", len(files))
	}
	if _, err := io.ReadFull(b, buf[n:]); err != nil {
		t.Fatalf("read rest: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("SendFDs: %v", err)
	}
	if !bytes.Equal(buf, msg) {
		t.Errorf("received data differs from sent data")
	}
}

func TestSendFDsEmptyData(t *testing.T) {
	t.Parallel()
	a, _ := unixPair(t, unix.SOCK_STREAM)
	r, _ := pipeFDs(t)
	if err := SendFDs(a, nil, r); err == nil {
		t.Errorf("SendFDs(nil data) = nil, want error")
	}
}

// TestRecvFDsErrors covers every error path of RecvFDs and checks that the
// descriptors that arrived are closed on each.
func TestRecvFDsErrors(t *testing.T) {
	tests := []struct {
		name    string
		sotype  int
		send    int // descriptors sent
		data    string
		bufLen  int
		maxFDs  int
		wantErr error
	}{
		// RightsSpace(2) has room for exactly 2 descriptors: 8 is truncated.
		{name: "control truncated", sotype: unix.SOCK_STREAM, send: 8, data: "x", bufLen: 8, maxFDs: 1, wantErr: ErrControlTruncated},
		// The control buffer has room for 2 (alignment) but the limit is 1.
		{name: "over limit", sotype: unix.SOCK_STREAM, send: 2, data: "x", bufLen: 8, maxFDs: 1, wantErr: ErrTooManyFDs},
		{name: "none expected", sotype: unix.SOCK_STREAM, send: 1, data: "x", bufLen: 8, maxFDs: 0, wantErr: ErrTooManyFDs},
		{name: "datagram truncated", sotype: unix.SOCK_DGRAM, send: 2, data: "a long datagram", bufLen: 4, maxFDs: 2, wantErr: ErrDataTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := unixPair(t, tt.sotype)
			var sent []int
			for range tt.send {
				r, _ := pipeFDs(t)
				sent = append(sent, r)
			}
			before := openFDs(t)
			if err := SendFDs(a, []byte(tt.data), sent...); err != nil {
				t.Fatalf("SendFDs: %v", err)
			}
			_, files, err := RecvFDs(b, make([]byte, tt.bufLen), tt.maxFDs)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("RecvFDs error = %v, want %v", err, tt.wantErr)
			}
			if files != nil {
				t.Errorf("RecvFDs returned %d files with an error", len(files))
			}
			checkFDs(t, "RecvFDs "+tt.name, before)
		})
	}

	t.Run("negative limit", func(t *testing.T) {
		_, b := unixPair(t, unix.SOCK_STREAM)
		if _, _, err := RecvFDs(b, make([]byte, 1), -1); err == nil {
			t.Errorf("RecvFDs(maxFDs -1) = nil error, want one")
		}
	})

	t.Run("closed peer", func(t *testing.T) {
		a, b := unixPair(t, unix.SOCK_STREAM)
		a.Close()
		before := openFDs(t)
		n, files, err := RecvFDs(b, make([]byte, 8), 4)
		if err != io.EOF || n != 0 || files != nil {
			t.Errorf("RecvFDs after peer closed = %d, %d files, %v; want 0, none, EOF", n, len(files), err)
		}
		r, _ := pipeFDs(t)
		before = openFDs(t)
		if err := SendFDs(b, []byte("x"), r); !errors.Is(err, unix.EPIPE) {
			t.Errorf("SendFDs to closed peer = %v, want EPIPE", err)
		}
		checkFDs(t, "closed peer", before)
	})

	t.Run("closed conn", func(t *testing.T) {
		a, b := unixPair(t, unix.SOCK_STREAM)
		a.Close()
		b.Close()
		if _, _, err := RecvFDs(b, make([]byte, 8), 4); !errors.Is(err, net.ErrClosed) {
			t.Errorf("RecvFDs on closed conn = %v, want net.ErrClosed", err)
		}
		if err := SendFDs(a, []byte("x"), 0); !errors.Is(err, net.ErrClosed) {
			t.Errorf("SendFDs on closed conn = %v, want net.ErrClosed", err)
		}
	})

	t.Run("bad descriptor", func(t *testing.T) {
		a, _ := unixPair(t, unix.SOCK_STREAM)
		r, _ := pipeFDs(t)
		unix.Close(r) // the cleanup's close fails harmlessly
		if err := SendFDs(a, []byte("x"), r); !errors.Is(err, unix.EBADF) {
			t.Errorf("SendFDs(closed fd) = %v, want EBADF", err)
		}
	})
}

func TestRightsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, fds := range [][]int{{0}, {1, 2}, {3, 4, 5, 6, 7}, {2147483647}} {
		oob := RightsControl(fds)
		if len(oob) != RightsSpace(len(fds)) {
			t.Errorf("len(RightsControl(%v)) = %d, want RightsSpace = %d", fds, len(oob), RightsSpace(len(fds)))
		}
		got, err := parseRights(oob, noClose(t))
		if err != nil || !slices.Equal(got, fds) {
			t.Errorf("parseRights(RightsControl(%v)) = %v, %v; want %v", fds, got, err, fds)
		}
		// Two control messages in one buffer, as a kernel may deliver them.
		got, err = parseRights(append(slices.Clone(oob), oob...), noClose(t))
		if want := append(slices.Clone(fds), fds...); err != nil || !slices.Equal(got, want) {
			t.Errorf("parseRights(two messages of %v) = %v, %v; want %v", fds, got, err, want)
		}
	}
	if oob := RightsControl(nil); oob != nil {
		t.Errorf("RightsControl(nil) = %v, want nil", oob)
	}
	if got, err := ParseRights(nil); got != nil || err != nil {
		t.Errorf("ParseRights(nil) = %v, %v; want nil, nil", got, err)
	}
	if n := RightsSpace(0); n != 0 {
		t.Errorf("RightsSpace(0) = %d, want 0", n)
	}
}

// noClose returns a closer for parseRights that records nothing is closed for
// real: test and fuzz inputs hold fd numbers this process may be using.
func noClose(t testing.TB) func(int) { return func(int) {} }

// otherControl encodes a control message of another type (SCM_CREDENTIALS).
func otherControl() []byte {
	return unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3})
}

func TestParseRightsErrors(t *testing.T) {
	t.Parallel()
	valid := RightsControl([]int{10, 11})
	tests := []struct {
		name       string
		oob        []byte
		wantClosed []int
	}{
		{"short tail", append(slices.Clone(valid), 1, 2, 3), []int{10, 11}},
		{"header length too small", func() []byte {
			b := slices.Clone(valid)
			putCmsgLen(b, 3)
			return b
		}(), nil},
		{"header length past end", func() []byte {
			b := slices.Clone(valid)
			putCmsgLen(b, uint64(len(b)+100))
			return b
		}(), nil},
		{"partial descriptor", func() []byte {
			b := slices.Clone(valid)
			putCmsgLen(b, uint64(unix.CmsgLen(6)))
			return b
		}(), []int{10}},
		{"negative descriptor", RightsControl([]int{12, -1}), []int{12}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var closed []int
			fds, err := parseRights(tt.oob, func(fd int) { closed = append(closed, fd) })
			if !errors.Is(err, ErrBadControl) || fds != nil {
				t.Fatalf("parseRights(%x) = %v, %v; want nil, ErrBadControl", tt.oob, fds, err)
			}
			if !slices.Equal(closed, tt.wantClosed) {
				t.Errorf("parseRights closed %v, want %v", closed, tt.wantClosed)
			}
		})
	}

	t.Run("other types ignored", func(t *testing.T) {
		oob := append(otherControl(), valid...)
		fds, err := parseRights(oob, noClose(t))
		if err != nil || !slices.Equal(fds, []int{10, 11}) {
			t.Errorf("parseRights(credentials + rights) = %v, %v; want [10 11]", fds, err)
		}
	})
}

// putCmsgLen overwrites the length of the first control message header in b.
func putCmsgLen(b []byte, n uint64) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.SetLen(int(n))
}

// TestParseRightsClosesRealFDs checks the exported functions close real
// descriptors on their error paths.
func TestParseRightsClosesRealFDs(t *testing.T) {
	before := openFDs(t)
	dup := func() int {
		fd, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	oob := append(RightsControl([]int{dup(), dup()}), 1, 2, 3)
	if _, err := ParseRights(oob); !errors.Is(err, ErrBadControl) {
		t.Fatalf("ParseRights(malformed) = %v, want ErrBadControl", err)
	}
	checkFDs(t, "ParseRights error", before)

	oob = RightsControl([]int{dup(), dup(), dup()})
	if _, err := ParseRecvRights(oob, unix.MSG_CTRUNC); !errors.Is(err, ErrControlTruncated) {
		t.Fatalf("ParseRecvRights(MSG_CTRUNC) = %v, want ErrControlTruncated", err)
	}
	checkFDs(t, "ParseRecvRights MSG_CTRUNC", before)

	fds, err := ParseRecvRights(RightsControl([]int{dup()}), 0)
	if err != nil || len(fds) != 1 {
		t.Fatalf("ParseRecvRights = %v, %v; want one fd", fds, err)
	}
	unix.Close(fds[0])
	checkFDs(t, "ParseRecvRights", before)
}

func FuzzParseRights(f *testing.F) {
	f.Add(RightsControl([]int{3}))
	f.Add(RightsControl([]int{3, 4, 5}))
	f.Add(append(otherControl(), RightsControl([]int{7})...))
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, oob []byte) {
		var closed []int
		fds, err := parseRights(oob, func(fd int) { closed = append(closed, fd) })
		if err != nil {
			if fds != nil {
				t.Fatalf("parseRights(%x) returned fds %v with error %v", oob, fds, err)
			}
			return
		}
		if len(closed) != 0 {
			t.Fatalf("parseRights(%x) succeeded but closed %v", oob, closed)
		}
		if len(fds) == 0 {
			return
		}
		again, err := parseRights(RightsControl(fds), noClose(t))
		if err != nil || !slices.Equal(again, fds) {
			t.Fatalf("parseRights(RightsControl(%v)) = %v, %v", fds, again, err)
		}
	})
}

// TestFDPassingNoLeaks passes 10,000 descriptors back and forth and checks that the
// process has exactly the descriptors it had before.
func TestFDPassingNoLeaks(t *testing.T) {
	a, b := unixPair(t, unix.SOCK_STREAM)
	r, w := pipeFDs(t)
	buf := make([]byte, 8)
	roundTrip := func() {
		if err := SendFDs(a, []byte("ping"), r, w); err != nil {
			t.Fatalf("SendFDs: %v", err)
		}
		_, files, err := RecvFDs(b, buf, 2)
		if err != nil || len(files) != 2 {
			t.Fatalf("RecvFDs = %d files, %v; want 2", len(files), err)
		}
		// Send them back the other way, then close every copy.
		fr, _ := connFD(files[0])
		fw, _ := connFD(files[1])
		if err := SendFDs(b, []byte("pong"), fr, fw); err != nil {
			t.Fatalf("SendFDs back: %v", err)
		}
		closeFiles(files)
		_, back, err := RecvFDs(a, buf, 2)
		if err != nil || len(back) != 2 {
			t.Fatalf("RecvFDs back = %d files, %v; want 2", len(back), err)
		}
		closeFiles(back)
	}
	roundTrip() // let the runtime open what it opens once (netpoll)
	before := openFDs(t)
	const rounds = 10000 // ×2 descriptors ×2 directions
	for range rounds / 2 {
		roundTrip()
	}
	checkFDs(t, fmt.Sprintf("%d fd-passing round trips", rounds), before)
	if got := len(openFDs(t)); got != len(before) {
		t.Errorf("%d descriptors open after %d round trips, want %d", got, rounds, len(before))
	}
}

// TestPassListenerToChild passes a TCP listener to a helper process over
// SCM_RIGHTS, closes the parent's copy, and connects: only the child can accept.
func TestPassListenerToChild(t *testing.T) {
	t.Parallel()
	ln, err := Listen(Spec{Network: "tcp4", Address: "127.0.0.1:0"}, ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr, err := Addr(ln)
	if err != nil {
		t.Fatal(err)
	}
	parentEnd, childEnd := socketpair(t, unix.SOCK_STREAM)
	h := startHelper(t, "recv-listener", []*os.File{childEnd})
	childEnd.Close()
	conn := unixConn(t, parentEnd)
	lnFD, err := connFD(ln)
	if err != nil {
		t.Fatal(err)
	}
	if err := SendFDs(conn, []byte("L"), lnFD); err != nil {
		t.Fatalf("SendFDs: %v", err)
	}
	if got := h.line(t); got != "received listener" {
		t.Fatalf("helper said %q, want %q", got, "received listener")
	}
	ln.Close()

	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from child: %v", err)
	}
	if want := fmt.Sprintf("accepted by %d\n", h.cmd.Process.Pid); string(got) != want {
		t.Errorf("child wrote %q, want %q", got, want)
	}
	if err := h.wait(); err != nil {
		t.Errorf("helper: %v", err)
	}
}

// helperRecvListener receives a listener on fd 3, reports, accepts one connection
// and writes its pid to it.
func helperRecvListener() error {
	f := os.NewFile(3, "ipc")
	c, err := net.FileConn(f)
	if err != nil {
		return err
	}
	f.Close()
	buf := make([]byte, 8)
	n, files, err := RecvFDs(c.(*net.UnixConn), buf, 1)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "L" || len(files) != 1 {
		return fmt.Errorf("received %q with %d fds, want \"L\" with 1", buf[:n], len(files))
	}
	if err := cloexecNonblocking(files[0]); err != nil {
		return fmt.Errorf("received %w", err)
	}
	socks, err := Sockets(files)
	closeFiles(files)
	if err != nil {
		return err
	}
	ln := socks[0].Listener
	defer ln.Close()
	fmt.Println("received listener")
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "accepted by %d\n", os.Getpid())
	return err
}

// BenchmarkPassFD measures SendFDs and RecvFDs through a socketpair, passing a
// non-blocking TCP listener, as clusterd passes sockets: each received file is
// registered with the runtime's poller and closed again, as a receiver does.
func BenchmarkPassFD(b *testing.B) {
	ln, err := Listen(Spec{Network: "tcp4", Address: "127.0.0.1:0"}, ListenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	lnFD, err := connFD(ln)
	if err != nil {
		b.Fatal(err)
	}
	for _, perMsg := range []int{1, 16} {
		b.Run("fds="+strconv.Itoa(perMsg), func(b *testing.B) {
			a, c := unixPair(b, unix.SOCK_STREAM)
			fds := slices.Repeat([]int{lnFD}, perMsg)
			data := []byte("f")
			buf := make([]byte, 8)
			b.ReportAllocs()
			for b.Loop() {
				if err := SendFDs(a, data, fds...); err != nil {
					b.Fatal(err)
				}
				_, files, err := RecvFDs(c, buf, perMsg)
				if err != nil || len(files) != perMsg {
					b.Fatalf("RecvFDs = %d files, %v", len(files), err)
				}
				closeFiles(files)
			}
			b.ReportMetric(float64(b.N*perMsg)/b.Elapsed().Seconds(), "fds/s")
		})
	}
}

func TestRecvFDsDeadline(t *testing.T) {
	t.Parallel()
	_, b := unixPair(t, unix.SOCK_STREAM)
	if err := b.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := RecvFDs(b, make([]byte, 1), 1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("RecvFDs past deadline = %v, want os.ErrDeadlineExceeded", err)
	}
}

// TestSendFDsKernelLimit sends the most descriptors Linux allows in one message,
// and one more, which sendmsg refuses.
func TestSendFDsKernelLimit(t *testing.T) {
	t.Parallel()
	a, b := unixPair(t, unix.SOCK_STREAM)
	r, _ := pipeFDs(t)
	fds := slices.Repeat([]int{r}, scmMaxFD)
	if err := SendFDs(a, []byte("x"), fds...); err != nil {
		t.Fatalf("SendFDs(%d fds): %v", len(fds), err)
	}
	_, files, err := RecvFDs(b, make([]byte, 1), 1<<30)
	if err != nil || len(files) != scmMaxFD {
		t.Fatalf("RecvFDs = %d files, %v; want %d", len(files), err, scmMaxFD)
	}
	closeFiles(files)
	if err := SendFDs(a, []byte("x"), append(fds, r)...); !errors.Is(err, unix.EINVAL) {
		t.Errorf("SendFDs(%d fds) = %v, want EINVAL", len(fds)+1, err)
	}
}
