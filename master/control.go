package master

import (
	"errors"
	"fmt"

	"path/filepath"
	"strings"
	"time"
)

// The control socket: a unix stream socket on which the master answers
// operators (`clusterd status`, `reload`, `scale`, `stop`, `signal`,
// `logs`). It speaks the framed msgpack of package ipc: each end sends its
// hello, then the client sends one [ipc.KindRequest] whose body is a
// [ControlRequest]; the master answers with zero or more [ipc.KindUser]
// messages (a [ControlProgress] each: reload progress, log lines) and ends
// with one [ipc.KindResponse] (the command's result body) or one
// [ipc.KindError] whose Code is one of the Control codes below. The bodies
// are defined here, once, for the server and for cmd/clusterd's client.

// Control operations, the Op of a [ControlRequest].
const (
	ControlStatus = "status" // answer: ControlStatusReply
	ControlReload = "reload" // answer: ControlReloadReply; progress with Wait
	ControlScale  = "scale"  // answer: ControlScaleReply
	ControlStop   = "stop"   // answer: empty, once every worker is reaped
	ControlSignal = "signal" // answer: ControlSignalReply
	ControlLogs   = "logs"   // progress: log lines; answer (without Follow): empty
	// ControlUpgrade replaces the master's image in place (SIGUSR2). With
	// Wait the answer is an error, or none: the connection ends with the
	// exec, and the client asks the new image's status. Without it the
	// answer (empty) comes once the upgrade began.
	ControlUpgrade = "upgrade"
)

// Error codes of the control socket (the Code of an [ipc.Error]), besides
// ipc.CodeBadRequest and ipc.CodeForbidden.
const (
	CodeReloadInProgress = "reload_in_progress"
	CodeReloadAborted    = "reload_aborted"
	CodeStopping         = "stopping"
	CodeNoWorker         = "no_worker"
	// CodeUpgradeFailed: the upgrade did not happen (unsupported, cluster
	// not steady, binary missing or failing its check, exec failed); the
	// old image keeps serving.
	CodeUpgradeFailed     = "upgrade_failed"
	CodeUpgradeInProgress = "upgrade_in_progress"
)

// ControlRequest is the body of a control client's request.
type ControlRequest struct {
	Op string `msgpack:"op"`
	// N is the slot count of a scale; with Relative, the change (+2, -1).
	N        int  `msgpack:"n,omitempty"`
	Relative bool `msgpack:"relative,omitempty"`
	// Wait, for a reload, streams its progress and answers when it ended;
	// without it the answer comes as soon as the reload started.
	Wait bool `msgpack:"wait,omitempty"`
	// TimeoutMS, for a stop, is how long the workers may drain before
	// they are killed; 0 means the master's kill timeout.
	TimeoutMS int64 `msgpack:"timeout_ms,omitempty"`
	// Signal is the signal number of a signal request.
	Signal int `msgpack:"signal,omitempty"`
	// Slot names one slot (signal, logs); -1 means every slot.
	Slot int `msgpack:"slot"`
	// Follow, for logs, keeps the connection open and streams new lines.
	Follow bool `msgpack:"follow,omitempty"`
}

// ControlStatusReply is the answer to [ControlStatus].
type ControlStatusReply struct {
	PID       int             `msgpack:"pid"`
	Started   time.Time       `msgpack:"started"`
	Version   string          `msgpack:"version"`
	Name      string          `msgpack:"name"`
	Listeners []string        `msgpack:"listeners"`
	Workers   []ControlWorker `msgpack:"workers"`
	// Upgrades counts the master's in-place upgrades; Exe is the binary it
	// runs now (/proc/self/exe).
	Upgrades int    `msgpack:"upgrades"`
	Exe      string `msgpack:"exe"`
}

