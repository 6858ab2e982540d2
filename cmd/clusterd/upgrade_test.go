package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// installBinary puts a copy of src at path the way a package manager
// does: written beside it, then renamed over it (a new inode; the running
// binary is never written to).
func installBinary(t *testing.T, src, path string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	tmp := path + ".new"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// installScript puts a shell script at path (renamed over it).
func installScript(t *testing.T, path, script string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// inode returns the inode of the file at path (following links).
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestUpgradeUnderLoad(t *testing.T) {
	for _, tt := range []struct {
		name       string
		flags      []string
		helper     string
		workerArgs []string
		command    []string // instead of a helper
	}{
		// Its IPC stream pauses at a frame boundary and resumes with
		// the new image.
		{"library-worker", []string{"--ready", "ipc"}, "", nil, nil},
		// A server that never speaks the protocol.
		{"unmodified-binary", []string{"--ready", "listening"}, "", []string{"-no-ipc"}, nil},
		// The protocol spoken from docs/PROTOCOL.md alone, pause included.
		{"python-worker", []string{"--ready", "ipc"}, "", nil,
			[]string{"python3", "../../examples/pyclient/worker.py", "ADDR"}},
		// The master accepts: it stops accepting and lets the workers
		// take what it handed out before the exec, and the new image
		// accepts on the same sockets with the same listener ids.
		{"round-robin", []string{"--ready", "ipc", "--balance", "round-robin"}, "balanced", nil, nil},
		{"least-conn", []string{"--ready", "ipc", "--balance", "least-conn"}, "balanced", nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.command != nil {
				if _, err := exec.LookPath(tt.command[0]); err != nil {
					if os.Getenv("CI") != "" {
						t.Fatalf("%s not installed: .ci/run installs it", tt.command[0])
					}
					t.Skipf("%s not installed (CI installs it)", tt.command[0])
				}
			}
			listen := listenAny
			command := slices.Clone(tt.command)
			if i := slices.Index(command, "ADDR"); i >= 0 {
				// The worker asks the master for the address it listens
				// on, by its port.
				addr := "tcp://" + freeAddr(t)
				listen, command[i] = "--listen="+addr, addr
			}
			testUpgradeUnderLoad(t, clusterConfig{
				flags: append([]string{listen, "-w", "2"}, tt.flags...), helper: tt.helper,
				workerArgs: tt.workerArgs, command: command,
			})
		})
	}
}

func testUpgradeUnderLoad(t *testing.T, cfg clusterConfig) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "clusterd")
	installBinary(t, self, bin)
	cfg.exe = bin
	c := startCluster(t, cfg)
	addr, workers := c.waitStarted()
	slices.Sort(workers)
	l := startLoad(t, "http://"+addr+"/", 16, false)
	exe := "/proc/" + strconv.Itoa(c.pid) + "/exe"
	check := func(what string) {
		t.Helper()
		st := c.status()
		got := workerPIDs(st)
		slices.Sort(got)
		if st.Master.PID != c.pid || !slices.Equal(got, workers) {
			t.Fatalf("%s: master pid %d workers %v, want pid %d workers %v", what, st.Master.PID, got, c.pid, workers)
		}
		for _, pid := range got {
			if ppid := parentOf(t, pid); ppid != c.pid {
				t.Fatalf("%s: worker %d has parent %d, want the master %d", what, pid, ppid, c.pid)
			}
		}
	}
	// The control socket crosses the exec too: the same socket file, not
	// one bound again (a client connecting meanwhile waits in its queue).
	ctlPath := c.controlPath()
	ctlInode := inode(t, ctlPath)
	for i := range 5 {
		installBinary(t, self, bin)
		served := l.ok.Load()
		cursor := c.logLen()
		code, out, errs := c.ctl("upgrade", "--wait")
		if code != 0 || !strings.Contains(out, "upgrade completed: master pid "+strconv.Itoa(c.pid)) || !strings.Contains(out, "2 of 2 workers kept") {
			t.Fatalf("upgrade %d: exit %d, stdout %q, stderr %q", i+1, code, out, errs)
		}
		c.waitLog(cursor, "upgraded in place", "upgrades", i+1)
		// The master runs the file now at the path, not the one it started.
		if got, want := inode(t, exe), inode(t, bin); got != want {
			t.Fatalf("upgrade %d: /proc/%d/exe is inode %d, the installed binary %d", i+1, c.pid, got, want)
		}
		check("upgrade " + strconv.Itoa(i+1))
		if got := inode(t, ctlPath); got != ctlInode {
			t.Fatalf("upgrade %d: control socket %s is inode %d, was %d: bound again", i+1, ctlPath, got, ctlInode)
		}
		l.waitServed(t, served+1)
	}

	// SIGUSR2 does the same, reporting in the log.
	cursor := c.logLen()
	c.signal(syscall.SIGUSR2)
	c.waitLog(cursor, "upgraded in place", "upgrades", 6)
	check("SIGUSR2")
	if st := c.status(); st.Master.Upgrades != 6 || st.Master.Exe != bin {
		t.Errorf("status after 6 upgrades: upgrades %d, exe %q; want 6, %q", st.Master.Upgrades, st.Master.Exe, bin)
	}

	// A binary that fails its check, one that answers its check with
	// anything but the line for the state it got, and a missing one:
	// nothing changes.
	for _, tc := range []struct{ name, script, want string }{
		{"failing", `echo "not today" >&2; exit 1`, "exited with code 1 (not today)"},
		{"impostor", `echo ok`, `printed "ok", not the check line`},
		{"missing", "", "no such file or directory"},
	} {
		if tc.script == "" {
			if err := os.Remove(bin); err != nil {
				t.Fatal(err)
			}
		} else {
			installScript(t, bin, tc.script)
		}
		code, _, errs := c.ctl("upgrade", "--wait")
		if code != exitUpgradeFailed || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "the old binary keeps serving") {
			t.Fatalf("%s binary: upgrade exit %d, stderr %q; want %d and %q", tc.name, code, errs, exitUpgradeFailed, tc.want)
		}
		check(tc.name + " binary")
	}
	l.check(t)
	// The old image's last lines are written before its exec, not dropped.
	if n := c.countLogs(0, "upgrade: exec"); n != 6 {
		t.Errorf("%d \"upgrade: exec\" lines in the log, want one per upgrade, 6", n)
	}
	if n := c.countLogs(0, "worker exited"); n != 0 {
		t.Errorf("%d workers exited across the upgrades, want none", n)
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
}

