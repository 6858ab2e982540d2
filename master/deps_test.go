package master

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the rooms apart: master, and mastertest with it, meet
// workers only on the ipc wire, so neither may link package worker.
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	for _, root := range []string{"master", "master/mastertest"} {
		out, err := exec.Command(goTool, "list", "-deps", "github.com/clusterd/clusterd/"+root).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", root, err)
		}
		for _, pkg := range strings.Fields(string(out)) {
			if strings.HasPrefix(pkg, "github.com/clusterd/clusterd/worker") ||
				strings.HasPrefix(pkg, "github.com/clusterd/clusterd/cmd") ||
				strings.HasPrefix(pkg, "github.com/clusterd/clusterd/examples") {
				t.Errorf("%s depends on %s", root, pkg)
			}
		}
	}
}
