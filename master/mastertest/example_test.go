package mastertest_test

import (
	"io"
	"net/http"
	"os"
	"syscall"
	"testing"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/master/mastertest"
)

// testReload is what a test of a server program looks like: the program's
// own test binary runs as the workers (its TestMain calls
// [master.DispatchExecWorker] first, then starts the server when
// SERVER_UNDER_TEST is set), a reload replaces them, and SIGTERM stops
// the master gracefully.
func testReload(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := mastertest.Start(t, master.Options{
		Command: []string{exe},
		Env:     []string{"SERVER_UNDER_TEST=1"},
		Workers: 2,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
	})

	resp, err := http.Get("http://" + c.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// A reload through the API returns its result; SIGHUP (c.Signal) does
	// the same and is seen as an EventReload (c.WaitEvent).
	res, err := c.Master().Reload(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reload took %v", res.Finished.Sub(res.Started))

	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("master after SIGTERM: %v", err)
	}
}

// Example shows a test, testReload above, that runs a program's server
// under a master in the test process. It is compiled, not run: the server
// is the program's own.
func Example() {
	_ = testReload
}
