package ipc

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDeps keeps the room's walls: ipc may import sockshare, never the packages
// built on it.
func TestDeps(t *testing.T) {
	t.Parallel()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			t.Skip("go command not found")
		}
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	const module = "github.com/clusterd/clusterd/"
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, module)
		if !ok {
			continue
		}
		for _, banned := range []string{"master", "worker", "cmd"} {
			if rest == banned || strings.HasPrefix(rest, banned+"/") {
				t.Errorf("ipc depends on %s", dep)
			}
		}
	}
}
