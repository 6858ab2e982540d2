// Package mastertest runs a clusterd master inside a test binary, for the
// tests of programs that link package master as a library, as
// net/http/httptest does for handlers.
//
// # Model
//
// [Start] takes the [master.Options] a program would pass to [master.New],
// adjusts them for a test, and runs [master.Master.Run] in a goroutine of the
// test process. The master starts its workers as real child processes, each
// through the test binary's own exec-worker mode, so the test binary's
// TestMain must call [master.DispatchExecWorker] first:
//
//	func TestMain(m *testing.M) {
//		master.DispatchExecWorker()
//		os.Exit(m.Run())
//	}
//
// Start returns once the master is listening and every initial worker is
// ready. The test talks to the workers through [Cluster.Addr], drives the
// master with its command methods ([Cluster.Master]: Reload, Scale,
// Workers, Send, Request, ...) or with [Cluster.Signal] (HUP reloads, TERM
// stops, TTIN adds a worker, ...), and waits for what the master did with
// [Cluster.WaitEvent]: the master's events (fork, online, ready,
// disconnect, exit, reload), recorded from its start, are what a test
// synchronises on. The log stays for people: [Cluster.Logs] and
// [Cluster.WaitLog] read it, and a failed test prints it.
//
// # What Start changes in Options
//
//   - Subreaper is forced off (the default): the master waits for its own
//     workers by pid and never calls wait4(-1), which would steal the exit
//     status of every other child the test binary waits for (and must not
//     become a child subreaper of the test process).
//   - Signals belongs to the [Cluster]; it must be nil. [Cluster.Signal]
//     sends on it, so the test binary's own signal handling is untouched.
//   - Logger belongs to the Cluster; it must be nil. The master logs JSON at
//     Debug level into a buffer that [Cluster.Logs] and [Cluster.WaitLog]
//     read; when the test fails, the cleanup prints it.
//   - Stdout and Stderr nil discard the workers' output (master's default
//     would be the test binary's own stdout and stderr).
//   - Listen nil, with no Activated sockets, means one "tcp://127.0.0.1:0".
//
// Everything else, such as Command, Workers, Ready or KillTimeout, keeps
// the meaning and defaults package master documents.
//
// # Lifetime
//
// The master stops gracefully (as on SIGTERM: every worker is drained, and
// killed after KillTimeout) when the test calls [Cluster.Stop], when it
// sends a stop signal, or at the latest in the test's cleanup. The cleanup
// checks that Run returned, and fails the test if Run does not return in
// time or returned an error the test did not collect through
// [Cluster.Stop] or [Cluster.Wait].
//
// # Deadlines
//
// Waits take no context: their failure deadline derives from the test's
// own deadline (t.Deadline, set by go test -timeout), ending a little
// before it so the failure and the master's log are reported rather than
// lost in the test binary's timeout panic. Without a test deadline (a
// benchmark, or -timeout 0) the bound is [NoDeadlineWait]. Nothing sleeps:
// every wait ends on the event it waits for.
//
// # Pitfalls
//
// The master's workers are children of the test binary. Tests that check
// that no child process remains must do so after [Cluster.Stop]. A test
// that runs its own master in another process (the helper-process pattern)
// does not need this package.
//
// Package master, and so this package, works on Linux only.
package mastertest
