// Package servers_test runs the recipes of docs/SERVERS.md: real servers
// (gunicorn, uvicorn, lighttpd, puma, Node.js, Express, Caddy), unmodified,
// under package master with the options of each recipe's `clusterd run`
// line. Each recipe is checked the same way: the server answers from as many
// processes as there are workers, a worker killed with SIGKILL is replaced
// by one that serves, a rolling reload under a client that never retries
// refuses no connection, and after SIGTERM no process of the cluster is
// left.
//
// A recipe whose server is not installed is skipped, unless CI=true, where
// .ci/run has installed it and its absence fails the test. Caddy is not
// packaged in a version that can serve on an inherited fd; its recipe runs
// only when CLUSTERD_TEST_CADDY names a caddy binary (2.9 or later).
package servers_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/master/mastertest"
	"github.com/clusterd/clusterd/sockshare"
)

func TestMain(m *testing.M) {
	// The master starts workers through `<this binary> exec-worker -- ...`.
	mastertest.DispatchExecWorker()
	os.Exit(m.Run())
}

// workers is the number of slots every recipe runs with.
const workers = 2

// recipe is one server's `clusterd run` line, as docs/SERVERS.md gives it.
type recipe struct {
	name string
	// dir is the workers' directory, relative to examples/servers.
	dir string
	// flags are the run flags besides --listen and -w (see options).
	flags []string
	// command returns the worker command for a cluster on port, with the
	// programs found by find.
	command func(port int, progs map[string]string) []string
	// env returns extra environment for the workers (the port, for
	// servers whose configuration must name the address).
	env func(t testing.TB, port int) []string
	// find locates the programs the recipe needs; it skips or fails the
	// test (see missing) when one is not installed.
	find func(t testing.TB) map[string]string
	// byHeader: answers carry the slot and generation in workerHeader
	// instead of a pid in the body.
	byHeader bool
	// backlog is the listen backlog the server leaves on the shared
	// socket once it runs (it may call listen(2) again with its own); 0
	// means clusterd's, the kernel's maximum.
	backlog int
	// waits is how the master sees the worker ready under --ready
	// listening: "epoll", "accept", "poll" or "select" (the how of its log
	// line), or "fallback" (not seen waiting: ready after the fallback
	// delay); "" for other modes.
	waits string
}

// pidRE finds the pid in the answer of the example apps, which all say
// "hello from SERVER pid N, worker ID".
var pidRE = regexp.MustCompile(`^hello from \S+ pid (\d+), worker \d+\n$`)

// workerHeader carries "SLOT.GENERATION" in answers of servers that cannot
// print their pid (lighttpd, Caddy).
const workerHeader = "X-Clusterd-Worker"

// markEnv is set in every worker's environment, with a value unique to the
// test, so that the cluster's processes (the workers' own children too)
// can be found in /proc.
const markEnv = "CLUSTERD_TEST_MARK"

// ciMode reports whether the test runs under CI, where every server that
// .ci/run installs must be there.
func ciMode() bool { return os.Getenv("CI") == "true" }

// missing skips the test, or fails it under CI, because a program it needs
// is not installed.
func missing(t testing.TB, what, install string) {
	t.Helper()
	if ciMode() {
		t.Fatalf("%s is not installed: .ci/run installs it under CI=true (%s)", what, install)
	}
	t.Skipf("%s is not installed: %s to run this recipe", what, install)
}

// lookPath finds prog on PATH (or in /usr/sbin, where Debian puts lighttpd)
// or skips the test through missing.
func lookPath(t testing.TB, prog, install string) string {
	t.Helper()
	if p, err := exec.LookPath(prog); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p, err := exec.LookPath(filepath.Join(dir, prog)); err == nil {
			return p
		}
	}
	missing(t, prog, install)
	return ""
}

// pythonWith returns a python3 that can import module: Debian's, or the
// first on PATH. Debian's python3-* packages install into /usr/bin/python3
// only, which need not be the python3 on PATH.
func pythonWith(t testing.TB, module, install string) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, py := range candidates {
		if err := exec.Command(py, "-c", "import "+module).Run(); err == nil {
			return py
		}
	}
	missing(t, "python3 module "+module, install)
	return ""
}

// nodeWithExpress returns node, after checking that `npm ci` has installed
// Express into node/node_modules.
func nodeWithExpress(t testing.TB) string {
	t.Helper()
	node := lookPath(t, "node", "apt-get install nodejs")
	if _, err := os.Stat(filepath.Join("node", "node_modules", "express", "package.json")); err != nil {
		missing(t, "express (node/node_modules)", "run `npm ci --prefix examples/servers/node`")
	}
	return node
}

