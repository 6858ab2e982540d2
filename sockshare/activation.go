package sockshare

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// The environment of the systemd socket-activation protocol (sd_listen_fds(3)).
const (
	// EnvListenPID names the variable holding the pid of the process the sockets
	// are for. A process ignores sockets meant for another (its parent's, when the
	// variables were inherited by mistake).
	EnvListenPID = "LISTEN_PID"
	// EnvListenFDs names the variable holding the number of sockets, passed at
	// descriptors [ListenFDsStart], [ListenFDsStart]+1, ...
	EnvListenFDs = "LISTEN_FDS"
	// EnvListenFDNames names the variable holding the sockets' names, separated by
	// ':' (systemd's FileDescriptorName=).
	EnvListenFDNames = "LISTEN_FDNAMES"

	// ListenFDsStart is the first passed descriptor (SD_LISTEN_FDS_START), the one
	// after stdin, stdout and stderr.
	ListenFDsStart = 3

	// MaxListenFDs bounds LISTEN_FDS: a larger count is an error rather than an
	// allocation a stray environment could make arbitrarily large.
	MaxListenFDs = 65536

	// UnknownFDName is the name of a socket that has none: systemd's name for it.
	UnknownFDName = "unknown"
)

// ListenEnv returns the environment a parent adds for a child whose listening
// sockets sit at descriptors 3, 4, ... in the order of names: "LISTEN_FDS=n" and
// "LISTEN_FDNAMES=a:b:...". It returns nil when names is empty. LISTEN_PID is not
// included: only the child knows its pid before it runs the program (clusterd's
// master sets it in the re-executed child).
//
// A name that cannot travel in LISTEN_FDNAMES (empty, or containing ':') is sent
// as [UnknownFDName], as systemd does for unnamed sockets. The parent should remove
// inherited LISTEN_* variables from the child's environment ([StripListenEnv]).
func ListenEnv(names []string) []string {
	if len(names) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString(EnvListenFDNames)
	b.WriteByte('=')
	for i, name := range names {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(FDName(name))
	}
	return []string{EnvListenFDs + "=" + strconv.Itoa(len(names)), b.String()}
}

// FDName returns name as it travels in LISTEN_FDNAMES, and so as the child
// reads it: name itself, or [UnknownFDName] for one that cannot travel
// (empty, or containing ':').
func FDName(name string) string {
	if name == "" || strings.IndexByte(name, ':') >= 0 {
		return UnknownFDName
	}
	return name
}

// StripListenEnv returns env (a list of "KEY=value") without the LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES entries, in a new slice; env is not modified.
func StripListenEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		key, _, _ := strings.Cut(kv, "=")
		switch key {
		case EnvListenPID, EnvListenFDs, EnvListenFDNames:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// ParseListenEnv reads the socket-activation variables through lookup (in
// production [os.LookupEnv]) for the process pid. It returns the number of passed
// sockets, at descriptors [ListenFDsStart] onwards, and their names (one per
// socket; [UnknownFDName] where LISTEN_FDNAMES is absent or an entry is empty).
//
// Not being activated is not an error: ParseListenEnv returns 0, nil and nil when
// LISTEN_PID or LISTEN_FDS is absent, or LISTEN_PID is another process. A value that
// is not a decimal number, a count above [MaxListenFDs], or a LISTEN_FDNAMES with
// another number of names than LISTEN_FDS is an error naming the variable.
// ParseListenEnv has no side effects.
func ParseListenEnv(lookup func(string) (string, bool), pid int) (n int, names []string, err error) {
	pidStr, ok := lookup(EnvListenPID)
	if !ok {
		return 0, nil, nil
	}
	listenPID, err := parseDecimal(pidStr)
	if err != nil {
		return 0, nil, fmt.Errorf("%s=%q: %w", EnvListenPID, pidStr, err)
	}
	if listenPID != pid {
		return 0, nil, nil
	}
	fdsStr, ok := lookup(EnvListenFDs)
	if !ok {
		return 0, nil, nil
	}
	n, err = parseDecimal(fdsStr)
	if err != nil {
		return 0, nil, fmt.Errorf("%s=%q: %w", EnvListenFDs, fdsStr, err)
	}
	if n > MaxListenFDs {
		return 0, nil, fmt.Errorf("%s=%q: more than %d sockets", EnvListenFDs, fdsStr, MaxListenFDs)
	}
	if n == 0 {
		return 0, nil, nil
	}
	names = make([]string, n)
	namesStr, ok := lookup(EnvListenFDNames)
	if !ok {
		for i := range names {
			names[i] = UnknownFDName
		}
		return n, names, nil
	}
	// Count before splitting, so a long value never allocates more than n names.
	if got := strings.Count(namesStr, ":") + 1; got != n {
		return 0, nil, fmt.Errorf("%s has %d names for %s=%d", EnvListenFDNames, got, EnvListenFDs, n)
	}
	i := 0
	for name := range strings.SplitSeq(namesStr, ":") {
		if name == "" {
			name = UnknownFDName
		}
		names[i] = name
		i++
	}
	return n, names, nil
}

// activationEnv is the first step of [Files] on every system: it reads the
// socket-activation variables of this process with [ParseListenEnv] and, when
// unsetEnv is true, removes them from the environment whatever the outcome.
func activationEnv(unsetEnv bool) (n int, names []string, err error) {
	n, names, err = ParseListenEnv(os.LookupEnv, os.Getpid())
	if unsetEnv {
		err = errors.Join(err, unsetListenEnv())
	}
	if err != nil {
		return 0, nil, fmt.Errorf("socket activation: %w", err)
	}
	return n, names, nil
}

// unsetListenEnv removes the socket-activation variables from the environment.
func unsetListenEnv() error {
	var errs []error
	for _, key := range []string{EnvListenPID, EnvListenFDs, EnvListenFDNames} {
		if err := os.Unsetenv(key); err != nil {
			errs = append(errs, fmt.Errorf("unset %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// parseDecimal parses a non-negative decimal int of at most 9 digits (pids and
// descriptor counts fit), without sign or spaces.
func parseDecimal(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	if len(s) > 9 {
		return 0, errors.New("number too large")
	}
	v := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("not a decimal number")
		}
		v = v*10 + int(c-'0')
	}
	return v, nil
}
