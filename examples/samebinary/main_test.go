package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the re-executed test binary run samebinary's main.
const helperEnv = "CLUSTERD_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "samebinary" {
		main() // the master, its exec-worker step and its workers
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSameBinary runs the program as its README shows, with two workers:
// every answer is "pid=P worker=W total=T" with the cluster's running total,
// and SIGTERM drains the workers, prints each one's count and "total=T"
// last, and exits 0.
func TestSameBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-addr", "127.0.0.1:0", "-workers", "2")
	cmd.Env = append(os.Environ(), helperEnv+"=samebinary")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The master leads its process group; its workers die with it
		// (their parent-death signal).
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if cmd.ProcessState == nil {
			cmd.Wait()
		}
	})
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		t.Fatalf("samebinary printed nothing: %v", lines.Err())
	}
	var addr string
	var n int
	if _, err := fmt.Sscanf(lines.Text(), "serving http://%s with %d workers", &addr, &n); err != nil || n != 2 {
		t.Fatalf("first line %q: want serving http://ADDR with 2 workers (%v)", lines.Text(), err)
	}

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	const requests = 20
	perPID := map[int]int{}
	for i := 1; i <= requests; i++ {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %d = %d %q, %v", i, resp.StatusCode, body, err)
		}
		var pid, slot, total int
		if _, err := fmt.Sscanf(string(body), "pid=%d worker=%d total=%d\n", &pid, &slot, &total); err != nil || slot < 0 || slot > 1 {
			t.Fatalf("answer %q: want pid=P worker=0|1 total=T (%v)", body, err)
		}
		// Requests one after the other: the total counts every one so far.
		if total != i {
			t.Errorf("answer %d says total=%d, want %d", i, total, i)
		}
		perPID[pid]++
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var rest []string
	for lines.Scan() {
		rest = append(rest, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("samebinary after SIGTERM: %v, want exit 0", err)
	}
	if len(rest) == 0 || rest[len(rest)-1] != fmt.Sprintf("total=%d", requests) {
		t.Fatalf("samebinary's last lines %q, want total=%d last", rest, requests)
	}
	// The final report is the lines after the last periodic one.
	final := rest[:len(rest)-1]
	for i := len(final) - 1; i >= 0; i-- {
		if strings.HasPrefix(final[i], "total=") {
			final = final[i+1:]
			break
		}
	}
	got := map[int]int{}
	sum := 0
	for _, l := range final {
		var slot, pid, gen, count int
		if _, err := fmt.Sscanf(l, "worker=%d pid=%d generation=%d requests=%d", &slot, &pid, &gen, &count); err != nil {
			t.Fatalf("final line %q: want worker=W pid=P generation=G requests=R (%v)", l, err)
		}
		got[pid] = count
		sum += count
	}
	if sum != requests {
		t.Errorf("final per-worker counts %q add up to %d, want %d", final, sum, requests)
	}
	for pid, n := range perPID {
		if got[pid] != n {
			t.Errorf("final counts %v, want %v (by pid)", got, perPID)
			break
		}
	}
}
