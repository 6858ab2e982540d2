package master

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// activatedSocket binds addr and returns it as an activated socket named
// name, as sockshare.Files would.
func activatedSocket(t *testing.T, network, addr, name string) (*os.File, net.Addr) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	a := ln.Addr()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	// A new *os.File of its own fd: two Files of one fd would close it twice.
	named := os.NewFile(uintptr(dupFD(t, f)), name)
	f.Close()
	return named, a
}

// inode identifies the socket behind an fd.
func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func mustSpec(t *testing.T, s string) sockshare.Spec {
	t.Helper()
	spec, err := sockshare.ParseSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestBindMatchesActivated: activated sockets replace the Listen entries
// of the same name, or else of the same address; an entry with no match
// is bound, and a socket with no entry is served after them, with a
// warning.
func TestBindMatchesActivated(t *testing.T) {
	web, _ := activatedSocket(t, "tcp", "127.0.0.1:0", "web")
	api, apiAddr := activatedSocket(t, "tcp", "127.0.0.1:0", "unknown")
	dir := t.TempDir()
	sock, _ := activatedSocket(t, "unix", dir+"/s.sock", "admin")
	other, otherAddr := activatedSocket(t, "tcp", "127.0.0.1:0", "other")
	spare, spareAddr := activatedSocket(t, "tcp", "127.0.0.1:0", "spare")
	ino := map[uint64]string{}
	for _, f := range []*os.File{web, api, sock, other, spare} {
		ino[inode(t, f)] = f.Name()
	}

	logs := &syncBuffer{}
	cfg, err := normalize(Options{
		Command: []string{"/bin/true"}, Workers: 2,
		Listen: []sockshare.Spec{
			mustSpec(t, "tcp://127.0.0.1:0"),             // no match (port 0): bound
			mustSpec(t, "tcp://"+apiAddr.String()),       // by address
			mustSpec(t, "web=tcp://127.0.0.1:1"),         // by name, whatever the address
			mustSpec(t, "unix://"+dir+"/s.sock"),         // by path
			mustSpec(t, "web=tcp://"+otherAddr.String()), // its name is taken: by address
		},
		Activated: []*os.File{spare, web, api, sock, other},
		Logger:    hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ls := newListeners(cfg, cfg.Logger)
	t.Cleanup(func() {
		if err := ls.closeAll(); err != nil {
			t.Error(err)
		}
	})
	if err := ls.bind(); err != nil {
		t.Fatal(err)
	}
	files, names, err := ls.forSlot(1)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ socket, name string }{
		{"", "tcp://127.0.0.1:0"}, {"unknown", "unknown"}, {"web", "web"}, {"admin", "admin"}, {"other", "web"}, {"spare", "spare"},
	}
	if len(files) != len(want) {
		t.Fatalf("%d listeners (%q), want %d", len(files), names, len(want))
	}
	for i, w := range want {
		if got := ino[inode(t, files[i])]; got != w.socket {
			t.Errorf("listener %d is activated socket %q, want %q (\"\": bound by the master)", i, got, w.socket)
		}
		if names[i] != w.name {
			t.Errorf("listener %d named %q, want %q", i, names[i], w.name)
		}
	}
	if got := ls.addrs[5].String(); got != spareAddr.String() {
		t.Errorf("spare socket listed at %s, want %s", got, spareAddr)
	}
	out := logs.String()
	if n := strings.Count(out, "activated socket matches no listen address"); n != 1 || !strings.Contains(out, "name=spare") {
		t.Errorf("want one warning for the unmatched socket spare, log:\n%s", out)
	}
}

// TestSameAddr pins the address comparison behind the activation match.
func TestSameAddr(t *testing.T) {
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	anyV6 := &net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}
	for _, tc := range []struct {
		spec string
		addr net.Addr
		want bool
	}{
		{"tcp://127.0.0.1:8080", tcp, true},
		{"tcp4://127.0.0.1:8080", tcp, true},
		{"tcp://127.0.0.1:8081", tcp, false},
		{"tcp://127.0.0.2:8080", tcp, false},
		{"tcp://:8080", anyV6, true},
		{"tcp://:8080", tcp, false},
		{"tcp://[::]:8080", anyV6, true},
		{"tcp://localhost:8080", tcp, false}, // names are not resolved
		{"udp://127.0.0.1:8080", tcp, false},
		{"udp://127.0.0.1:8080", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}, true},
		{"tcp://127.0.0.1:0", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, false},
		{"unix:///run/a.sock", &net.UnixAddr{Name: "/run/a.sock", Net: "unix"}, true},
		{"unix:///run/a.sock", &net.UnixAddr{Name: "/run/b.sock", Net: "unix"}, false},
		{"unix://@abs", &net.UnixAddr{Name: "@abs", Net: "unix"}, true},
	} {
		if got := sameAddr(mustSpec(t, tc.spec), tc.addr); got != tc.want {
			t.Errorf("sameAddr(%s, %v) = %v, want %v", tc.spec, tc.addr, got, tc.want)
		}
	}
}
