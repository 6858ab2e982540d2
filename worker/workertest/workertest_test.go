package workertest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/worker"
	"github.com/clusterd/clusterd/worker/workertest"
)

// helperEnv makes the re-executed test binary run a worker instead of the
// tests.
const helperEnv = "CLUSTERD_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "http":
		os.Exit(httpWorker())
	case "exit":
		os.Exit(3)
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", os.Getenv(helperEnv))
	os.Exit(2)
}

// httpWorker is a worker as users write them with package worker.
func httpWorker() int {
	worker.DrainOnSignal(syscall.SIGTERM)
	lns, err := worker.Listeners()
	if err != nil || len(lns) != 1 {
		fmt.Fprintf(os.Stderr, "listeners: %v, %v\n", lns, err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := worker.ID()
		fmt.Fprintf(w, "worker %d gen %d", id, worker.Generation())
	})}
	if err := worker.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := worker.ServeHTTP(context.Background(), srv, lns...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func startHTTPWorker(t *testing.T) *workertest.Worker {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return workertest.Start(t, workertest.Options{
		Command:    []string{exe},
		Env:        []string{helperEnv + "=http"},
		WorkerID:   2,
		Generation: 5,
		Stderr:     os.Stderr,
	})
}

func TestReadyServeDrain(t *testing.T) {
	w := startHTTPWorker(t)
	hello, err := w.WaitReady(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if hello.PID != w.PID() || hello.WorkerID != 2 || hello.Generation != 5 {
		t.Errorf("hello = %+v, want pid %d, worker 2, generation 5", hello, w.PID())
	}
	resp, err := http.Get("http://" + w.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "worker 2 gen 5" {
		t.Errorf("GET = %q, want %q", body, "worker 2 gen 5")
	}
	if err := w.Drain(t.Context(), time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(t.Context()); err != nil {
		t.Errorf("worker after drain: %v, want exit 0", err)
	}
}

func TestStopSignal(t *testing.T) {
	w := startHTTPWorker(t)
	if _, err := w.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := w.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(t.Context()); err != nil {
		t.Errorf("worker after SIGTERM: %v, want exit 0", err)
	}
}

func TestExitBeforeReady(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	w := workertest.Start(t, workertest.Options{Command: []string{exe}, Env: []string{helperEnv + "=exit"}})
	if _, err := w.WaitReady(t.Context()); err == nil {
		t.Error("WaitReady of a worker that exits at once = nil error")
	}
	var ee *exec.ExitError
	if err := w.Wait(t.Context()); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("Wait = %v, want exit code 3", err)
	}
}
