package master

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

func TestFDStoreMax(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want int
	}{
		{map[string]string{}, -1}, // systemd < 254 does not say: offer them
		{map[string]string{"FDSTORE": "8"}, 8},
		{map[string]string{"FDSTORE": "0"}, 0},
		{map[string]string{"FDSTORE": "many"}, 0},
		{map[string]string{"FDSTORE": "-1"}, 0},
	} {
		lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
		if got := fdStoreMax(lookup); got != tc.want {
			t.Errorf("fdStoreMax(%v) = %d, want %d", tc.env, got, tc.want)
		}
	}
}

// TestStorable: only listeners that can be matched back go to the fd
// store (a name, or a fixed address), and never an activated one, which
// the service manager holds already.
func TestStorable(t *testing.T) {
	act, _ := activatedSocket(t, "tcp", "127.0.0.1:0", "held")
	fixed, fixedAddr := activatedSocket(t, "tcp", "127.0.0.1:0", "probe")
	fixed.Close() // only its port was wanted: free again for Listen
	cfg, err := normalize(Options{
		Command: []string{"/bin/true"}, Workers: 1,
		Listen: []sockshare.Spec{
			mustSpec(t, "web=tcp://127.0.0.1:0"),
			mustSpec(t, "tcp://127.0.0.1:0"),
			mustSpec(t, "tcp://"+fixedAddr.String()),
			mustSpec(t, "held=tcp://127.0.0.1:1"),
		},
		Activated: []*os.File{act},
	})
	if err != nil {
		t.Fatal(err)
	}
	ls := newListeners(cfg, hclog.NewNullLogger())
	t.Cleanup(func() { ls.closeAll() })
	if err := ls.bind(); err != nil {
		t.Fatal(err)
	}
	files, names := ls.storable()
	if !slices.Equal(names, []string{"web", ""}) || len(files) != 2 || files[0] != ls.shared[0] || files[1] != ls.shared[2] {
		t.Errorf("storable = %v %q, want the named listener (FDNAME=web) and the one on %s (no FDNAME)", files, names, fixedAddr)
	}
}

// storeDatagram is one notification the stand-in for the service manager
// received: its text and the inodes of the fds it carried.
type storeDatagram struct {
	msg    string
	inodes []uint64
}

// notifyStandIn listens where NOTIFY_SOCKET would point and returns the
// path and a function that reads the next datagram, failing the test at
// the deadline.
func notifyStandIn(t *testing.T) (string, func() storeDatagram) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return path, func() storeDatagram {
		t.Helper()
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*16))
		conn.SetReadDeadline(time.Now().Add(failDeadline(t)))
		n, noob, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatalf("read the notify socket: %v", err)
		}
		d := storeDatagram{msg: string(buf[:n])}
		cmsgs, err := unix.ParseSocketControlMessage(oob[:noob])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range cmsgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				var st unix.Stat_t
				if err := unix.Fstat(fd, &st); err != nil {
					t.Fatal(err)
				}
				d.inodes = append(d.inodes, st.Ino)
				unix.Close(fd)
			}
		}
		return d
	}
}

func fileInode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestHealedListenerStoredAgain: a stored listener that check heals goes
// back to the fd store — made to listen again in place (systemd may have
// dropped it on EPOLLHUP meanwhile) or replaced by a new socket (the store
// must not hand back the dead one) — by FDSTOREREMOVE=1 of its name and
// FDSTORE=1 of the live sockets of that name.
func TestHealedListenerStoredAgain(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	cfg, err := normalize(Options{
		Command: []string{"/bin/true"}, Workers: 1,
		Listen: []sockshare.Spec{
			mustSpec(t, "web=tcp://127.0.0.1:0"),
			mustSpec(t, fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))),
			mustSpec(t, "unix://"+sock),
			mustSpec(t, "tcp://127.0.0.1:0"), // not stored: cannot come back
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ls := newListeners(cfg, hclog.NewNullLogger())
	t.Cleanup(func() { ls.closeAll() })
	if err := ls.bind(); err != nil {
		t.Fatal(err)
	}
	path, next := notifyStandIn(t)
	sd := newSDNotifier(path, hclog.NewNullLogger())
	t.Cleanup(sd.close)
	if n, err := ls.store(sd, -1); n != 3 || err != nil {
		t.Fatalf("store = %d, %v; want 3 listeners stored", n, err)
	}
	for _, want := range []string{"FDSTORE=1\nFDNAME=web", "FDSTORE=1", "FDSTORE=1"} {
		if d := next(); d.msg != want || len(d.inodes) != 1 {
			t.Fatalf("stored %q with %d fds, want %q with 1", d.msg, len(d.inodes), want)
		}
	}

	// In place: the same socket, stored again under its name.
	web := ls.shared[0]
	if _, err := breakListener(socketOf{f: web}, false); err != nil {
		t.Fatal(err)
	}
	if replaced := ls.check(nil, nil); replaced {
		t.Fatal("check replaced the shut-down socket, want it healed in place")
	}
	if d := next(); d.msg != "FDSTOREREMOVE=1\nFDNAME=web" || len(d.inodes) != 0 {
		t.Errorf("after the heal in place: %q with %d fds, want the removal of web", d.msg, len(d.inodes))
	}
	if d := next(); d.msg != "FDSTORE=1\nFDNAME=web" || !slices.Equal(d.inodes, []uint64{fileInode(t, web)}) {
		t.Errorf("after the heal in place: %q with inodes %v, want web's socket %d", d.msg, d.inodes, fileInode(t, web))
	}

	// Replaced (a unix listener cannot listen again once shut down): the
	// unnamed sockets share systemd's name "stored", so both go back, the
	// one that never broke and the new one.
	old := ls.shared[2]
	oldIno := fileInode(t, old)
	if _, err := breakListener(socketOf{f: old}, false); err != nil {
		t.Fatal(err)
	}
	if replaced := ls.check(nil, nil); !replaced {
		t.Fatal("check did not replace the shut-down unix socket")
	}
	if ls.shared[2] == old {
		t.Fatal("the unix listener is still the old socket")
	}
	if d := next(); d.msg != "FDSTOREREMOVE=1\nFDNAME=stored" || len(d.inodes) != 0 {
		t.Errorf("after the replacement: %q with %d fds, want the removal of the unnamed ones (stored)", d.msg, len(d.inodes))
	}
	var got []uint64
	for range 2 {
		d := next()
		if d.msg != "FDSTORE=1" || len(d.inodes) != 1 {
			t.Errorf("after the replacement: %q with %d fds, want FDSTORE=1 with 1", d.msg, len(d.inodes))
		}
		got = append(got, d.inodes...)
	}
	if want := []uint64{fileInode(t, ls.shared[1]), fileInode(t, ls.shared[2])}; !slices.Equal(got, want) || slices.Contains(got, oldIno) {
		t.Errorf("stored again: inodes %v, want the intact socket and the new one %v (not the dead %d)", got, want, oldIno)
	}
}

// socketOf lets breakListener reach the socket of f itself (not a
// duplicate made by net.FileListener, whose f.Fd() would switch the shared
// socket to blocking mode).
type socketOf struct {
	net.Listener // never called
	f            *os.File
}

func (s socketOf) SyscallConn() (syscall.RawConn, error) { return s.f.SyscallConn() }
