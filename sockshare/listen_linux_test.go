package sockshare

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mustListen is Listen that fails t on error and closes the file at cleanup.
func mustListen(t testing.TB, s string, opts ListenOptions) *os.File {
	t.Helper()
	spec, err := ParseSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Listen(spec, opts)
	if err != nil {
		t.Fatalf("Listen(%s): %v", spec, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// hasIPv6Loopback reports whether ::1 can be bound here.
func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

var abstractSeq atomic.Int64

// abstractName returns an abstract socket name no other test run uses.
func abstractName() string {
	return fmt.Sprintf("@clusterd-sockshare-test-%d-%d", os.Getpid(), abstractSeq.Add(1))
}

func sockoptInt(t testing.TB, f *os.File, level, opt int) int {
	t.Helper()
	fd, err := connFD(f)
	if err != nil {
		t.Fatal(err)
	}
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, err)
	}
	return v
}

func TestListenForms(t *testing.T) {
	t.Parallel()
	ipv6 := hasIPv6Loopback()
	dir := t.TempDir()
	tests := []struct {
		spec     string
		needIPv6 bool
		wantNet  string // Addr(f).Network()
		wantIP   string // "" for unix
		sotype   int
	}{
		{"tcp://127.0.0.1:0", false, "tcp", "127.0.0.1", unix.SOCK_STREAM},
		{"tcp4://127.0.0.1:0", false, "tcp", "127.0.0.1", unix.SOCK_STREAM},
		{"tcp4://:0", false, "tcp", "0.0.0.0", unix.SOCK_STREAM},
		{"tcp://localhost:0", false, "tcp", "127.0.0.1", unix.SOCK_STREAM},
		{"web=127.0.0.1:0", false, "tcp", "127.0.0.1", unix.SOCK_STREAM},
		{"tcp6://[::1]:0", true, "tcp", "::1", unix.SOCK_STREAM},
		{"tcp://[::1]:0", true, "tcp", "::1", unix.SOCK_STREAM},
		{"tcp6://:0", true, "tcp", "::", unix.SOCK_STREAM},
		{"udp://127.0.0.1:0", false, "udp", "127.0.0.1", unix.SOCK_DGRAM},
		{"udp4://:0", false, "udp", "0.0.0.0", unix.SOCK_DGRAM},
		{"udp6://[::1]:0", true, "udp", "::1", unix.SOCK_DGRAM},
		{"unix://" + filepath.Join(dir, "a.sock"), false, "unix", "", unix.SOCK_STREAM},
		{"unix://" + abstractName(), false, "unix", "", unix.SOCK_STREAM},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			if tt.needIPv6 && !ipv6 {
				t.Skip("no IPv6 loopback on this host")
			}
			f := mustListen(t, tt.spec, ListenOptions{})
			spec, _ := ParseSpec(tt.spec)
			if f.Name() != spec.String() {
				t.Errorf("Listen(%s) file name = %q, want %q", spec, f.Name(), spec.String())
			}
			fd, err := connFD(f)
			if err != nil {
				t.Fatal(err)
			}
			fdfl, fl, err := fdFlags(fd)
			if err != nil {
				t.Fatal(err)
			}
			if fdfl&unix.FD_CLOEXEC == 0 {
				t.Errorf("Listen(%s) is not close-on-exec", spec)
			}
			if fl&unix.O_NONBLOCK == 0 {
				t.Errorf("Listen(%s) is in blocking mode", spec)
			}
			if got := sockoptInt(t, f, unix.SOL_SOCKET, unix.SO_TYPE); got != tt.sotype {
				t.Errorf("Listen(%s) socket type = %d, want %d", spec, got, tt.sotype)
			}
			if tt.sotype == unix.SOCK_STREAM {
				if sockoptInt(t, f, unix.SOL_SOCKET, unix.SO_ACCEPTCONN) != 1 {
					t.Errorf("Listen(%s) is not listening", spec)
				}
			}
			addr, err := Addr(f)
			if err != nil {
				t.Fatalf("Addr: %v", err)
			}
			if addr.Network() != tt.wantNet {
				t.Errorf("Addr(Listen(%s)).Network() = %q, want %q", spec, addr.Network(), tt.wantNet)
			}
			switch a := addr.(type) {
			case *net.TCPAddr:
				if a.Port == 0 || a.IP.String() != tt.wantIP {
					t.Errorf("Addr(Listen(%s)) = %v, want %s with a port chosen", spec, a, tt.wantIP)
				}
			case *net.UDPAddr:
				if a.Port == 0 || a.IP.String() != tt.wantIP {
					t.Errorf("Addr(Listen(%s)) = %v, want %s with a port chosen", spec, a, tt.wantIP)
				}
			case *net.UnixAddr:
				if a.Name != spec.Address {
					t.Errorf("Addr(Listen(%s)) = %q, want %q", spec, a.Name, spec.Address)
				}
			default:
				t.Errorf("Addr(Listen(%s)) is a %T", spec, addr)
			}
			// The socket works: convert it and exchange a byte.
			socks, err := Sockets([]*os.File{f})
			if err != nil {
				t.Fatalf("Sockets: %v", err)
			}
			defer socks[0].Close()
			dialAddr := addr.String()
			if a, ok := addr.(*net.TCPAddr); ok && a.IP.IsUnspecified() {
				dialAddr = net.JoinHostPort("localhost", strconv.Itoa(a.Port))
			}
			if a, ok := addr.(*net.UDPAddr); ok && a.IP.IsUnspecified() {
				dialAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port))
			}
			exchange(t, socks[0], addr.Network(), dialAddr)
			mustNonblocking(t, "listener after use", f)
		})
	}
}

