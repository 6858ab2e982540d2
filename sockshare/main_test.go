package sockshare

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
)

// envTestHelper names the variable that turns the test binary into one of the
// helper processes registered with registerHelper.
const envTestHelper = "CLUSTERD_TEST_HELPER"

// helpers maps a helper name to its body. A helper reports over stdout and returns
// an error that makes the process exit 1.
var helpers = map[string]func() error{}

// helperUsed records which helpers a test started, so a full run can check that
// none is dead code.
var helperUsed sync.Map

// registerHelper registers a helper process body; it is called from init functions
// of the test files and rejects duplicate names.
func registerHelper(name string, body func() error) {
	if helpers[name] != nil {
		panic("sockshare test: duplicate helper " + name)
	}
	helpers[name] = body
}

func TestMain(m *testing.M) {
	if name := os.Getenv(envTestHelper); name != "" {
		body := helpers[name]
		if body == nil {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		if err := body(); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", name, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" &&
		flag.Lookup("test.list").Value.String() == "" && !testing.Short() {
		for name := range helpers {
			if _, ok := helperUsed.Load(name); !ok {
				fmt.Fprintf(os.Stderr, "helper %q registered but never used\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}
