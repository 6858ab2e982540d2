package worker

import (
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/clusterd/clusterd/ipc"
)

// process is the process-wide state behind the package's functions. A
// process inherits one set of fds from one master, so there is exactly one.
type process struct {
	// lookup reads the environment (os.LookupEnv; replaced in tests).
	lookup func(string) (string, bool)

	mu             sync.Mutex
	listenersTaken bool      // Listeners has taken the inherited sockets
	deadline       time.Time // drain deadline sent by the master, if any

	// connMu guards the IPC connection. It is held across the hello
	// exchange, so it is not mu: a drain signal must not wait for that.
	connMu   sync.Mutex
	conn     *ipc.Conn // IPC connection to the master, once opened
	connDone bool      // the IPC connection has been attempted
	connErr  error     // why it could not be opened

	drain     chan struct{} // closed once when the worker must drain
	drainOnce sync.Once
}

func newProcess(lookup func(string) (string, bool)) *process {
	return &process{lookup: lookup, drain: make(chan struct{})}
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