// exchange dials s and checks one byte gets through.
func exchange(t testing.TB, s Socket, network, addr string) {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{42}); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 1)
	if s.Listener != nil {
		ac, err := s.Listener.Accept()
		if err != nil {
			t.Fatalf("accept: %v", err)
		}
		defer ac.Close()
		if _, err := ac.Read(buf); err != nil {
			t.Fatalf("read: %v", err)
		}
	} else {
		if _, _, err := s.PacketConn.ReadFrom(buf); err != nil {
			t.Fatalf("read from: %v", err)
		}
	}
	if buf[0] != 42 {
		t.Errorf("received %d, want 42", buf[0])
	}
}

func TestListenDualStack(t *testing.T) {
	t.Parallel()
	if !hasIPv6Loopback() {
		t.Skip("no IPv6 on this host")
	}
	f := mustListen(t, "tcp://:0", ListenOptions{})
	addr, err := Addr(f)
	if err != nil {
		t.Fatal(err)
	}
	if ip := addr.(*net.TCPAddr).IP; !ip.Equal(net.IPv6unspecified) {
		t.Errorf("Listen(tcp://:0) bound %v, want [::] (dual stack)", addr)
	}
	if v := sockoptInt(t, f, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 0 {
		t.Errorf("Listen(tcp://:0) IPV6_V6ONLY = %d, want 0", v)
	}
	only := mustListen(t, "tcp6://:0", ListenOptions{V6Only: true})
	if v := sockoptInt(t, only, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
		t.Errorf("Listen(tcp6://:0, V6Only) IPV6_V6ONLY = %d, want 1", v)
	}
	udp := mustListen(t, "udp6://:0", ListenOptions{V6Only: true})
	if v := sockoptInt(t, udp, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
		t.Errorf("Listen(udp6://:0, V6Only) IPV6_V6ONLY = %d, want 1", v)
	}
	both := mustListen(t, "tcp6://:0", ListenOptions{})
	if v := sockoptInt(t, both, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 0 {
		t.Errorf("Listen(tcp6://:0) IPV6_V6ONLY = %d, want 0", v)
	}
}

func TestListenBacklog(t *testing.T) {
	t.Parallel()
	somaxconn, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(somaxconn)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ backlog, want int }{{7, 7}, {0, max}, {max + 1000, max}} {
		f := mustListen(t, "tcp://127.0.0.1:0", ListenOptions{Backlog: tt.backlog})
		fd, _ := connFD(f)
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		// For a listening socket, Linux reports sk_max_ack_backlog in tcpi_sacked.
		if int(info.Sacked) != tt.want {
			t.Errorf("Listen(Backlog: %d) backlog = %d, want %d", tt.backlog, info.Sacked, tt.want)
		}
	}

	// A unix listener refuses (EAGAIN) a non-blocking connect once backlog+1
	// connections wait in its queue.
	path := filepath.Join(t.TempDir(), "b.sock")
	mustListen(t, "unix://"+path, ListenOptions{Backlog: 3})
	for i := range 5 {
		err := connectUnix(t, path)
		if i < 4 && err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		if i == 4 && !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("connect %d with backlog 3 full = %v, want EAGAIN", i, err)
		}
	}
}

