package worker

import (
	"errors"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
)

// ErrNotWorker is returned by the functions that need the master ([Send],
// [Request], [Flush]) when the process does not run under clusterd: its
// environment has no CLUSTERD_IPC_FD. Test for it with [errors.Is].
var ErrNotWorker = errors.New("worker: not running under clusterd (no " + ipc.EnvIPCFD + ")")

// process is the process-wide state behind the package's functions. A
// process inherits one set of fds from one master, so there is exactly one.
type process struct {
	// lookup reads the environment (os.LookupEnv; replaced in tests).
	lookup func(string) (string, bool)

	mu             sync.Mutex
	listenersTaken bool               // Listeners or Sockets has taken the inherited sockets
	inherited      []sockshare.Socket // inherited sockets not yet taken, once loaded
	inheritedDone  bool               // the inherited sockets have been loaded
	inheritedErr   error              // why they could not be
	deadline       time.Time          // drain deadline sent by the master, if any
	handler        Handler            // answers the master's requests; nil: unsupported
	jobHandler     JobHandler         // does the master's jobs; nil: unsupported

	// connMu guards the IPC connection. It is held across the hello
	// exchange, so it is not mu: a drain signal must not wait for that.
	connMu   sync.Mutex
	conn     *ipc.Conn // IPC connection to the master, once opened
	connDone bool      // the IPC connection has been attempted
	connErr  error     // why it could not be opened
	// announced are the master's listeners its hello named (balanced
	// modes only), for Sockets.
	announced []ipc.Listener

	drain     chan struct{} // closed once when the worker must drain
	drainOnce sync.Once

	// msgs carries the master's user messages to [Messages]. The session's
	// reader is its only sender and closes it when the connection ends.
	msgs chan Message
	// msgsClosed makes closing msgs idempotent: the reader closes it at the
	// end of the connection, openIPC when there is no connection.
	msgsClosed sync.Once

	metrics metrics

	handoff handoff // balanced listeners
}

func newProcess(lookup func(string) (string, bool)) *process {
	return &process{lookup: lookup, drain: make(chan struct{}), msgs: make(chan Message, messageBuffer),
		handoff: handoff{kick: make(chan struct{}, 1)}}
}

// IsWorker reports whether the process runs under clusterd with an IPC
// channel to its master: whether CLUSTERD_IPC_FD is set to a descriptor
// number. It does not open the connection. Programs that are both master and
// worker (examples/samebinary) branch on it.
func IsWorker() bool {
	env, ok, err := ipc.ParseEnv(self().lookup)
	return err == nil && ok && env.IPCFD >= 3
}

// self is created on first use; see "Process-wide state" in the package doc.
var self = sync.OnceValue(func() *process { return newProcess(os.LookupEnv) })

// ID reports the worker's slot number (CLUSTERD_WORKER_ID, 0..N-1, stable
// across restarts of the slot) and whether the process runs under clusterd.
// It reports 0, false when the variable is absent or not a number.
func ID() (int, bool) {
	return self().id()
}

// Generation reports the incarnation of the worker's slot
// (CLUSTERD_WORKER_GEN), or 0 when not running under clusterd.
func Generation() int {
	return self().generation()
}

func (p *process) id() (int, bool) {
	v, ok := p.lookup(ipc.EnvWorkerID)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

func (p *process) generation() int {
	v, ok := p.lookup(ipc.EnvWorkerGen)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
