package main

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// envPrefix starts the name of the environment variable of every flag.
const envPrefix = "CLUSTERD_"

// envName is the environment variable that sets a flag: --min-uptime is
// CLUSTERD_MIN_UPTIME.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag of fs that was not given on the command line from
// its environment variable, if that is set, then removes the variable with
// unset so that workers do not inherit the master's configuration. Flags of
// slice type (--listen, --env) take a comma-separated list. A bad value is a
// usage error naming the variable.
func applyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool), unset func(string) error) error {
	var firstErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if firstErr != nil || f.Name == "help" {
			return
		}
		name := envName(f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if err := unset(name); err != nil {
			firstErr = usagef("unset %s: %w", name, err)
			return
		}
		if f.Changed {
			return // the command line wins
		}
		values := []string{v}
		if isList(f) {
			var err error
			if values, err = splitList(v); err != nil {
				firstErr = usagef("%s=%q (--%s): %w", name, v, f.Name, err)
				return
			}
		}
		for _, v := range values {
			if err := fs.Set(f.Name, v); err != nil {
				firstErr = usagef("%s=%q (--%s): %w", name, v, f.Name, err)
				return
			}
		}
	})
	return firstErr
}

// isList reports whether a flag collects several values.
func isList(f *pflag.Flag) bool {
	switch f.Value.Type() {
	case "stringArray", "stringSlice":
		return true
	}
	return false
}

// splitList splits a comma-separated list. An empty item (",,", a
// trailing comma, an empty variable) is an error: CLUSTERD_LISTEN=",,,"
// must not run a cluster without a listener.
func splitList(v string) ([]string, error) {
	var out []string
	for i, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			return nil, fmt.Errorf("item %d of the comma-separated list is empty", i+1)
		}
		out = append(out, item)
	}
	return out, nil
}