// TestUpgradeRefusedWhileReloading: an upgrade needs every worker ready and
// nothing else under way; it says so and changes nothing. Without --wait
// the command returns once the master took the request.
func TestUpgradeRefusedWhileReloading(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "clusterd")
	installBinary(t, self, bin)
	c := startCluster(t, clusterConfig{
		exe:        bin,
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--ready-timeout", "1h"},
		workerArgs: []string{"-never-ready-gens", "2-99"},
	})
	_, pids := c.waitStarted()
	from := c.logLen()
	c.signal(syscall.SIGHUP)
	c.waitLog(from, "worker started", "generation", 2) // never ready: the reload runs
	code, _, errs := c.ctl("upgrade", "--wait")
	if code != exitUpgradeFailed || !strings.Contains(errs, "cluster not steady: a reload is running") {
		t.Fatalf("upgrade during a reload: exit %d, %q; want %d and why", code, errs, exitUpgradeFailed)
	}
	code, out, errs := c.ctl("upgrade")
	if code != 0 || !strings.Contains(out, "upgrade started") {
		t.Fatalf("upgrade without --wait: exit %d, %q %q", code, out, errs)
	}
	c.waitLog(from, "upgrade failed: the old binary keeps running", "error", "master: cluster not steady: a reload is running")
	if st := c.status(); st.Master.PID != c.pid || !slices.Contains(workerPIDs(st), pids[0]) {
		t.Fatalf("after refused upgrades: master %d workers %v, want %d with %d", st.Master.PID, workerPIDs(st), c.pid, pids[0])
	}
	if n := c.countLogs(0, "upgrade: exec"); n != 0 {
		t.Errorf("%d upgrades went as far as the exec", n)
	}
}
