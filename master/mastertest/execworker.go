package mastertest

import "github.com/clusterd/clusterd/master"

// DispatchExecWorker is [master.DispatchExecWorker], kept so that test
// binaries written against mastertest keep working: call it first thing in
// TestMain.
//
// Deprecated: call master.DispatchExecWorker.
func DispatchExecWorker() { master.DispatchExecWorker() }
