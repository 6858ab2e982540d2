package master

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// notifySockets waits for each worker's "notify_socket: " line and returns
// the values by slot.
func notifySockets(t *testing.T, m *runningMaster, n int) []string {
	t.Helper()
	paths := make([]string, n)
	for i := range n {
		m.waitFor(fmt.Sprintf("worker %d's notify_socket line", i), func() bool {
			for _, l := range m.stdout {
				if !strings.HasPrefix(l, fmt.Sprintf("[w%d pid ", i)) {
					continue
				}
				if _, q, ok := strings.Cut(l, "] notify_socket: "); ok {
					paths[i], _ = strconv.Unquote(q)
					return true
				}
			}
			return false
		})
	}
	return paths
}

func TestRealNoNotifySocketUnlessNotify(t *testing.T) {
	t.Parallel()
	for _, ready := range []string{"ipc", "exec", "delay=50ms"} {
		t.Run(ready, func(t *testing.T) {
			t.Parallel()
			m := startMaster(t, masterConfig{
				Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: ready, WorkerMode: []string{"notify-env"},
			})
			m.next("all workers ready")
			if got := notifySockets(t, m, 1); got[0] != "" {
				t.Errorf("--ready %s: worker got NOTIFY_SOCKET=%q, want none", ready, got[0])
			}
		})
	}
}

func TestRealNotifySocketPerWorker(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "notify", WorkerMode: []string{"notify", "notify-env"},
	}, "XDG_RUNTIME_DIR="+base, "RUNTIME_DIRECTORY=")
	m.next("all workers ready")
	paths := notifySockets(t, m, 2)
	if paths[0] == paths[1] {
		t.Fatalf("workers share NOTIFY_SOCKET %q, want one each", paths[0])
	}
	dir := filepath.Dir(paths[0])
	if filepath.Dir(paths[1]) != dir || filepath.Dir(dir) != filepath.Join(base, "clusterd") {
		t.Fatalf("notify sockets %q, want them in one directory under %s/clusterd", paths, base)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime directory mode %v, want 0700", fi.Mode().Perm())
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want a socket with mode 0600", p, fi.Mode())
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(); code != 0 {
		t.Fatalf("master exit code %d, want 0", code)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("runtime directory %s after stop: %v, want it removed", dir, err)
	}
}

func TestRealNotifyForgedPIDReadiesNoOtherSlot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("claiming another pid in SCM_CREDENTIALS needs root")
	}
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "notify", ReadyTimeout: -1,
		WorkerMode: []string{"notify", "notify-forge"},
	})
	m.stdoutLine("forged: ")
	// Datagrams of one socket are read in order: the forged one came first.
	m.next("worker ready", "worker", 0)
	if n := m.count("worker ready", "worker", 1); n != 0 {
		t.Errorf("worker 1 ready %d times from datagrams on worker 0's socket, want never", n)
	}
}

func TestRealNotifyFloodLoggedOnce(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "notify", WorkerMode: []string{"notify", "notify-flood"},
	})
	ready := m.next("worker ready", "worker", 0)
	const msg = "notify socket flooded: reading it more slowly"
	if n := m.count(msg); n != 1 {
		t.Fatalf("%d %q lines for one burst, want 1", n, msg)
	}
	l := m.first(msg)
	if field(l, "worker") != 0 || field(l, "pid") != field(ready, "pid") || l["@level"] != "warn" {
		t.Errorf("flood line %v, want a warning naming worker 0 and pid %d", l, field(ready, "pid"))
	}
}

func TestRealNotifyAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dropping privileges needs root")
	}
	t.Parallel()
	exe := reachableTestBinary(t)
	base := filepath.Dir(exe) // 0755 up to the root, like systemd's /run/NAME
	private := t.TempDir()    // 0700: the master's own XDG_RUNTIME_DIR, skipped
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, User: "nobody", Group: "nogroup",
		WorkerMode: []string{"notify", "notify-env"}, ExecPath: exe, Ready: "notify",
	}, "RUNTIME_DIRECTORY="+base, "XDG_RUNTIME_DIR="+private)
	m.next("all workers ready")
	path := notifySockets(t, m, 1)[0]
	if filepath.Dir(filepath.Dir(path)) != base {
		t.Errorf("notify socket %s, want it under RUNTIME_DIRECTORY %s", path, base)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 65534 || st.Mode&0o777 != 0o600 {
		t.Errorf("%s: uid %d mode %o, want the workers' uid 65534 and 0600", path, st.Uid, st.Mode&0o777)
	}
	if err := syscall.Stat(filepath.Dir(path), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 || st.Gid != 65534 || st.Mode&0o777 != 0o710 {
		t.Errorf("runtime directory: uid %d gid %d mode %o, want root, the workers' gid 65534 and 0710",
			st.Uid, st.Gid, st.Mode&0o777)
	}
}

// reachableTestBinary copies the test binary into a directory that every
// user can reach (the worker execs it after dropping privileges).
func reachableTestBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, "master.test")
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return cp
}

func TestRuntimeBase(t *testing.T) {
	t.Parallel()
	env := func(kv ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1], true
				}
			}
			return "", false
		}
	}
	for _, tt := range []struct {
		name       string
		lookup     func(string) (string, bool)
		euid       int
		other      bool
		want       string
		wantCreate bool
	}{
		{"systemd", env("RUNTIME_DIRECTORY", "/run/app:/run/app2", "XDG_RUNTIME_DIR", "/run/user/0"), 0, false, "/run/app", false},
		{"xdg", env("XDG_RUNTIME_DIR", "/run/user/1000"), 1000, false, "/run/user/1000/clusterd", true},
		{"xdg other user", env("XDG_RUNTIME_DIR", "/run/user/0"), 0, true, "/run/clusterd", true},
		{"root", env(), 0, false, "/run/clusterd", true},
		{"user", env(), 1000, false, os.TempDir(), false},
	} {
		dir, create := runtimeBase(tt.lookup, tt.euid, tt.other)
		if dir != tt.want || create != tt.wantCreate {
			t.Errorf("%s: runtimeBase = %q, %v, want %q, %v", tt.name, dir, create, tt.want, tt.wantCreate)
		}
	}
}