// ControlWorker is one live worker in a [ControlStatusReply].
type ControlWorker struct {
	Slot       int       `msgpack:"slot"`
	PID        int       `msgpack:"pid"`
	State      string    `msgpack:"state"`
	Generation int       `msgpack:"generation"`
	Replacing  bool      `msgpack:"replacing"`
	Online     bool      `msgpack:"online"`
	Started    time.Time `msgpack:"started"`
	Ready      time.Time `msgpack:"ready"`
	Restarts   int       `msgpack:"restarts"`
	LastExit   string    `msgpack:"last_exit"`
	// LastCause says in words why the slot's previous worker ended.
	LastCause string `msgpack:"last_cause,omitempty"`
	// RSS is the resident set in bytes, from /proc/PID/statm; -1 if unknown.
	RSS int64 `msgpack:"rss"`
	// CPU is the CPU use in percent of one core: since the previous status
	// request, or since the worker started for the first one; -1 if unknown.
	CPU float64 `msgpack:"cpu"`
}

// ControlReloadReply is the answer to [ControlReload]: Started only
// without Wait, else the whole result.
type ControlReloadReply struct {
	Resumed    bool                `msgpack:"resumed"`
	DurationMS int64               `msgpack:"duration_ms"`
	Slots      []ControlSlotReload `msgpack:"slots"`
}

// ControlSlotReload is one slot of a [ControlReloadReply].
type ControlSlotReload struct {
	Slot    int    `msgpack:"slot"`
	OldPID  int    `msgpack:"old_pid"`
	NewPID  int    `msgpack:"new_pid"`
	ReadyMS int64  `msgpack:"ready_ms"`
	Error   string `msgpack:"error,omitempty"`
}

// ControlScaleReply is the answer to [ControlScale].
type ControlScaleReply struct {
	Workers int `msgpack:"workers"` // the slot count now
}

// ControlSignalReply is the answer to [ControlSignal].
type ControlSignalReply struct {
	Slots []int `msgpack:"slots"` // the slots signalled
}

// ControlProgress is the body of a streamed [ipc.KindUser] message: one
// line of reload progress (Text) or one line of worker output (Log).
type ControlProgress struct {
	Text string   `msgpack:"text,omitempty"`
	Log  *LogLine `msgpack:"log,omitempty"`
	// Dropped counts the log lines lost before this one because the client
	// read too slowly.
	Dropped uint64 `msgpack:"dropped,omitempty"`
}

// ControlSocketPath returns where the control socket of the cluster named
// name lives when no path is given: $RUNTIME_DIRECTORY/NAME.sock when
// systemd set RUNTIME_DIRECTORY (its first entry), /run/clusterd/NAME.sock
// for root, else $XDG_RUNTIME_DIR/clusterd/NAME.sock. getenv and uid are
// parameters so that the rule is tested without changing the process.
func ControlSocketPath(name string, getenv func(string) string, uid int) (string, error) {
	if err := checkControlName(name); err != nil {
		return "", err
	}
	dir, err := ControlDir(getenv, uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name+".sock"), nil
}

// rootControlDir is root's runtime directory: it holds the control sockets
// and, with workers of another user, their notify directories (notify_linux.go).
const rootControlDir = "/run/clusterd"

// ControlDir is the directory of [ControlSocketPath].
func ControlDir(getenv func(string) string, uid int) (string, error) {
	if d, _, _ := strings.Cut(getenv("RUNTIME_DIRECTORY"), ":"); d != "" {
		return d, nil
	}
	if uid == 0 {
		return rootControlDir, nil
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "clusterd"), nil
	}
	return "", errors.New("no runtime directory for the control socket: XDG_RUNTIME_DIR is not set (give --control PATH)")
}

// checkControlName accepts a cluster name that is one plain file name.
func checkControlName(name string) error {
	switch {
	case name == "":
		return errors.New("cluster name is empty")
	case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("cluster name %q: must be a plain file name", name)
	}
	return nil
}

// controlReloadReply converts a reload result for the wire.
func controlReloadReply(r ReloadResult) ControlReloadReply {
	out := ControlReloadReply{Resumed: r.Resumed, DurationMS: r.Finished.Sub(r.Started).Milliseconds()}
	for _, s := range r.Slots {
		cs := ControlSlotReload{Slot: s.Slot, OldPID: s.OldPID, NewPID: s.NewPID, ReadyMS: s.ReadyAfter.Milliseconds()}
		if s.Err != nil {
			cs.Error = s.Err.Error()
		}
		out.Slots = append(out.Slots, cs)
	}
	return out
}
