package sockshare

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestListenUnixFileOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	uid, gid := os.Getuid(), os.Getgid()
	for _, tc := range []struct {
		name, query string
		mode        os.FileMode
	}{
		{"mode", "?mode=0660", 0o660},
		{"mode-and-ids", "?mode=0640&owner=" + strconv.Itoa(uid) + "&group=" + strconv.Itoa(gid), 0o640},
		{"spec-over-options", "?mode=0604", 0o604},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".sock")
			spec, err := ParseSpec("unix://" + path + tc.query)
			if err != nil {
				t.Fatal(err)
			}
			// ListenOptions' own mode gives way to the spec's.
			f, err := Listen(spec, ListenOptions{UnixMode: 0o600})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.mode || fi.Mode().Type() != os.ModeSocket {
				t.Errorf("Listen(%s): file mode %v, want socket %v", spec, fi.Mode(), tc.mode)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) != uid || int(st.Gid) != gid {
				t.Errorf("Listen(%s): owner %d:%d, want %d:%d", spec, st.Uid, st.Gid, uid, gid)
			}
		})
	}
}

func TestListenUnixUnknownAccount(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, q := range []string{"owner=clusterd-no-such-user", "group=clusterd-no-such-group"} {
		path := filepath.Join(dir, "x.sock")
		spec, err := ParseSpec("unix://" + path + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		f, err := Listen(spec, ListenOptions{})
		if err == nil {
			f.Close()
			t.Fatalf("Listen(%s) = nil error, want an unknown account", spec)
		}
		if !strings.Contains(err.Error(), "clusterd-no-such") {
			t.Errorf("Listen(%s) error %q does not name the account", spec, err)
		}
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("Listen(%s) failed but left a file behind (%v)", spec, err)
		}
	}
}

// TestListenUnixOwnerByName chowns the socket file to another account by
// name, which needs root (CI runs as root).
func TestListenUnixOwnerByName(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs tests as root; this one needs it")
		}
		t.Skip("changing a file's owner needs root")
	}
	path := filepath.Join(t.TempDir(), "named.sock")
	spec, err := ParseSpec("unix://" + path + "?mode=0660&owner=nobody&group=nogroup")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Listen(spec, ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if strconv.Itoa(int(st.Uid)) != u.Uid || strconv.Itoa(int(st.Gid)) != g.Gid || fi.Mode().Perm() != 0o660 {
		t.Errorf("Listen(%s): %d:%d %v, want %s:%s 0660", spec, st.Uid, st.Gid, fi.Mode().Perm(), u.Uid, g.Gid)
	}
}
