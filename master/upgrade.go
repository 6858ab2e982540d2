package master

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/vmihailenco/msgpack/v5"
)

// The in-place upgrade (Options.UpgradeArgs): the master replaces its own
// image with execve under the same pid, and the workers go on running as
// its children. systemd, pid files and containers never see a new master.
//
// What crosses the exec is a msgpack upgradeState in a memfd whose number
// is in CLUSTERD_UPGRADE_FD, and the descriptors it names, whose
// close-on-exec flag is cleared only for the exec: the listeners (also per
// slot and run-time ones), each worker's IPC socket, output pipes and
// notify socket, the control socket's listener and the guardian's pipe.
// The rest (the reaper, timers, the metrics listener) the new image makes
// again.
//
// An exec cannot be undone, so the master first runs the new binary in a
// check mode ([UpgradeCheckArg]: it decodes the state it would get, sent on
// its stdin, and validates it); then it asks every worker that speaks IPC
// to pause (ipc.Hello with Pause: the worker's last frame is its hello
// marked Paused, and it holds what it sends until the master's next
// hello), so that each IPC stream ends at a frame boundary both ends know;
// then it stops writing on its own side, writes the state and execs. The
// new image adopts all of it and says hello to each worker, which answers
// and sends what it held, and again the requests the old image had read
// but not answered. Anything that fails before the exec (missing or
// non-executable binary, a failed check, a worker that does not pause, the
// exec itself) leaves the old image serving, with the workers resumed.

// UpgradeCheckArg is the first argument that puts a program linking master
// into upgrade-check mode (see [DispatchExecWorker]).
const UpgradeCheckArg = "upgrade-check"

// envUpgradeFD names the descriptor of the state, in the new image.
const envUpgradeFD = "CLUSTERD_UPGRADE_FD"

// upgradeProtocol is the version of upgradeState. A binary that reads
// another version fails its check, and the old image keeps running.
const upgradeProtocol = 1

// Errors of [Master.Upgrade], for [errors.Is].
var (
	// ErrUpgradeUnsupported: Options.UpgradeArgs is empty, or the mode
	// cannot cross an exec.
	ErrUpgradeUnsupported = errors.New("master: upgrade not supported")
	// ErrUpgradeInProgress: another upgrade is under way.
	ErrUpgradeInProgress = errors.New("master: upgrade already in progress")
	// ErrUpgradeNotSteady: a worker is starting, a reload or a stop is
	// running; try again once every worker is ready.
	ErrUpgradeNotSteady = errors.New("master: cluster not steady")
)

// UpgradeError says at which step an upgrade failed; the old image keeps
// serving.
type UpgradeError struct {
	Step string // "binary", "check", "pause", "state", "exec"
	Err  error
}

func (e *UpgradeError) Error() string { return "upgrade " + e.Step + ": " + e.Err.Error() }
func (e *UpgradeError) Unwrap() error { return e.Err }

// Upgrade replaces the master's image with the binary at
// Options.UpgradeArgs[0], keeping its pid, its workers and its sockets
// (see the package's upgrade.go). On success the process execs and Upgrade
// never returns; otherwise it returns why ([*UpgradeError],
// [ErrUpgradeUnsupported], [ErrUpgradeInProgress], [ErrUpgradeNotSteady])
// and the master goes on as it was. ctx bounds the wait for the loop.
func (m *Master) Upgrade(ctx context.Context) error {
	c := &upgradeCmd{reply: make(chan error, 1)}
	if err := m.do(ctx, c); err != nil {
		return err
	}
	err, werr := await(ctx, m, c.reply)
	if werr != nil {
		return werr
	}
	return err
}

// upgradeCmd starts an upgrade; reply is nil for SIGUSR2's.
type upgradeCmd struct{ reply chan error }