// connectUnix makes a non-blocking connection to a unix socket, kept open until
// the test ends.
func connectUnix(t testing.TB, path string) error {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path})
}

func TestListenReusePort(t *testing.T) {
	t.Parallel()
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			first := mustListen(t, network+"://127.0.0.1:0", ListenOptions{ReusePort: true})
			addr, err := Addr(first)
			if err != nil {
				t.Fatal(err)
			}
			spec := Spec{Network: network, Address: addr.String()}
			if v := sockoptInt(t, first, unix.SOL_SOCKET, unix.SO_REUSEPORT); v != 1 {
				t.Errorf("SO_REUSEPORT = %d, want 1", v)
			}
			second, err := Listen(spec, ListenOptions{ReusePort: true})
			if err != nil {
				t.Fatalf("second Listen(%s) with ReusePort: %v", spec, err)
			}
			second.Close()
			_, err = Listen(spec, ListenOptions{})
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("Listen(%s) on a busy address = %v, want EADDRINUSE", spec, err)
			}
			if !strings.Contains(err.Error(), addr.String()) {
				t.Errorf("error %q does not name the address %s", err, addr)
			}
		})
	}
}

func TestListenUnixModeOwner(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "m.sock")
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 65534, 65534 // root can give the file away
	}
	mustListen(t, "unix://"+path, ListenOptions{UnixMode: 0o640, UnixOwner: &Owner{UID: uid, GID: gid}})
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != 0o640 {
		t.Errorf("socket file mode = %o, want socket with 0640", st.Mode)
	}
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("socket file owner = %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}

	// -1 keeps an id; options that do not apply are ignored.
	path2 := filepath.Join(dir, "n.sock")
	mustListen(t, "unix://"+path2, ListenOptions{UnixMode: 0o600, UnixOwner: &Owner{UID: -1, GID: -1}, ReusePort: true, V6Only: true})
	if err := unix.Lstat(path2, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o600 || int(st.Uid) != os.Getuid() {
		t.Errorf("socket file mode = %o owner %d, want 0600 and %d", st.Mode&0o7777, st.Uid, os.Getuid())
	}
	mustListen(t, "unix://"+abstractName(), ListenOptions{UnixMode: 0o600, UnixOwner: &Owner{UID: uid, GID: gid}})
	mustListen(t, "tcp://127.0.0.1:0", ListenOptions{UnixMode: 0o600})
}

func TestListenUnixStale(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	spec := Spec{Network: "unix", Address: path}

	t.Run("stale file is replaced", func(t *testing.T) {
		f, err := Listen(spec, ListenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.Close() // leaves the file behind, as a crashed process does
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("socket file gone after close: %v", err)
		}
		g, err := Listen(spec, ListenOptions{})
		if err != nil {
			t.Fatalf("Listen over a stale socket file: %v", err)
		}
		defer g.Close()
		if err := connectUnix(t, path); err != nil {
			t.Errorf("connect to the new listener: %v", err)
		}
	})

	t.Run("live socket is kept", func(t *testing.T) {
		live := filepath.Join(dir, "live.sock")
		mustListen(t, "unix://"+live, ListenOptions{})
		_, err := Listen(Spec{Network: "unix", Address: live}, ListenOptions{})
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "a process is listening") || !strings.Contains(err.Error(), live) {
			t.Fatalf("Listen over a live socket = %v, want EADDRINUSE naming %s", err, live)
		}
		if err := connectUnix(t, live); err != nil {
			t.Errorf("the live listener stopped answering: %v", err)
		}
	})

	t.Run("live socket with full backlog is kept", func(t *testing.T) {
		full := filepath.Join(dir, "full.sock")
		mustListen(t, "unix://"+full, ListenOptions{Backlog: 1})
		for connectUnix(t, full) == nil {
		}
		_, err := Listen(Spec{Network: "unix", Address: full}, ListenOptions{})
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "a process is listening") {
			t.Fatalf("Listen over a busy socket = %v, want EADDRINUSE", err)
		}
	})

	t.Run("other file type is kept", func(t *testing.T) {
		plain := filepath.Join(dir, "plain")
		if err := os.WriteFile(plain, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Listen(Spec{Network: "unix", Address: plain}, ListenOptions{})
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Listen over a regular file = %v, want EADDRINUSE, not a socket", err)
		}
		if b, err := os.ReadFile(plain); err != nil || string(b) != "data" {
			t.Errorf("regular file changed: %q, %v", b, err)
		}
	})

	t.Run("datagram socket is kept", func(t *testing.T) {
		dg := filepath.Join(dir, "dgram.sock")
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Net: "unixgram", Name: dg})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = Listen(Spec{Network: "unix", Address: dg}, ListenOptions{})
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "another type") {
			t.Fatalf("Listen over a live datagram socket = %v, want EADDRINUSE", err)
		}
	})

	t.Run("abstract", func(t *testing.T) {
		name := abstractName()
		mustListen(t, "unix://"+name, ListenOptions{})
		_, err := Listen(Spec{Network: "unix", Address: name}, ListenOptions{})
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("second Listen(%s) = %v, want EADDRINUSE", name, err)
		}
	})
}

