package ipc

import (
	"slices"
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		env    map[string]string
		want   Env
		wantOK bool
		err    string
	}{
		{"absent", nil, Env{IPCFD: -1, WorkerID: -1}, false, ""},
		{"all", map[string]string{EnvIPCFD: "3", EnvWorkerID: "0", EnvWorkerGen: "12"}, Env{IPCFD: 3, WorkerID: 0, Generation: 12}, true, ""},
		{"fd only", map[string]string{EnvIPCFD: "5"}, Env{IPCFD: 5, WorkerID: -1}, true, ""},
		{"id without fd", map[string]string{EnvWorkerID: "2"}, Env{IPCFD: -1, WorkerID: 2}, false, ""},
		{"bad fd", map[string]string{EnvIPCFD: "three"}, Env{IPCFD: -1, WorkerID: -1}, false, EnvIPCFD},
		{"negative id", map[string]string{EnvIPCFD: "3", EnvWorkerID: "-1"}, Env{IPCFD: -1, WorkerID: -1}, false, EnvWorkerID},
		{"empty gen", map[string]string{EnvIPCFD: "3", EnvWorkerGen: ""}, Env{IPCFD: -1, WorkerID: -1}, false, EnvWorkerGen},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			got, ok, err := ParseEnv(lookup)
			if got != tc.want || ok != tc.wantOK || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("ParseEnv(%v) = %+v, %v, %v; want %+v, %v, error naming %q", tc.env, got, ok, err, tc.want, tc.wantOK, tc.err)
			}
		})
	}
}

func TestEnvironRoundTrip(t *testing.T) {
	t.Parallel()
	for _, e := range []Env{{IPCFD: 3, WorkerID: 0, Generation: 1}, {IPCFD: -1, WorkerID: -1}, {IPCFD: 7, WorkerID: 9}} {
		vars := e.Environ()
		lookup := func(k string) (string, bool) {
			i := slices.IndexFunc(vars, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
			if i < 0 {
				return "", false
			}
			return strings.TrimPrefix(vars[i], k+"="), true
		}
		got, ok, err := ParseEnv(lookup)
		if err != nil || got != e || ok != (e.IPCFD >= 0) {
			t.Errorf("ParseEnv(%q) = %+v, %v, %v; want %+v", vars, got, ok, err, e)
		}
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k := KindHello; k <= kindMax; k++ {
		if s := k.String(); s == "" || strings.HasPrefix(s, "kind(") {
			t.Errorf("Kind(%d).String() = %q", k, s)
		}
	}
	if s := Kind(0).String(); s != "kind(0)" {
		t.Errorf("Kind(0).String() = %q, want kind(0)", s)
	}
	if Kind(kindMax + 1).Valid() {
		t.Errorf("Kind(%d).Valid() = true", kindMax+1)
	}
}
