package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "3d15b9a1c2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8"},
		{Key: "vcs.time", Value: "2026-12-01T23:59:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	tests := []struct {
		name                  string
		info                  *debug.BuildInfo
		ok                    bool
		version, commit, date string // the link-time variables
		wantShort, wantPrefix string
	}{
		{name: "checkout", info: stamped, ok: true, wantShort: "(devel) 3d15b9a1c2e4+dirty",
			wantPrefix: "clusterd (devel) commit 3d15b9a1c2e4+dirty (2026-12-01T23:59:00Z) protocol 1 go1."},
		{name: "module", info: &debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}}, ok: true, wantShort: "v1.2.0",
			wantPrefix: "clusterd v1.2.0 commit unknown protocol 1 go1."},
		{name: "release", info: stamped, ok: true, version: "v1.3.0", commit: "abcdef0123456789", date: "2026-11-30T10:00:00Z",
			wantShort: "v1.3.0", wantPrefix: "clusterd v1.3.0 commit abcdef012345 (2026-11-30T10:00:00Z) protocol 1 go1."},
		{name: "no build info", ok: false, wantShort: "(devel)", wantPrefix: "clusterd (devel) commit unknown protocol 1 go1."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buildVersion, buildCommit, buildDate = tt.version, tt.commit, tt.date
			t.Cleanup(func() { buildVersion, buildCommit, buildDate = "", "", "" })
			b := readBuildInfo(tt.info, tt.ok)
			if got := b.short(); got != tt.wantShort {
				t.Errorf("short() = %q, want %q", got, tt.wantShort)
			}
			if got := b.String(); !strings.HasPrefix(got, tt.wantPrefix) {
				t.Errorf("String() = %q, want it to start with %q", got, tt.wantPrefix)
			}
		})
	}
}
