package sockshare

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps sockshare a leaf: it may import the standard library and
// golang.org/x/sys, and no package of clusterd (master, worker, ipc, cmd, ...).
func TestDeps(t *testing.T) {
	t.Parallel()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	for _, goos := range []string{"linux", "darwin"} {
		cmd := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
		cmd.Env = append(cmd.Environ(), "GOOS="+goos)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GOOS=%s go list -deps: %v", goos, err)
		}
		for _, pkg := range strings.Fields(string(out)) {
			switch {
			case pkg == "github.com/clusterd/clusterd/sockshare":
			case strings.HasPrefix(pkg, "golang.org/x/sys/"):
			case strings.HasPrefix(pkg, "github.com/clusterd/clusterd"):
				t.Errorf("GOOS=%s: sockshare depends on clusterd package %s", goos, pkg)
			default:
				t.Errorf("GOOS=%s: sockshare depends on %s; only the standard library and golang.org/x/sys are allowed", goos, pkg)
			}
		}
	}
}
