package ipc

import (
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// The bodies of the protocol's own message kinds. They encode as msgpack maps with
// the lowercase keys of their tags, so that workers written in other languages can
// read and write them, and fields can be added without a version change (an
// unknown key is ignored, a missing one leaves the zero value).

// Hello is the body of [KindHello], the first message each end sends
// ([Conn.Handshake]).
type Hello struct {
	// Version is the sender's protocol version; 0 in [Conn.Handshake]'s argument
	// means [Version].
	Version int `msgpack:"version"`
	// PID is the sender's process id.
	PID int `msgpack:"pid"`
	// WorkerID is the worker's slot (from [EnvWorkerID]); -1 for the master.
	WorkerID int `msgpack:"worker_id"`
	// Generation is the worker's generation (from [EnvWorkerGen]); 0 for the master.
	Generation int `msgpack:"generation"`
	// HeartbeatMS, in the master's hello, is how often (milliseconds) the worker
	// should send a [KindHeartbeat] (with its [Stats] as a [KindStats] where it
	// has any); 0 asks for none. Workers leave it 0.
	HeartbeatMS int64 `msgpack:"heartbeat_ms,omitempty"`
	// Listeners, in the master's hello under --balance round-robin and
	// least-conn, are the master's own listeners (its --listen addresses and
	// activated sockets), in their order. A worker inherits no socket in
	// those modes; it asks for each of these with a [KindListenRequest] to
	// take its connections. Empty in the other modes, where the worker
	// inherits the sockets themselves, and in a worker's hello.
	Listeners []Listener `msgpack:"listeners,omitempty"`
	// Boot, in the master's hello, tells one image of the master from the next
	// (the time it started, in nanoseconds): a master that upgraded in place
	// keeps its pid but says hello with another Boot.
	Boot int64 `msgpack:"boot,omitempty"`
	// Pause, in a hello the master sends after the handshake, asks the worker to
	// hold everything it would send until the master's next hello: the master is
	// about to replace its own image (see [Conn.Hold]). The worker answers with
	// its hello, Paused set, as the last frame before the hold.
	Pause bool `msgpack:"pause,omitempty"`
	// Paused marks the worker's answer to a Pause.
	Paused bool `msgpack:"paused,omitempty"`
}

// Listener is one of the master's listeners, as its [Hello] names it.
type Listener struct {
	// Name is the listener's name as LISTEN_FDNAMES would carry it to a
	// worker that inherited the socket ("unknown" when it has none).
	Name string `msgpack:"name"`
	// Addr is the socket's bound address as a listen address
	// ("tcp://127.0.0.1:8080", "unix:///run/app.sock"), the Addr of a
	// [ListenRequest] for it.
	Addr string `msgpack:"addr"`
}

// Ready is the body of [KindReady]. It may be empty: the message itself is the news.
type Ready struct {
	// Listeners counts the listeners the worker serves on, for the master's log.
	Listeners int `msgpack:"listeners,omitempty"`
}

// Heartbeat is the body of [KindHeartbeat].
type Heartbeat struct {
	// Seq increases by one with every heartbeat of a sender.
	Seq uint64 `msgpack:"seq"`
}

// Drain is the body of [KindDrain]: stop accepting new work and finish what was
// accepted before Deadline; after it the master kills the worker.
type Drain struct {
	// Deadline is wall-clock time; master and worker share the host's clock.
	Deadline time.Time `msgpack:"deadline"`
}

// ListenRequest is the body of [KindListenRequest]: a worker asks for a listener,
// like Node's transparent listen() in a cluster worker. The master answers with a
// [KindListenReply] carrying the socket, or a [KindError].
type ListenRequest struct {
	// Addr is a listen address in the syntax of sockshare.ParseSpec
	// ("tcp://:8080", "unix:///run/app.sock", ...).
	Addr string `msgpack:"addr"`
}

// ListenReply is the body of [KindListenReply]; the listening socket is the
// message's only descriptor, owned by the receiver, unless Balanced is set.
type ListenReply struct {
	// Addr is the address the socket is bound to (the chosen port for port 0).
	Addr string `msgpack:"addr"`
	// Balanced says that the master keeps the socket and balances its
	// connections over the workers (--balance round-robin or least-conn): the
	// reply carries no descriptor, and the address's accepted connections
	// arrive as [KindConn] messages whose body is ID.
	Balanced bool `msgpack:"balanced,omitempty"`
	// ID names the balanced listener in [KindConn] messages (0..63).
	ID int `msgpack:"id,omitempty"`
}

// ConnReport is the body of a [KindConn] message from a worker that carries
// no descriptor: running totals since the worker started (never
// differences), so a report that is lost or late is made good by the next.
// A worker sends one whenever either changes (coalesced: one report may
// cover many changes).
type ConnReport struct {
	// Received counts the connections the worker has received in KindConn
	// messages, in the order the master sent them. The master closes its
	// copy of a connection once Received covers it; until then a connection
	// whose worker dies goes to another worker.
	Received uint64 `msgpack:"received"`
	// Closed counts the connections the worker is done with: closed by the
	// program, or sent back to the master. Received minus Closed is what
	// least-conn balancing counts as the worker's open connections.
	Closed uint64 `msgpack:"closed"`
}

// Job is the body of [KindJob]: a unit of work from the master's Dispatch
// (to a worker) or from a worker's Submit (to the master, as a request the
// master answers when another worker has done the job).
type Job struct {
	// Attempt is 1 for the first delivery and counts up with every
	// redelivery after the job lost its worker (0 in a worker's Submit).
	Attempt int `msgpack:"attempt"`
	// Body is the job itself, one msgpack value the application defines.
	Body msgpack.RawMessage `msgpack:"body"`
}

// Stats is the body of [KindStats]: counters a worker reports, by name
// (lowercase snake_case, e.g. "requests", "open_conns").
type Stats struct {
	Counters map[string]int64 `msgpack:"counters"`
}

// Error is the body of [KindError]. Code is a short stable lowercase identifier the
// receiver branches on (see the Code constants); Text is for humans.
// [Conn.Call] turns it into a [*RemoteError].
type Error struct {
	// Code is the identifier to branch on, such as [CodeBadRequest].
	Code string `msgpack:"code"`
	// Text describes the failure for a log.
	Text string `msgpack:"text"`
}

// Error codes of the protocol's own failures. Applications may define their own.
const (
	// CodeBadRequest means the request's body could not be decoded or is invalid.
	CodeBadRequest = "bad_request"
	// CodeUnsupported means the receiver does not handle this kind of request.
	CodeUnsupported = "unsupported"
	// CodeListen means the master could not create the requested listener.
	CodeListen = "listen_failed"
	// CodeInternal means the receiver failed for a reason of its own.
	CodeInternal = "internal"
	// CodeForbidden means the master refuses the request (for example a listen
	// address it does not allow workers to open).
	CodeForbidden = "forbidden"
	// CodeLimit means the request would pass a limit of the receiver (for
	// example the number of listeners workers may ask for).
	CodeLimit = "limit"
	// CodeGone means the request's target went away before it answered (a
	// worker that exited with a request outstanding).
	CodeGone = "gone"
)
