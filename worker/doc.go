// Package worker is the library a Go server links to run well under clusterd.
//
// # Processes
//
// clusterd's master binds the listening sockets, then starts N copies of a
// server command, the workers. Each worker is started through the master's
// hidden exec-worker mode, so by the time main runs it holds:
//
//   - its listening sockets at fds 3, 4, … described by LISTEN_FDS,
//     LISTEN_PID and LISTEN_FDNAMES (the systemd socket-activation protocol);
//   - one end of a unix socketpair to the master, at the fd named by
//     CLUSTERD_IPC_FD, speaking the framed msgpack protocol of package ipc;
//   - its slot number CLUSTERD_WORKER_ID (0..N-1, stable across restarts)
//     and generation CLUSTERD_WORKER_GEN (how many times the slot has been
//     filled);
//   - NOTIFY_SOCKET, when the master supervises readiness with sd_notify.
//
// Under --balance round-robin and least-conn it inherits no socket: the
// master accepts, and [Listeners] (or [Listen]) returns balanced listeners
// whose connections the master hands over the IPC connection.
//
// None of this is required: a program that uses this package also runs on
// its own (no LISTEN_FDS: [Listeners] returns nothing and the program binds
// its own address) or under systemd socket activation alone.
//
// # Lifecycle
//
// A worker takes its sockets with [Listeners], starts serving, and calls
// [Ready] once it can answer requests; under `clusterd run --ready ipc` the
// master counts a worker as started only then, and a rolling reload drains
// an old worker only once its replacement is ready.
//
// To leave, the master tells the worker to drain: over IPC (a drain message
// with a deadline; [Drain] is closed when it arrives) or with its stop
// signal, SIGTERM by default ([DrainOnSignal] turns that into the same
// notification, on request: this package installs no signal handler by
// itself). At the kill timeout the master SIGKILLs the worker's process group.
//
// # Draining an HTTP server
//
// [ServeHTTP] serves an [net/http.Server] and drains it without losing a
// request. The order matters, and [net/http.Server.Shutdown] alone gets it
// wrong: once Shutdown has begun, net/http drops, without a response, the
// request of a connection that was accepted before Shutdown but whose request
// it reads afterwards. Under a rolling reload at high connection rates that
// loses requests at every worker replacement. ServeHTTP instead
//
//  1. closes its listeners first, so the kernel hands new connections to the
//     other workers (the socket itself stays open in the master and in them);
//  2. keeps serving every connection it has accepted, answering each request
//     with "Connection: close" so keep-alive clients move elsewhere;
//  3. leaves open every connection without a request until its client sends
//     one (answered the same way), closes it, or lets it idle for a grace
//     counted from its last response: closing an idle keep-alive connection
//     races with a client reusing it at that instant, and a POST lost that
//     way is not retried. Just before it closes one, the drain checks that
//     no byte of a request has reached it;
//  4. calls Shutdown once no connection is left, bounded by the drain
//     deadline.
//
// # Process-wide state
//
// A process has one set of inherited fds and one master, so this package's
// functions act on process-wide state, created on first use: the IPC
// connection is opened once, and the inherited sockets can be taken once.
// All functions are safe for concurrent use.
package worker
