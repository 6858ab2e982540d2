package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/sockshare"
)

// parseRun parses run's flags from args and env the way the command does.
func parseRun(t *testing.T, args []string, env map[string]string) (master.Options, error) {
	t.Helper()
	f := &runFlags{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return master.Options{}, err
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var unset []string
	if err := applyEnv(fs, lookup, func(k string) error { unset = append(unset, k); return nil }); err != nil {
		return master.Options{}, err
	}
	for k := range env {
		if strings.HasPrefix(k, envPrefix) && !contains(unset, k) {
			t.Errorf("applyEnv left %s in the environment", k)
		}
	}
	return f.options(fs)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestRunFlagDefaults(t *testing.T) {
	got, err := parseRun(t, nil, nil)
	if err != nil {
		t.Fatalf("parse no flags: %v", err)
	}
	want := master.Options{
		MinUptime:     master.DefaultMinUptime,
		BackoffMin:    master.DefaultBackoffMin,
		BackoffMax:    master.DefaultBackoffMax,
		MaxRestarts:   master.DefaultMaxRestarts,
		RestartWindow: master.DefaultRestartWindow,
		Ready:         master.ReadyMode{Kind: master.ReadyListening, Delay: master.DefaultListeningFallback},
		ReadyTimeout:  master.DefaultReadyTimeout,
		KillTimeout:   master.DefaultKillTimeout,
		ReloadBatch:   master.DefaultReloadBatch,
		StopSignal:    unix.SIGTERM,

		HeartbeatInterval: master.DefaultHeartbeatInterval,
		SampleInterval:    master.DefaultSampleInterval,
		ScaleInterval:     master.DefaultScaleInterval,
		ScaleUpAfter:      master.DefaultScaleUpAfter,
		ScaleDownAfter:    master.DefaultScaleDownAfter,
		ScaleCooldown:     master.DefaultScaleCooldown,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("options from no flags = %+v, want %+v", got, want)
	}
}

func TestRunFlagsToOptions(t *testing.T) {
	args := []string{
		"-w", "3:8", "--scale-interval", "100ms", "--scale-up-after", "1s", "--scale-down-after", "5s",
		"--scale-cooldown", "2s", "--memory-budget", "1G",
		"--listen", "web=tcp://127.0.0.1:0", "--listen", "unix:///tmp/x.sock",
		"--balance", "reuseport", "--tcp-nodelay=false", "--restart", "on-failure",
		"--min-uptime", "2s", "--backoff-min", "10ms", "--backoff-max", "1s",
		"--max-restarts", "-1", "--restart-window", "30s",
		"--ready", "delay=250ms", "--ready-timeout", "5s", "--kill-timeout", "3s",
		"--reload-batch", "2", "--stop-signal", "int",
		"--env", "A=1", "--env", "B=x=y", "--gomaxprocs", "3", "--cwd", "/tmp",
		"--user", "nobody", "--group", "nogroup", "--output", "raw",
		"--pid-file", "/run/c.pid",
		"--heartbeat-interval", "200ms", "--heartbeat-timeout", "3s", "--watchdog", "2s",
		"--max-memory", "48M", "--sample-interval", "1s", "--max-requests", "1000", "--max-requests-jitter", "50",
	}
	got, err := parseRun(t, args, nil)
	if err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	web, _ := sockshare.ParseSpec("web=tcp://127.0.0.1:0")
	sock, _ := sockshare.ParseSpec("unix:///tmp/x.sock")
	want := master.Options{
		Workers:       3,
		MaxWorkers:    8,
		ScaleInterval: 100 * time.Millisecond, ScaleUpAfter: time.Second, ScaleDownAfter: 5 * time.Second,
		ScaleCooldown: 2 * time.Second, MemoryBudget: 1 << 30,
		Listen:           []sockshare.Spec{web, sock},
		Balance:          master.BalanceReusePort,
		ListenOptions:    sockshare.ListenOptions{TCPDelay: true},
		Restart:          master.RestartOnFailure,
		MinUptime:        2 * time.Second,
		BackoffMin:       10 * time.Millisecond,
		BackoffMax:       time.Second,
		MaxRestarts:      -1,
		RestartWindow:    30 * time.Second,
		Ready:            master.ReadyMode{Kind: master.ReadyDelay, Delay: 250 * time.Millisecond},
		ReadyTimeout:     5 * time.Second,
		KillTimeout:      3 * time.Second,
		ReloadBatch:      2,
		StopSignal:       unix.SIGINT,
		Env:              []string{"A=1", "B=x=y"},
		WorkerGOMAXPROCS: 3,
		Dir:              "/tmp",
		User:             "nobody",
		Group:            "nogroup",
		Output:           master.OutputRaw,
		PIDFile:          "/run/c.pid",

		HeartbeatInterval: 200 * time.Millisecond,
		HeartbeatTimeout:  3 * time.Second,
		Watchdog:          2 * time.Second,
		MaxMemory:         48 << 20,
		SampleInterval:    time.Second,
		RetireRequests:    1000,
		RetireJitter:      50,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("options from %q =\n%+v, want\n%+v", args, got, want)
	}
}

func TestRunFlagsFromEnvironment(t *testing.T) {
	env := map[string]string{
		"CLUSTERD_WORKERS":      "5",
		"CLUSTERD_LISTEN":       "tcp://127.0.0.1:1, tcp://127.0.0.1:2",
		"CLUSTERD_READY":        "ipc",
		"CLUSTERD_KILL_TIMEOUT": "7s",
		"CLUSTERD_LOG_JSON":     "true",
		"CLUSTERD_ENV":          "A=1,B=2",
		"CLUSTERD_BALANCE":      "reuseport", // overridden by the flag below
	}
	got, err := parseRun(t, []string{"--balance", "shared"}, env)
	if err != nil {
		t.Fatalf("parse with environment: %v", err)
	}
	if got.Workers != 5 || len(got.Listen) != 2 || got.Listen[1].Address != "127.0.0.1:2" ||
		got.Ready.Kind != master.ReadyIPC || got.KillTimeout != 7*time.Second ||
		!reflect.DeepEqual(got.Env, []string{"A=1", "B=2"}) {
		t.Errorf("options from environment = %+v", got)
	}
	if got.Balance != master.BalanceShared {
		t.Errorf("--balance shared with CLUSTERD_BALANCE=reuseport gave %v, want the flag to win", got.Balance)
	}
}

func TestEnvNames(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	(&runFlags{}).register(fs)
	for _, name := range flagNames(fs) {
		env := envName(name)
		if strings.ContainsAny(env, "-abcdefghijklmnopqrstuvwxyz") || !strings.HasPrefix(env, "CLUSTERD_") {
			t.Errorf("envName(%q) = %q", name, env)
		}
	}
	if got := envName("min-uptime"); got != "CLUSTERD_MIN_UPTIME" {
		t.Errorf("envName(min-uptime) = %q, want CLUSTERD_MIN_UPTIME", got)
	}
}

func TestRunFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"workers zero", []string{"--workers", "0"}, nil, "--workers must be at least 1"},
		{"workers zero env", nil, map[string]string{"CLUSTERD_WORKERS": "0"}, "--workers must be at least 1"},
		{"workers not a number env", nil, map[string]string{"CLUSTERD_WORKERS": "many"}, "CLUSTERD_WORKERS"},
		{"bad listen", []string{"--listen", "tcp://nope"}, nil, "--listen tcp://nope"},
		{"empty listen", []string{"--listen", ""}, nil, `--listen "": empty address`},
		{"blank listen", []string{"--listen", " "}, nil, `--listen " ": empty address`},
		{"empty listen env", nil, map[string]string{"CLUSTERD_LISTEN": ",,,"}, `CLUSTERD_LISTEN=",,,"`},
		{"empty listen env item", nil, map[string]string{"CLUSTERD_LISTEN": ":8080,"}, "item 2 of the comma-separated list is empty"},
		{"empty listen env var", nil, map[string]string{"CLUSTERD_LISTEN": ""}, "item 1 of the comma-separated list is empty"},
		{"bad balance", []string{"--balance", "random"}, nil, "--balance"},
		{"bad restart", []string{"--restart", "sometimes"}, nil, "--restart"},
		{"bad ready", []string{"--ready", "soon"}, nil, "--ready"},
		{"zero kill timeout", []string{"--kill-timeout", "0s"}, nil, "--kill-timeout must be positive"},
		{"max restarts zero", []string{"--max-restarts", "0"}, nil, "--max-restarts"},
		{"reload batch zero", []string{"--reload-batch", "0"}, nil, "--reload-batch"},
		{"bad stop signal", []string{"--stop-signal", "SIGNOPE"}, nil, "--stop-signal"},
		{"bad output", []string{"--output", "tee"}, nil, "--output"},
		{"workers bad range env", nil, map[string]string{"CLUSTERD_WORKERS": "4:2"}, "MAX 2 is below MIN 4"},
		{"zero scale interval", []string{"--scale-interval", "0s"}, nil, "--scale-interval must be positive"},
		{"bad memory budget", []string{"--memory-budget", "x"}, nil, "--memory-budget"},
		{"bad max memory", []string{"--max-memory", "lots"}, nil, `--max-memory: size "lots"`},
		{"zero sample interval", []string{"--sample-interval", "0s"}, nil, "--sample-interval must be positive"},
		{"zero heartbeat interval", []string{"--heartbeat-interval", "0s"}, nil, "--heartbeat-interval must be positive"},
		{"negative heartbeat timeout", []string{"--heartbeat-timeout", "-1s"}, nil, "--heartbeat-timeout must not be negative"},
		{"zero gomaxprocs", []string{"--gomaxprocs", "0"}, nil, `--gomaxprocs "0": want auto, inherit or a number of at least 1`},
		{"bad gomaxprocs", []string{"--gomaxprocs", "all"}, nil, `--gomaxprocs "all"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseRun(t, tt.args, tt.env)
			if err == nil {
				t.Fatalf("parse %q env %v: no error, want one mentioning %q", tt.args, tt.env, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parse %q env %v = %v, want it to mention %q", tt.args, tt.env, err, tt.want)
			}
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Errorf("parse %q: error %v is not a usage error", tt.args, err)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want unix.Signal
	}{
		{"TERM", unix.SIGTERM}, {"SIGTERM", unix.SIGTERM}, {"int", unix.SIGINT},
		{"sigquit", unix.SIGQUIT}, {"9", unix.SIGKILL}, {"USR2", unix.SIGUSR2},
	}
	for _, tt := range tests {
		got, err := parseSignal(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSignal(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "NOPE", "0", "65", "-1"} {
		if got, err := parseSignal(bad); err == nil {
			t.Errorf("parseSignal(%q) = %v, want an error", bad, got)
		}
	}
}

// runCLI runs the command tree in process. Only for commands that fail or
// return before a master would start.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsageExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"run", "--no-such-flag", "--", "true"}, "unknown flag: --no-such-flag"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"missing command", []string{"run", "--listen", "127.0.0.1:0"}, "missing worker command"},
		{"workers zero", []string{"run", "-w", "0", "--", "true"}, "--workers must be at least 1"},
		{"workers bad range", []string{"run", "-w", "4:2", "--", "true"}, "MAX 2 is below MIN 4"},
		{"workers zero min", []string{"run", "--workers", "0:2", "--", "true"}, "MIN must be at least 1"},
		{"workers range not numbers", []string{"run", "--workers", "a:b", "--", "true"}, "want a number N or a range MIN:MAX"},
		// Checked by master.New, named by the CLI.
		{"workers negative", []string{"run", "-w", "-2", "--", "true"}, "--workers: workers -2: must not be negative"},
		{"negative kill timeout", []string{"run", "--kill-timeout", "-1s", "--", "true"}, "--kill-timeout: kill timeout -1s: must not be negative"},
		{"backoff inverted", []string{"run", "--backoff-min", "2s", "--backoff-max", "1s", "--", "true"}, "--backoff-max: backoff max 1s is below backoff min 2s"},
		{"bad env", []string{"run", "--env", "NOEQUALS", "--", "true"}, `--env: environment entry "NOEQUALS": want KEY=VALUE`},
		{"negative reload batch", []string{"run", "--reload-batch", "-1", "--", "true"}, "--reload-batch: reload batch -1: must not be negative"},
		{"missing cwd", []string{"run", "--cwd", "/nonexistent/clusterd", "--", "true"}, "--cwd: worker directory"},
		{"bad address", []string{"run", "--listen", "tcp://127.0.0.1:notaport", "--", "true"}, "--listen"},
		{"bad log level", []string{"run", "--log-level", "loud", "--", "true"}, "--log-level"},
		{"empty listen", []string{"run", "--listen", "", "--", "true"}, `--listen "": empty address`},
		{"version with args", []string{"version", "x"}, "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != exitUsage {
				t.Errorf("clusterd %q exit code = %d, want %d", tt.args, code, exitUsage)
			}
			if stdout != "" {
				t.Errorf("clusterd %q wrote to stdout: %q", tt.args, stdout)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "clusterd: ") || !strings.Contains(lines[0], tt.want) {
				t.Errorf("clusterd %q stderr = %q, want one line `clusterd: ...%s...`", tt.args, stderr, tt.want)
			}
		})
	}
}

func TestEmptyListenVariableIsUsageError(t *testing.T) {
	t.Setenv("CLUSTERD_LISTEN", ",,,")
	code, _, stderr := runCLI(t, "run", "--", "true")
	if code != exitUsage || !strings.Contains(stderr, `CLUSTERD_LISTEN=",,,"`) {
		t.Errorf("CLUSTERD_LISTEN=,,, clusterd run = %d, %q; want exit %d naming the variable", code, stderr, exitUsage)
	}
}

func TestErrorIsOneLine(t *testing.T) {
	err := fmt.Errorf("start: %w", errors.Join(errors.New("first"), errors.New("second")))
	if got, want := oneLine(err), "start: first; second"; got != want {
		t.Errorf("oneLine(%q) = %q, want %q", err, got, want)
	}
}

func TestHelp(t *testing.T) {
	code, stdout, _ := runCLI(t, "run", "--help")
	if code != 0 {
		t.Fatalf("clusterd run --help exit code = %d, want 0", code)
	}
	for _, want := range []string{
		"run [flags] -- COMMAND [ARGS...]", "Examples:", "--workers", "[$CLUSTERD_WORKERS]",
		"[$CLUSTERD_MIN_UPTIME]", "--ready", "delay=DUR", "HUP", "TTIN",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("clusterd run --help does not mention %q:\n%s", want, stdout)
		}
	}
	code, stdout, _ = runCLI(t, "--help")
	if code != 0 || !strings.Contains(stdout, "run") || strings.Contains(stdout, master.ExecWorkerArg) {
		t.Errorf("clusterd --help = %d:\n%s\nwant exit 0, the run command, and no hidden exec-worker", code, stdout)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "clusterd ") || !strings.Contains(stdout, " commit ") ||
		!strings.Contains(stdout, " protocol 1 go1.") || stderr != "" {
		t.Errorf("clusterd version = %d, %q, %q; want exit 0 and `clusterd VERSION commit C (DATE) protocol 1 goX linux/ARCH`", code, stdout, stderr)
	}
}

func TestCompletion(t *testing.T) {
	code, stdout, _ := runCLI(t, "completion", "bash")
	if code != 0 || !strings.Contains(stdout, "__start_clusterd") {
		t.Errorf("clusterd completion bash = %d, output without __start_clusterd", code)
	}
}

func TestParseScale(t *testing.T) {
	for in, want := range map[string]string{"4": "4 false", "+2": "2 true", "-1": "-1 true"} {
		req, err := parseScale(in)
		if got := fmt.Sprint(req.N, " ", req.Relative); err != nil || got != want {
			t.Errorf("parseScale(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "+0", "-0", "x", "", "1.5", "-"} {
		if req, err := parseScale(bad); !isUsage(err) {
			t.Errorf("parseScale(%q) = %+v, %v; want a usage error", bad, req, err)
		}
	}
}

func TestScaleArgs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"scale -2", "scale -- -2"},
		{"scale --name web -2", "scale --name web -- -2"},
		{"scale +2", "scale +2"},
		{"scale -- -2", "scale -- -2"},
		{"status -2", "status -2"},
	}
	for _, tc := range tests {
		if got := strings.Join(scaleArgs(strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("scaleArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
