package mastertest_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the rooms apart: like master, mastertest meets workers
// only on the ipc wire, so it must not link package worker.
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/clusterd/clusterd/master/mastertest").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "github.com/clusterd/clusterd/worker") ||
			strings.HasPrefix(pkg, "github.com/clusterd/clusterd/cmd") ||
			strings.HasPrefix(pkg, "github.com/clusterd/clusterd/examples") {
			t.Errorf("mastertest depends on %s", pkg)
		}
	}
}
