package sockshare

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// envLookup returns a lookup function over "KEY=value" entries.
func envLookup(env ...string) func(string) (string, bool) {
	return func(key string) (string, bool) {
		for _, kv := range env {
			if k, v, _ := strings.Cut(kv, "="); k == key {
				return v, true
			}
		}
		return "", false
	}
}

func TestParseListenEnv(t *testing.T) {
	t.Parallel()
	const pid = 4242
	tests := []struct {
		name      string
		env       []string
		wantN     int
		wantNames []string
	}{
		{"not activated", nil, 0, nil},
		{"no LISTEN_PID", []string{"LISTEN_FDS=2"}, 0, nil},
		{"other pid", []string{"LISTEN_PID=1", "LISTEN_FDS=2"}, 0, nil},
		{"no LISTEN_FDS", []string{"LISTEN_PID=4242"}, 0, nil},
		{"zero", []string{"LISTEN_PID=4242", "LISTEN_FDS=0", "LISTEN_FDNAMES=a"}, 0, nil},
		{"without names", []string{"LISTEN_PID=4242", "LISTEN_FDS=2"}, 2, []string{"unknown", "unknown"}},
		{"with names", []string{"LISTEN_PID=4242", "LISTEN_FDS=3", "LISTEN_FDNAMES=web:admin api:dns"}, 3, []string{"web", "admin api", "dns"}},
		{"empty names", []string{"LISTEN_PID=4242", "LISTEN_FDS=3", "LISTEN_FDNAMES=:x:"}, 3, []string{"unknown", "x", "unknown"}},
		{"one empty name", []string{"LISTEN_PID=4242", "LISTEN_FDS=1", "LISTEN_FDNAMES="}, 1, []string{"unknown"}},
		{"leading zeros", []string{"LISTEN_PID=0004242", "LISTEN_FDS=01"}, 1, []string{"unknown"}},
		{"maximum", []string{"LISTEN_PID=4242", "LISTEN_FDS=" + strconv.Itoa(MaxListenFDs)}, MaxListenFDs, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, names, err := ParseListenEnv(envLookup(tt.env...), pid)
			if err != nil {
				t.Fatalf("ParseListenEnv(%q) error: %v", tt.env, err)
			}
			if n != tt.wantN {
				t.Errorf("ParseListenEnv(%q) n = %d, want %d", tt.env, n, tt.wantN)
			}
			if len(names) != n {
				t.Errorf("ParseListenEnv(%q) returned %d names for %d fds", tt.env, len(names), n)
			}
			if tt.wantNames != nil && !slices.Equal(names, tt.wantNames) {
				t.Errorf("ParseListenEnv(%q) names = %q, want %q", tt.env, names, tt.wantNames)
			}
		})
	}
}

func TestParseListenEnvErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     []string
		wantErr string
	}{
		{"bad pid", []string{"LISTEN_PID=abc", "LISTEN_FDS=1"}, `LISTEN_PID="abc": not a decimal number`},
		{"empty pid", []string{"LISTEN_PID=", "LISTEN_FDS=1"}, `LISTEN_PID="": empty`},
		{"signed pid", []string{"LISTEN_PID=+4242", "LISTEN_FDS=1"}, `LISTEN_PID="+4242": not a decimal number`},
		{"huge pid", []string{"LISTEN_PID=99999999999", "LISTEN_FDS=1"}, `LISTEN_PID="99999999999": number too large`},
		{"bad count", []string{"LISTEN_PID=4242", "LISTEN_FDS=two"}, `LISTEN_FDS="two": not a decimal number`},
		{"negative count", []string{"LISTEN_PID=4242", "LISTEN_FDS=-1"}, `LISTEN_FDS="-1": not a decimal number`},
		{"spaces", []string{"LISTEN_PID=4242", "LISTEN_FDS= 1"}, `LISTEN_FDS=" 1": not a decimal number`},
		{"too many", []string{"LISTEN_PID=4242", "LISTEN_FDS=" + strconv.Itoa(MaxListenFDs+1)}, "more than 65536 sockets"},
		{"fewer names", []string{"LISTEN_PID=4242", "LISTEN_FDS=3", "LISTEN_FDNAMES=a:b"}, "LISTEN_FDNAMES has 2 names for LISTEN_FDS=3"},
		{"more names", []string{"LISTEN_PID=4242", "LISTEN_FDS=1", "LISTEN_FDNAMES=a:b"}, "LISTEN_FDNAMES has 2 names for LISTEN_FDS=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, names, err := ParseListenEnv(envLookup(tt.env...), 4242)
			if err == nil {
				t.Fatalf("ParseListenEnv(%q) = %d, %q; want an error containing %q", tt.env, n, names, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseListenEnv(%q) error = %q, want it to contain %q", tt.env, err, tt.wantErr)
			}
			if n != 0 || names != nil {
				t.Errorf("ParseListenEnv(%q) = %d, %q with an error, want 0, nil", tt.env, n, names)
			}
		})
	}
}

func TestListenEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		names []string
		want  []string
	}{
		{nil, nil},
		{[]string{"web"}, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=web"}},
		{[]string{"web", "", "a:b", "dns"}, []string{"LISTEN_FDS=4", "LISTEN_FDNAMES=web:unknown:unknown:dns"}},
	}
	for _, tt := range tests {
		got := ListenEnv(tt.names)
		if !slices.Equal(got, tt.want) {
			t.Errorf("ListenEnv(%q) = %q, want %q", tt.names, got, tt.want)
		}
		if len(tt.names) == 0 {
			continue
		}
		n, names, err := ParseListenEnv(envLookup(append(got, "LISTEN_PID=7")...), 7)
		if err != nil || n != len(tt.names) {
			t.Errorf("ParseListenEnv(ListenEnv(%q)) = %d, %q, %v", tt.names, n, names, err)
		}
	}
}

func TestStripListenEnv(t *testing.T) {
	t.Parallel()
	env := []string{"PATH=/bin", "LISTEN_PID=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=a:b", "LISTEN_FDSX=keep", "HOME=/"}
	orig := slices.Clone(env)
	got := StripListenEnv(env)
	want := []string{"PATH=/bin", "LISTEN_FDSX=keep", "HOME=/"}
	if !slices.Equal(got, want) {
		t.Errorf("StripListenEnv(%q) = %q, want %q", env, got, want)
	}
	if !slices.Equal(env, orig) {
		t.Errorf("StripListenEnv modified its argument: %q", env)
	}
}

func FuzzParseListenEnv(f *testing.F) {
	f.Add(true, "42", true, "2", true, "web:dns")
	f.Add(true, "42", true, "1", false, "")
	f.Add(true, "42", true, "3", true, "::")
	f.Add(true, "1", true, "1", true, "x")
	f.Add(false, "", true, "1", true, "x")
	f.Add(true, "42", true, "65537", false, "")
	f.Fuzz(func(t *testing.T, hasPID bool, pid string, hasFDs bool, fds string, hasNames bool, names string) {
		var env []string
		if hasPID {
			env = append(env, EnvListenPID+"="+pid)
		}
		if hasFDs {
			env = append(env, EnvListenFDs+"="+fds)
		}
		if hasNames {
			env = append(env, EnvListenFDNames+"="+names)
		}
		n, got, err := ParseListenEnv(envLookup(env...), 42)
		if err != nil {
			if n != 0 || got != nil {
				t.Fatalf("ParseListenEnv(%q) = %d, %q with error %v", env, n, got, err)
			}
			return
		}
		if n < 0 || n > MaxListenFDs || len(got) != n {
			t.Fatalf("ParseListenEnv(%q) = %d with %d names", env, n, len(got))
		}
		if n == 0 {
			return
		}
		// What the parser accepted travels unchanged through ListenEnv.
		back := append(ListenEnv(got), EnvListenPID+"=42")
		n2, got2, err := ParseListenEnv(envLookup(back...), 42)
		if err != nil || n2 != n || !slices.Equal(got2, got) {
			t.Fatalf("ParseListenEnv(ListenEnv(%q)) = %d, %q, %v; want %d, %q", got, n2, got2, err, n, got)
		}
	})
}
