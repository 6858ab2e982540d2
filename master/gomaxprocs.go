package master

import (
	"fmt"
	"strings"
)

// envGOMAXPROCS is the variable the Go runtime reads its GOMAXPROCS from.
const envGOMAXPROCS = "GOMAXPROCS"

// shareGOMAXPROCS decides the GOMAXPROCS of the workers
// (Options.WorkerGOMAXPROCS); getenv reads the master's environment. It
// runs after Workers got its default.
func (c *config) shareGOMAXPROCS(getenv func(string) string) error {
	inEnv := false
	for _, kv := range c.Env {
		if k, _, _ := strings.Cut(kv, "="); k == envGOMAXPROCS {
			inEnv = true
		}
	}
	switch n := c.WorkerGOMAXPROCS; {
	case n > 0 && inEnv:
		return optErr("WorkerGOMAXPROCS", "GOMAXPROCS %d, and Env sets GOMAXPROCS as well: set one of them", n)
	case n > 0:
		c.gomaxprocs, c.gomaxprocsFrom = n, "given"
	case n < 0, inEnv:
		// Left as the environment has it.
	case getenv(envGOMAXPROCS) != "":
		c.gomaxprocsFrom = "inherited from the master's environment"
	default:
		cpus := defaultWorkers()
		c.gomaxprocs = max(1, cpus.n/c.Workers)
		c.gomaxprocsFrom = fmt.Sprintf("%d CPUs (%s) / %d workers", cpus.n, cpus.source, c.Workers)
	}
	return nil
}

// gomaxprocsEnv is the entry the workers' environment gets, "" for none.
func (c *config) gomaxprocsEnv() string {
	if c.gomaxprocs <= 0 {
		return ""
	}
	return fmt.Sprintf("%s=%d", envGOMAXPROCS, c.gomaxprocs)
}
