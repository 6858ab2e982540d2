// Package workertest runs one worker program the way clusterd does, for the
// tests of programs built on package worker, as net/http/httptest does for
// handlers.
//
// [Start] binds the listen addresses, starts the program with the sockets at
// fds 3, 4, … (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), its end of an IPC
// socketpair (CLUSTERD_IPC_FD), a slot and a generation, and plays the
// master's part on the IPC connection: it answers the worker's hello (asking
// for heartbeats with [Options].HeartbeatMS), notes its ready message,
// heartbeats and stats ([Worker.NextHeartbeat]), hands its user messages to
// [Worker.Messages], answers its requests with [Options].HandleRequest and
// its listen requests with a socket of its own ([Worker.Listened]), and sends
// it user messages, requests and a drain message on request ([Worker.Send],
// [Worker.Request], [Worker.Drain]). The test then
// talks to the worker through [Worker.Addr], and checks that it drains and
// exits as it should.
//
// The program is started through /bin/sh, which sets LISTEN_PID to its own
// pid and execs it, as clusterd's hidden exec-worker mode does. A test binary
// that runs itself as the worker (the helper-process pattern) passes
// os.Executable and an environment variable its TestMain dispatches on.
//
// The worker runs in its own process group and, on Linux, dies with the test
// (Pdeathsig). Test cleanup kills what is left of it, waits for it, and
// closes the sockets.
package workertest