// TestListenErrors checks every error of Listen, and that none leaks a descriptor
// or leaves a socket file behind.
func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		spec    Spec
		opts    ListenOptions
		wantErr string
	}{
		{"negative backlog", Spec{Network: "tcp", Address: "127.0.0.1:0"}, ListenOptions{Backlog: -1}, "negative backlog -1"},
		{"bad mode", Spec{Network: "unix", Address: filepath.Join(dir, "x")}, ListenOptions{UnixMode: os.ModeDir | 0o700}, "unix mode"},
		{"bad owner", Spec{Network: "unix", Address: filepath.Join(dir, "x")}, ListenOptions{UnixOwner: &Owner{UID: -2, GID: 0}}, "unix owner -2:0"},
		{"unknown network", Spec{Network: "sctp", Address: "127.0.0.1:0"}, ListenOptions{}, `unknown network "sctp"`},
		{"zero spec", Spec{}, ListenOptions{}, `unknown network ""`},
		{"bad address", Spec{Network: "tcp", Address: "nonsense"}, ListenOptions{}, "missing port"},
		{"bad port", Spec{Network: "udp", Address: ":x"}, ListenOptions{}, "not a decimal number"},
		{"tcp4 with IPv6 host", Spec{Network: "tcp4", Address: "[::1]:0"}, ListenOptions{}, "not an IPv4 address"},
		{"tcp6 with IPv4 host", Spec{Network: "tcp6", Address: "127.0.0.1:0"}, ListenOptions{}, "not an IPv6 address"},
		{"address not local", Spec{Network: "tcp", Address: "192.0.2.1:0"}, ListenOptions{}, "cannot assign requested address"},
		{"missing directory", Spec{Network: "unix", Address: filepath.Join(dir, "no", "such")}, ListenOptions{}, "no such file or directory"},
		{"empty unix path", Spec{Network: "unix", Address: ""}, ListenOptions{}, "path is empty"},
		{"unknown zone", Spec{Network: "tcp6", Address: "[fe80::1%nosuchif0]:0"}, ListenOptions{}, "nosuchif0"},
	}
	if os.Getuid() != 0 {
		tests = append(tests, struct {
			name    string
			spec    Spec
			opts    ListenOptions
			wantErr string
		}{"chown not permitted", Spec{Network: "unix", Address: filepath.Join(dir, "c.sock")}, ListenOptions{UnixOwner: &Owner{UID: 0, GID: 0}}, "operation not permitted"})
	}
	before := openFDs(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Listen(tt.spec, tt.opts)
			if err == nil {
				f.Close()
				t.Fatalf("Listen(%#v, %+v) = nil error, want one containing %q", tt.spec, tt.opts, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Listen(%#v) error = %q, want it to contain %q", tt.spec, err, tt.wantErr)
			}
			if want := "listen " + tt.spec.String(); !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Listen(%#v) error = %q, want it to start with %q", tt.spec, err, want)
			}
		})
	}
	checkFDs(t, "Listen errors", before)
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("Listen errors left files behind: %v %v", entries, err)
	}
}