// upgradeState is what crosses the exec.
type upgradeState struct {
	Protocol  int              `msgpack:"protocol"`
	Version   string           `msgpack:"version"`  // the writer's Options.Version
	Started   int64            `msgpack:"started"`  // the master's first start, unix ns
	Upgrades  int              `msgpack:"upgrades"` // upgrades so far, this one included
	Gens      map[int]int      `msgpack:"gens"`
	Slots     []upgradeSlot    `msgpack:"slots"`
	Listeners upgradeListeners `msgpack:"listeners"`
	Runtime   []upgradeRuntime `msgpack:"runtime"`
	Created   int              `msgpack:"created"` // run-time addresses opened
	Cgroup    string           `msgpack:"cgroup"`  // "": none
	Guardian  upgradeGuardian  `msgpack:"guardian"`
	Groups    []int            `msgpack:"groups"`
	NotifyDir string           `msgpack:"notify_dir"`
	// Control is the control socket's listener (0: none), at ControlPath.
	Control     int    `msgpack:"control,omitempty"`
	ControlPath string `msgpack:"control_path,omitempty"`
	FDs         []int  `msgpack:"fds"` // every descriptor that crosses
	// Balanced are the listeners the balanced modes accept on, with their
	// ids (the workers' balanced listeners know them by id).
	Balanced []upgradeBalanced `msgpack:"balanced"`
}

type upgradeBalanced struct {
	FD int   `msgpack:"fd"`
	ID uint8 `msgpack:"id"`
}

type upgradeSlot struct {
	ID        int            `msgpack:"id"`
	Restarts  int            `msgpack:"restarts"`
	Hangs     int            `msgpack:"hangs"`
	LastExit  string         `msgpack:"last_exit"`
	LastCause string         `msgpack:"last_cause"`
	LastGen   int            `msgpack:"last_gen"`
	Worker    *upgradeWorker `msgpack:"worker"`
}

type upgradeWorker struct {
	PID         int    `msgpack:"pid"`
	Gen         int    `msgpack:"gen"`
	Started     int64  `msgpack:"started"`
	ReadySince  int64  `msgpack:"ready_since"`
	Online      bool   `msgpack:"online"`
	IPC         int    `msgpack:"ipc"`    // -1: none
	Stdout      int    `msgpack:"stdout"` // pipe read ends; -1: not relayed
	Stderr      int    `msgpack:"stderr"`
	Notify      int    `msgpack:"notify"` // -1: none
	NotifyPath  string `msgpack:"notify_path"`
	RetireAfter int64  `msgpack:"retire_after"`
	// Balanced modes: the listener ids the worker asked for and its
	// connection totals.
	Listens uint64 `msgpack:"listens"`
	Handed  uint64 `msgpack:"handed"`
	Closed  uint64 `msgpack:"closed"`
	Acked   uint64 `msgpack:"acked"`
}

type upgradeListeners struct {
	Specs   []sockshare.Spec    `msgpack:"specs"`
	Names   []string            `msgpack:"names"`
	PerTCP  []bool              `msgpack:"per_tcp"`
	Adopted []bool              `msgpack:"adopted"`
	Watched []bool              `msgpack:"watched"`
	Shared  []int               `msgpack:"shared"` // -1: per slot
	Slots   map[int][]int       `msgpack:"slots"`  // -1: shared
	Files   []upgradeSocketFile `msgpack:"files"`
}

type upgradeSocketFile struct {
	Path string `msgpack:"path"`
	Dev  uint64 `msgpack:"dev"`
	Ino  uint64 `msgpack:"ino"`
}

type upgradeRuntime struct {
	Key    string         `msgpack:"key"`
	Spec   sockshare.Spec `msgpack:"spec"`
	Shared int            `msgpack:"shared"` // -1: per slot
	Slots  map[int]int    `msgpack:"slots"`
}

type upgradeGuardian struct {
	PID   int            `msgpack:"pid"` // 0: none
	FD    int            `msgpack:"fd"`
	Procs map[int]uint64 `msgpack:"procs"`
}

