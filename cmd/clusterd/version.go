package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clusterd/clusterd/ipc"
)

// Set at link time by release builds, which have no VCS stamp when built
// from a source archive:
//
//	go build -ldflags "-X main.buildVersion=v1.2.3 -X main.buildCommit=$(git rev-parse HEAD) \
//	    -X main.buildDate=$(git log -1 --format=%cI)" ./cmd/clusterd
var buildVersion, buildCommit, buildDate string

// buildInfo is what `clusterd version` reports.
type buildInfo struct {
	version string // module version, "(devel)" for a build from a checkout
	commit  string // VCS revision, "" when unknown
	date    string // the commit's date (RFC 3339), "" when unknown
	dirty   bool   // built from a tree with uncommitted changes
}

// readBuildInfo takes what the linker flags set, and the rest from the
// module and VCS stamp the Go toolchain records (debug.ReadBuildInfo).
func readBuildInfo(info *debug.BuildInfo, ok bool) buildInfo {
	var b buildInfo
	if ok {
		b.version = info.Main.Version
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.commit = s.Value
			case "vcs.time":
				b.date = s.Value
			case "vcs.modified":
				b.dirty = s.Value == "true"
			}
		}
	}
	if buildVersion != "" {
		b.version = buildVersion
	}
	if buildCommit != "" {
		b.commit, b.dirty = buildCommit, false
	}
	if buildDate != "" {
		b.date = buildDate
	}
	if b.version == "" {
		b.version = "(devel)"
	}
	return b
}

// short is the version alone, for `clusterd --version`.
func (b buildInfo) short() string {
	if b.version != "(devel)" || b.commit == "" {
		return b.version
	}
	return b.version + " " + b.shortCommit()
}

func (b buildInfo) shortCommit() string {
	c := b.commit
	if len(c) > 12 {
		c = c[:12]
	}
	if b.dirty {
		c += "+dirty"
	}
	return c
}

// String is the line `clusterd version` prints, e.g.
// "clusterd v1.2.0 commit 3d15b9a1c2e4 (2026-12-01T23:59:00Z) protocol 1 go1.26.8 linux/amd64".
func (b buildInfo) String() string {
	var sb strings.Builder
	sb.WriteString("clusterd " + b.version)
	if b.commit != "" {
		sb.WriteString(" commit " + b.shortCommit())
	} else {
		sb.WriteString(" commit unknown")
	}
	if b.date != "" {
		sb.WriteString(" (" + b.date + ")")
	}
	fmt.Fprintf(&sb, " protocol %d %s %s/%s", ipc.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return sb.String()
}

// version reports the version for `clusterd --version`.
func version() string {
	return readBuildInfo(debug.ReadBuildInfo()).short()
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of clusterd, its commit and date, and the IPC protocol version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), readBuildInfo(debug.ReadBuildInfo()))
			return err
		},
	}
}
