package worker

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
)

// helperEnv names the helper a re-executed test binary runs instead of the
// tests.
const helperEnv = "CLUSTERD_TEST_HELPER"

// helpers are the worker programs the test binary plays when re-executed.
var helpers = map[string]func() int{
	"serve":        helperServe,
	"signal-drain": helperSignalDrain,
	"sequence":     helperSequence,
	"requests":     helperRequests,
	"draining":     helperDraining,
	"listen":       helperListen,
	"heartbeat":    helperHeartbeat,
}

var (
	usedMu      sync.Mutex
	usedHelpers = map[string]bool{}
)

func useHelper(name string) {
	usedMu.Lock()
	defer usedMu.Unlock()
	if _, ok := helpers[name]; !ok {
		panic("unknown test helper " + name)
	}
	usedHelpers[name] = true
}

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown test helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h())
	}
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" {
		for name := range helpers {
			if !usedHelpers[name] {
				fmt.Fprintf(os.Stderr, "test helper %q was never used\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}
