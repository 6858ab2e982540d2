package master

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseModes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"shared", "shared"}, {"reuseport", "reuseport"},
		{"round-robin", "round-robin"}, {"least-conn", "least-conn"},
	} {
		b, err := ParseBalance(tc.in)
		if err != nil || b.String() != tc.want {
			t.Errorf("ParseBalance(%q) = %v, %v, want %s", tc.in, b, err, tc.want)
		}
	}
	for _, bad := range []string{"roundrobin", "", "Shared"} {
		if _, err := ParseBalance(bad); err == nil || !strings.Contains(err.Error(), "round-robin or least-conn") {
			t.Errorf("ParseBalance(%q) = %v, want an error naming the modes", bad, err)
		}
	}
	for _, s := range []string{"always", "on-failure", "never"} {
		p, err := ParseRestartPolicy(s)
		if err != nil || p.String() != s {
			t.Errorf("ParseRestartPolicy(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParseRestartPolicy("sometimes"); err == nil {
		t.Error("ParseRestartPolicy(sometimes) = nil error, want one")
	}
	for _, s := range []string{"prefix", "raw"} {
		o, err := ParseOutputMode(s)
		if err != nil || o.String() != s {
			t.Errorf("ParseOutputMode(%q) = %v, %v", s, o, err)
		}
	}
	if _, err := ParseOutputMode("json"); err == nil {
		t.Error("ParseOutputMode(json) = nil error, want one")
	}
}

func TestParseReadyMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ReadyMode
		err  string
	}{
		{in: "exec", want: ReadyMode{Kind: ReadyExec}},
		{in: "notify", want: ReadyMode{Kind: ReadyNotify}},
		{in: "ipc", want: ReadyMode{Kind: ReadyIPC}},
		{in: "delay=500ms", want: ReadyMode{Kind: ReadyDelay, Delay: 500 * time.Millisecond}},
		{in: "listening", want: ReadyMode{Kind: ReadyListening, Delay: DefaultListeningFallback}},
		{in: "listening=5s", want: ReadyMode{Kind: ReadyListening, Delay: 5 * time.Second}},
		{in: "listening=0", err: "duration must be positive"},
		{in: "listening=", err: "invalid duration"},
		{in: "delay=0s", err: "duration must be positive"},
		{in: "delay=soon", err: "invalid duration"},
		{in: "http", err: "want listening[=FALLBACK], exec, notify, ipc or delay=DURATION"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseReadyMode(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseReadyMode(%q) = %v, want error containing %q", tc.in, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseReadyMode(%q) = %v, %v, want %v", tc.in, got, err, tc.want)
			}
			if again, err := ParseReadyMode(got.String()); err != nil || again != got {
				t.Errorf("ParseReadyMode(%q) = %v, %v, want %v", got.String(), again, err, got)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	m, err := New(Options{Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	c := m.cfg
	if c.Workers != runtime.NumCPU() {
		t.Errorf("Workers = %d, want %d", c.Workers, runtime.NumCPU())
	}
	if !filepath.IsAbs(c.path) || filepath.Base(c.path) != "true" {
		t.Errorf("resolved command %q, want an absolute path to true", c.path)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"MinUptime", c.MinUptime, DefaultMinUptime},
		{"BackoffMin", c.BackoffMin, DefaultBackoffMin},
		{"BackoffMax", c.BackoffMax, DefaultBackoffMax},
		{"MaxRestarts", c.MaxRestarts, DefaultMaxRestarts},
		{"RestartWindow", c.RestartWindow, DefaultRestartWindow},
		{"ReadyTimeout", c.ReadyTimeout, DefaultReadyTimeout},
		{"KillTimeout", c.KillTimeout, DefaultKillTimeout},
		{"ReloadBatch", c.ReloadBatch, DefaultReloadBatch},
		{"StopSignal", c.StopSignal, syscall.SIGTERM},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if c.Stdout != os.Stdout || c.Stderr != os.Stderr || c.Logger == nil {
		t.Error("Stdout, Stderr or Logger not defaulted")
	}
	exe, _ := os.Executable()
	if len(c.ExecWorker) != 2 || c.ExecWorker[0] != exe || c.ExecWorker[1] != ExecWorkerArg {
		t.Errorf("ExecWorker = %q, want [%s %s]", c.ExecWorker, exe, ExecWorkerArg)
	}
}

func TestNewDoesNotWriteCallerOptions(t *testing.T) {
	opts := Options{Command: []string{"true"}, Env: []string{"A=1"}}
	if _, err := New(opts); err != nil {
		t.Fatal(err)
	}
	if opts.Workers != 0 || opts.KillTimeout != 0 || opts.Logger != nil {
		t.Errorf("New changed the caller's Options: %+v", opts)
	}
}

func TestNewErrors(t *testing.T) {
	fields := map[string]string{
		"no command": "Command", "missing command": "Command", "missing path": "Command",
		"not executable": "Command", "directory": "Command", "negative workers": "Workers",
		"bad env": "Env", "missing dir": "Dir", "backoff order": "BackoffMax",
		"negative kill timeout": "KillTimeout", "ready timeout below delay": "ReadyTimeout",
		"delay without duration": "Ready", "unknown user": "User", "unknown group": "Group",
		"reuseport with activation": "Balance", "negative batch": "ReloadBatch",
		"negative max requests": "MaxRequests", "heartbeat too fine": "HeartbeatInterval",
		"heartbeat timeout too short": "HeartbeatTimeout", "heartbeat timeout without heartbeats": "HeartbeatTimeout",
		"negative watchdog": "Watchdog", "negative max memory": "MaxMemory", "sample too fine": "SampleInterval",
		"negative retire": "RetireRequests", "jitter alone": "RetireJitter",
	}
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "activated")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name string
		opts Options
		want string
		is   error
	}{
		{"no command", Options{}, "no worker command", nil},
		{"missing command", Options{Command: []string{"clusterd-no-such-command"}}, "worker command clusterd-no-such-command", exec.ErrNotFound},
		{"missing path", Options{Command: []string{filepath.Join(dir, "nope")}}, "no such file or directory", os.ErrNotExist},
		{"not executable", Options{Command: []string{plain}}, "not executable", nil},
		{"directory", Options{Command: []string{dir}}, "is a directory", nil},
		{"negative workers", Options{Command: []string{"true"}, Workers: -1}, "workers -1: must not be negative", nil},
		{"bad env", Options{Command: []string{"true"}, Env: []string{"NOEQUALS"}}, `environment entry "NOEQUALS"`, nil},
		{"missing dir", Options{Command: []string{"true"}, Dir: filepath.Join(dir, "nope")}, "worker directory", os.ErrNotExist},
		{"backoff order", Options{Command: []string{"true"}, BackoffMin: time.Second, BackoffMax: time.Millisecond}, "backoff max 1ms is below backoff min 1s", nil},
		{"negative kill timeout", Options{Command: []string{"true"}, KillTimeout: -1}, "kill timeout -1ns: must not be negative", nil},
		{"ready timeout below delay", Options{Command: []string{"true"}, Ready: ReadyMode{Kind: ReadyDelay, Delay: time.Second}, ReadyTimeout: time.Second}, "must be longer than ready delay", nil},
		{"delay without duration", Options{Command: []string{"true"}, Ready: ReadyMode{Kind: ReadyDelay}}, "delay must be positive", nil},
		{"unknown user", Options{Command: []string{"true"}, User: "clusterd-no-such-user"}, "user clusterd-no-such-user", nil},
		{"unknown group", Options{Command: []string{"true"}, Group: "clusterd-no-such-group"}, "group clusterd-no-such-group", nil},
		{"reuseport with activation", Options{Command: []string{"true"}, Balance: BalanceReusePort, Activated: []*os.File{f}}, "cannot be used with socket activation", nil},
		{"negative batch", Options{Command: []string{"true"}, ReloadBatch: -2}, "reload batch -2", nil},
		{"negative max requests", Options{Command: []string{"true"}, MaxRequests: -1}, "max requests -1", nil},
		{"heartbeat too fine", Options{Command: []string{"true"}, HeartbeatInterval: time.Microsecond}, "heartbeat interval 1µs", nil},
		{"heartbeat timeout too short", Options{Command: []string{"true"}, HeartbeatTimeout: time.Second}, "must be longer than the heartbeat interval 1s", nil},
		{"heartbeat timeout without heartbeats", Options{Command: []string{"true"}, HeartbeatInterval: -1, HeartbeatTimeout: time.Second}, "asked for no heartbeats", nil},
		{"negative watchdog", Options{Command: []string{"true"}, Watchdog: -time.Second}, "watchdog -1s", nil},
		{"negative max memory", Options{Command: []string{"true"}, MaxMemory: -1}, "max memory -1", nil},
		{"sample too fine", Options{Command: []string{"true"}, SampleInterval: time.Millisecond}, "sample interval 1ms: below 10ms", nil},
		{"negative retire", Options{Command: []string{"true"}, RetireRequests: -1}, "max requests -1", nil},
		{"jitter alone", Options{Command: []string{"true"}, RetireJitter: 10}, "needs max requests", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want error containing %q", err, tc.want)
			}
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Field != fields[tc.name] {
				t.Errorf("New = %v (%T), want an *OptionError for field %s", err, err, fields[tc.name])
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("New = %v, want errors.Is %v", err, tc.is)
			}
		})
	}
}

func TestResolveCommandRelativeToDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "bin", "srv")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := resolveCommand("./bin/srv", dir, nil)
	if err != nil || got != exe {
		t.Errorf("resolveCommand(./bin/srv, %s) = %q, %v, want %q", dir, got, err, exe)
	}
	got, err = resolveCommand("srv", "", []string{"PATH=" + filepath.Join(dir, "bin")})
	if err != nil || got != exe {
		t.Errorf("resolveCommand(srv) with Env PATH = %q, %v, want %q", got, err, exe)
	}
}

func TestLookupCredential(t *testing.T) {
	cred, err := lookupCredential("", "")
	if err != nil || cred != nil {
		t.Errorf("lookupCredential(\"\", \"\") = %v, %v, want nil, nil", cred, err)
	}
	cred, err = lookupCredential("0", "0")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 && cred != nil && (cred.Uid != 0 || cred.Gid != 0) {
		t.Errorf("lookupCredential(0, 0) = %+v, want uid 0 gid 0", cred)
	}
	cred, err = lookupCredential("4242", "")
	if err != nil {
		t.Fatalf("numeric uid without passwd entry: %v", err)
	}
	if cred == nil || cred.Uid != 4242 {
		t.Errorf("lookupCredential(4242) = %+v, want uid 4242", cred)
	}
}
