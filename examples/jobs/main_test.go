package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the re-executed test binary run jobs' main.
const helperEnv = "CLUSTERD_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "jobs" {
		main() // the master, its exec-worker step and its workers
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var lastLine = regexp.MustCompile(`^jobs=(\d+) completed=(\d+) failed=(\d+) duplicates=(\d+) rate=(\d+) jobs/s$`)

// jobsTimeout bounds one run of the program (a run with -chaos takes
// seconds), so that a run that never ends fails its test with the
// program's goroutines instead of using up the whole test binary's timeout.
const jobsTimeout = 3 * time.Minute

// runJobs runs the program with args and returns its exit code, its stdout
// lines and the numbers of its last line.
func runJobs(t *testing.T, args ...string) (code int, lines []string, nums []int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	limit := jobsTimeout
	if dl, ok := t.Deadline(); ok && time.Until(dl)/2 < limit {
		limit = time.Until(dl) / 2 // time left to report
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), helperEnv+"=jobs")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Past the limit: SIGQUIT, so that Go prints every goroutine of the
	// master on its stderr, then SIGKILL should it not exit. Its workers die
	// with it (parent-death signal).
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything left in its group
	}
	if ctx.Err() != nil {
		t.Fatalf("jobs %q still running after %v: killed (SIGQUIT)\nstdout:\n%s\nstderr:\n%s", args, limit, out.String(), errOut.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out.String()), "\n")
	if m := lastLine.FindStringSubmatch(lines[len(lines)-1]); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			nums = append(nums, n)
		}
	}
	if t.Failed() || code != 0 {
		t.Logf("stderr:\n%s", errOut.String())
	}
	return code, lines, nums
}

func TestJobs(t *testing.T) {
	code, lines, nums := runJobs(t, "-workers", "2", "-jobs", "3000")
	if code != 0 || nums == nil {
		t.Fatalf("exit %d, last line %q", code, lines[len(lines)-1])
	}
	if nums[0] != 3000 || nums[1] != 3000 || nums[2] != 0 || nums[3] != 0 {
		t.Errorf("last line %q: want 3000 jobs completed once, none failed or duplicated", lines[len(lines)-1])
	}
	perWorker := 0
	for _, l := range lines[:len(lines)-1] {
		if strings.HasPrefix(l, "worker=") {
			perWorker++
		}
	}
	if perWorker != 2 {
		t.Errorf("%d per-worker lines, want 2: %q", perWorker, lines)
	}
}

// TestJobsChaos kills a worker every 200ms while the jobs run: every job
// still completes exactly once as seen by the caller.
func TestJobsChaos(t *testing.T) {
	code, lines, nums := runJobs(t, "-workers", "4", "-jobs", "30000", "-chaos")
	if code != 0 || nums == nil {
		t.Fatalf("exit %d, last line %q", code, lines[len(lines)-1])
	}
	if nums[1] != 30000 || nums[2] != 0 {
		t.Errorf("last line %q: want every job completed, none failed", lines[len(lines)-1])
	}
	t.Logf("%s (%d worker incarnations answered)", lines[len(lines)-1], len(lines)-1)
}

func TestJobsBadArgs(t *testing.T) {
	for _, args := range [][]string{{"-workers", "0"}, {"-jobs", "0"}, {"extra"}, {"-nope"}} {
		if code, _, _ := runJobs(t, args...); code != 2 {
			t.Errorf("jobs %q exited %d, want 2", args, code)
		}
	}
}