// validate checks what a new image needs of the state before it commits
// to it.
func (s *upgradeState) validate() error {
	if s.Protocol != upgradeProtocol {
		return fmt.Errorf("state protocol %d, this binary reads %d", s.Protocol, upgradeProtocol)
	}
	fds := make(map[int]bool, len(s.FDs))
	for _, fd := range s.FDs {
		if fd < 3 || fds[fd] {
			return fmt.Errorf("state descriptor %d: invalid or listed twice", fd)
		}
		fds[fd] = true
	}
	known := func(what string, fd int) error {
		if fd != -1 && !fds[fd] {
			return fmt.Errorf("%s: descriptor %d not in the state's list", what, fd)
		}
		return nil
	}
	ls := s.Listeners
	n := len(ls.Specs)
	if len(ls.Names) != n || len(ls.PerTCP) != n || len(ls.Adopted) != n || len(ls.Watched) != n || len(ls.Shared) != n {
		return errors.New("listeners: fields of different lengths")
	}
	for i, fd := range ls.Shared {
		if err := known("listener "+ls.Names[i], fd); err != nil {
			return err
		}
	}
	for slot, fs := range ls.Slots {
		if len(fs) != n {
			return fmt.Errorf("listeners of slot %d: %d, want %d", slot, len(fs), n)
		}
		for _, fd := range fs {
			if err := known("listener of slot "+strconv.Itoa(slot), fd); err != nil {
				return err
			}
		}
	}
	for _, r := range s.Runtime {
		if err := known("run-time listener "+r.Key, r.Shared); err != nil {
			return err
		}
		for _, fd := range r.Slots {
			if err := known("run-time listener "+r.Key, fd); err != nil {
				return err
			}
		}
	}
	seen := make(map[int]bool)
	for _, sl := range s.Slots {
		if sl.ID < 0 || seen[sl.ID] {
			return fmt.Errorf("slot %d: invalid or listed twice", sl.ID)
		}
		seen[sl.ID] = true
		w := sl.Worker
		if w == nil {
			continue
		}
		if w.PID <= 0 || w.Gen <= 0 {
			return fmt.Errorf("slot %d: worker pid %d generation %d", sl.ID, w.PID, w.Gen)
		}
		for _, fd := range []int{w.IPC, w.Stdout, w.Stderr, w.Notify} {
			if err := known("worker "+strconv.Itoa(sl.ID), fd); err != nil {
				return err
			}
		}
	}
	for _, b := range s.Balanced {
		if b.FD < 0 {
			return fmt.Errorf("balanced listener %d: no descriptor", b.ID)
		}
		if err := known("balanced listener", b.FD); err != nil {
			return err
		}
	}
	if s.Control > 0 {
		if err := known("control socket", s.Control); err != nil {
			return err
		}
	}
	if s.Guardian.PID != 0 {
		if err := known("guardian", s.Guardian.FD); err != nil {
			return err
		}
	}
	return nil
}

// UpgradeCheck is the upgrade-check mode: it reads an upgrade state from r
// and validates it, as the new binary of an upgrade would use it. It
// returns the line the check prints when the state is usable, which names
// the state's digest: the master execs only a binary that printed the
// line for the state it sent (a program that prints "ok" to anything is
// not one that can take the cluster over).
func UpgradeCheck(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxUpgradeState+1))
	if err != nil {
		return "", fmt.Errorf("read upgrade state: %w", err)
	}
	if _, err := decodeUpgradeState(b); err != nil {
		return "", err
	}
	return upgradeCheckLine(b), nil
}

// upgradeCheckLine is what a binary that can use the state b prints.
func upgradeCheckLine(b []byte) string {
	sum := sha256.Sum256(b)
	return fmt.Sprintf("clusterd upgrade-check ok protocol=%d state=%s", upgradeProtocol, hex.EncodeToString(sum[:]))
}

// maxUpgradeState bounds the state's size (a few hundred bytes per worker).
const maxUpgradeState = 16 << 20

func decodeUpgradeState(b []byte) (*upgradeState, error) {
	if len(b) > maxUpgradeState {
		return nil, fmt.Errorf("upgrade state of more than %d bytes", maxUpgradeState)
	}
	var s upgradeState
	if err := msgpack.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode upgrade state: %w", err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("upgrade state: %w", err)
	}
	return &s, nil
}

// runUpgradeCheck is DispatchExecWorker's upgrade-check mode: the state on
// stdin, "ok" on stdout, exit 0; or the error on stderr, exit 1.
func runUpgradeCheck() {
	line, err := UpgradeCheck(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterd:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stdout, line)
	os.Exit(0)
}