var recipes = []recipe{
	{
		name:  "gunicorn-sync",
		dir:   "python",
		flags: nil,
		find: func(t testing.TB) map[string]string {
			return map[string]string{"gunicorn": lookPath(t, "gunicorn", "apt-get install gunicorn")}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["gunicorn"], "--workers", "1", "wsgi:app"}
		},
		backlog: 2048,
		waits:   "select",
	},
	{
		name:  "gunicorn-gthread",
		dir:   "python",
		flags: nil,
		find: func(t testing.TB) map[string]string {
			return map[string]string{"gunicorn": lookPath(t, "gunicorn", "apt-get install gunicorn")}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["gunicorn"], "--workers", "1", "--worker-class", "gthread", "--threads", "4", "wsgi:app"}
		},
		backlog: 2048,
		waits:   "epoll",
	},
	{
		name:  "uvicorn",
		dir:   "python",
		flags: nil,
		find: func(t testing.TB) map[string]string {
			return map[string]string{"python3": pythonWith(t, "uvicorn", "apt-get install python3-uvicorn")}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["python3"], "-m", "uvicorn", "--fd", "3", "asgi:app"}
		},
		backlog: 2048,
		waits:   "epoll",
	},
	{
		name:  "lighttpd",
		dir:   "lighttpd",
		flags: []string{"--stop-signal", "INT"},
		find: func(t testing.TB) map[string]string {
			return map[string]string{"lighttpd": lookPath(t, "lighttpd", "apt-get install lighttpd")}
		},
		env: func(t testing.TB, port int) []string {
			return []string{"LIGHTTPD_PORT=" + strconv.Itoa(port)}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["lighttpd"], "-D", "-f", "lighttpd.conf"}
		},
		byHeader: true,
		waits:    "epoll",
	},
	{
		name:  "puma",
		dir:   "ruby",
		flags: []string{"--ready", "notify"},
		find: func(t testing.TB) map[string]string {
			puma := lookPath(t, "puma", "apt-get install puma ruby-rack")
			// Puma sends READY=1 through the sd_notify gem, which Debian
			// packages apart from puma.
			if err := exec.Command("ruby", "-e", "require 'sd_notify'").Run(); err != nil {
				missing(t, "ruby gem sd_notify", "apt-get install ruby-sd-notify")
			}
			return map[string]string{"puma": puma}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["puma"], "-b", fmt.Sprintf("tcp://127.0.0.1:%d", port), "config.ru"}
		},
	},
	{
		name:  "node-http",
		dir:   "node",
		flags: nil,
		find: func(t testing.TB) map[string]string {
			return map[string]string{"node": lookPath(t, "node", "apt-get install nodejs")}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["node"], "http.js"}
		},
		backlog: 4096,
		waits:   "epoll",
	},
	{
		name:  "express",
		dir:   "node",
		flags: nil,
		find: func(t testing.TB) map[string]string {
			return map[string]string{"node": nodeWithExpress(t)}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["node"], "express.js"}
		},
		backlog: 4096,
		waits:   "epoll",
	},
	{
		name:  "caddy",
		dir:   "caddy",
		flags: nil,
		find: func(t testing.TB) map[string]string {
			caddy := os.Getenv("CLUSTERD_TEST_CADDY")
			if caddy == "" {
				t.Skip("the Caddy recipe runs only when asked: set CLUSTERD_TEST_CADDY to a caddy binary, 2.9 or later " +
					"(go install github.com/caddyserver/caddy/v2/cmd/caddy@latest)")
			}
			if _, err := exec.LookPath(caddy); err != nil {
				t.Fatalf("CLUSTERD_TEST_CADDY=%s: %v", caddy, err)
			}
			return map[string]string{"caddy": caddy}
		},
		env: func(t testing.TB, port int) []string {
			// Caddy keeps certificates and locks under $HOME or XDG_DATA_HOME.
			home := t.TempDir()
			return []string{"CADDY_PORT=" + strconv.Itoa(port), "HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
		},
		command: func(port int, p map[string]string) []string {
			return []string{p["caddy"], "run", "--config", "Caddyfile"}
		},
		byHeader: true,
		waits:    "epoll",
	},
}

// options turns a recipe's run line into master options: --listen
// tcp://127.0.0.1:port, -w n and the recipe's flags. It accepts the
// few flags the recipes use, and fails the test on any other.
func options(t testing.TB, r recipe, n, port int, progs map[string]string) (master.Options, string) {
	t.Helper()
	addr := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	spec, err := sockshare.ParseSpec(addr)
	if err != nil {
		t.Fatalf("listen address %s: %v", addr, err)
	}
	opts := master.Options{
		Listen:  []sockshare.Spec{spec},
		Workers: n,
		Command: r.command(port, progs),
		// Reloads and stops in these tests must not wait out the
		// default 30s of a server that never ends its last connection.
		KillTimeout: 10 * time.Second,
	}
	line := []string{"clusterd", "run", "--listen", addr, "-w", strconv.Itoa(n), "--cwd", "examples/servers/" + r.dir}
	line = append(line, r.flags...)
	// Without --ready, clusterd run waits for the listening state.
	if opts.Ready, err = master.ParseReadyMode("listening"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(r.flags); i += 2 {
		if i+1 >= len(r.flags) {
			t.Fatalf("recipe %s: flag %s has no value", r.name, r.flags[i])
		}
		v := r.flags[i+1]
		switch r.flags[i] {
		case "--ready":
			if opts.Ready, err = master.ParseReadyMode(v); err != nil {
				t.Fatalf("recipe %s: %v", r.name, err)
			}
		case "--stop-signal":
			sig, ok := map[string]syscall.Signal{"INT": syscall.SIGINT, "TERM": syscall.SIGTERM, "QUIT": syscall.SIGQUIT}[v]
			if !ok {
				t.Fatalf("recipe %s: stop signal %q: want INT, TERM or QUIT", r.name, v)
			}
			opts.StopSignal = sig
		default:
			t.Fatalf("recipe %s: flag %s: the test knows --ready and --stop-signal only", r.name, r.flags[i])
		}
	}
	line = append(line, "--")
	line = append(line, opts.Command...)
	return opts, strings.Join(line, " ")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// recipes of lighttpd, puma and Caddy name the port in the server's own
// configuration, so it must be known before the master binds it.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

func TestRecipes(t *testing.T) {
	for _, r := range recipes {
		t.Run(r.name, func(t *testing.T) {
			runRecipe(t, r)
		})
	}
}