// TestListenFdKeepsMode checks the property that makes Listen's files safe to hand
// to children: Fd on them does not switch the socket to blocking mode.
func TestListenFdKeepsMode(t *testing.T) {
	t.Parallel()
	f := mustListen(t, "tcp://127.0.0.1:0", ListenOptions{})
	_ = f.Fd()
	mustNonblocking(t, "Listen result after Fd", f)
	if _, err := Addr(f); err != nil {
		t.Fatal(err)
	}
	mustNonblocking(t, "Listen result after Addr", f)
}

func TestDup(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := Dup(ln.(*net.TCPListener), "dup")
	if err != nil {
		t.Fatalf("Dup: %v", err)
	}
	defer d.Close()
	_ = d.Fd()
	mustNonblocking(t, "listener after Fd of its Dup", ln.(*net.TCPListener))
	fd, _ := connFD(d)
	lnFD, _ := connFD(ln.(*net.TCPListener))
	if fd == lnFD || !sameFile(t, fd, lnFD) {
		t.Errorf("Dup returned fd %d for listener fd %d, want a new descriptor of the same socket", fd, lnFD)
	}
	if fl, _, _ := fdFlags(fd); fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("Dup result is not close-on-exec")
	}
	if d.Name() != "dup" {
		t.Errorf("Dup name = %q, want %q", d.Name(), "dup")
	}
	ln.Close()
	if _, err := Dup(ln.(*net.TCPListener), "closed"); err == nil {
		t.Errorf("Dup(closed listener) = nil error, want one")
	}
}

func TestSockets(t *testing.T) {
	tcp := mustListen(t, "web=tcp://127.0.0.1:0", ListenOptions{})
	udp := mustListen(t, "dns=udp://127.0.0.1:0", ListenOptions{})
	socks, err := Sockets([]*os.File{tcp, udp})
	if err != nil {
		t.Fatalf("Sockets: %v", err)
	}
	defer closeSockets(socks)
	if len(socks) != 2 || socks[0].Listener == nil || socks[0].PacketConn != nil || socks[1].PacketConn == nil || socks[1].Listener != nil {
		t.Fatalf("Sockets = %+v, want a listener then a packet conn", socks)
	}
	if socks[0].Name != tcp.Name() || socks[1].Name != udp.Name() {
		t.Errorf("Sockets names = %q, %q; want %q, %q", socks[0].Name, socks[1].Name, tcp.Name(), udp.Name())
	}
	mustNonblocking(t, "tcp file after Sockets", tcp)
	mustNonblocking(t, "udp file after Sockets", udp)
	if err := (Socket{}).Close(); err != nil {
		t.Errorf("Socket{}.Close() = %v, want nil", err)
	}

	before := openFDs(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	a, b := socketpair(t, unix.SOCK_STREAM)
	for _, tt := range []struct {
		name    string
		files   []*os.File
		wantErr string
	}{
		{"pipe", []*os.File{tcp, r}, "not a socket"},
		{"connected stream socket", []*os.File{tcp, udp, a}, "stream socket is not listening"},
	} {
		socks, err := Sockets(tt.files)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || socks != nil {
			t.Errorf("Sockets(%s) = %v, %v; want an error containing %q", tt.name, socks, err, tt.wantErr)
		}
	}
	r.Close()
	w.Close()
	a.Close()
	b.Close()
	checkFDs(t, "Sockets errors", before)
}

func TestListenTCPNoDelay(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		opts ListenOptions
		want int
	}{
		{"default", ListenOptions{}, 1},
		{"nagle", ListenOptions{TCPDelay: true}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := mustListen(t, "tcp://127.0.0.1:0", tt.opts)
			a, err := Addr(f)
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", a.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A raw accept: net's Accept sets TCP_NODELAY on every connection
			// itself, and would hide what the connection inherited.
			fd := int(f.Fd())
			if err := unix.SetNonblock(fd, false); err != nil {
				t.Fatal(err)
			}
			nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(nfd)
			got, err := unix.GetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
			if err != nil {
				t.Fatal(err)
			}
			if (got != 0) != (tt.want != 0) {
				t.Errorf("accepted connection TCP_NODELAY = %d, want %d", got, tt.want)
			}
		})
	}
}
