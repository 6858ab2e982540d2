package mastertest_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/master"
)

// The master in these tests starts the test binary itself as its workers:
// exec-worker mode first (master.DispatchExecWorker), then a helper
// selected by envHelper. The worker speaks the ipc protocol directly,
// since mastertest, like master, must not depend on package worker.

const (
	envHelper     = "CLUSTERD_TEST_HELPER"
	envWorkerMode = "CLUSTERD_TEST_WORKER_MODE"
)

var (
	helpers     = map[string]func() int{}
	usedHelpers sync.Map
)

func registerHelper(name string, f func() int) {
	if _, dup := helpers[name]; dup {
		panic("duplicate helper " + name)
	}
	helpers[name] = f
}

func TestMain(m *testing.M) {
	master.DispatchExecWorker()
	registerHelper("worker", helperWorker)
	if name := os.Getenv(envHelper); name != "" {
		f, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(f())
	}
	flag.Parse()
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" {
		for name := range helpers {
			if _, ok := usedHelpers.Load(name); !ok {
				fmt.Fprintf(os.Stderr, "helper %q was never used\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// workerEnv is the environment that makes a worker of the test binary in
// mode ("serve", "exit-on-connect" or "crash").
func workerEnv(mode string) []string {
	usedHelpers.Store("worker", true)
	return []string{envHelper + "=worker", envWorkerMode + "=" + mode}
}

// helperWorker is a worker as clusterd expects one. It takes its listener
// from fd 3 (LISTEN_FDS=1), says hello and ready over ipc, answers every
// connection with "pid P worker W generation G\n", and exits 0 on SIGTERM,
// on a drain message, or when the master goes away. Modes:
//
//	serve            the above
//	exit-on-connect  exits 1 at its first connection
//	crash            exits 1 before its hello
func helperWorker() int {
	mode := os.Getenv(envWorkerMode)
	if mode == "crash" {
		fmt.Fprintln(os.Stderr, "worker: crashing as asked")
		return 1
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 3
	}
	// Installed before ready, so a stop never finds the default action.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)

	env, ok, err := ipc.ParseEnv(os.LookupEnv)
	if err != nil {
		return fail(err)
	}
	if !ok {
		return fail(fmt.Errorf("no %s: not started by a master", ipc.EnvIPCFD))
	}
	if n := os.Getenv("LISTEN_FDS"); n != "1" {
		return fail(fmt.Errorf("LISTEN_FDS=%q, want 1", n))
	}
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		return fail(fmt.Errorf("LISTEN_PID=%s, want %d", pid, os.Getpid()))
	}
	lf := os.NewFile(3, "listener")
	ln, err := net.FileListener(lf)
	if err != nil {
		return fail(fmt.Errorf("listener fd 3: %w", err))
	}
	lf.Close() // ln holds a duplicate
	conn, err := ipc.NewConn(os.NewFile(uintptr(env.IPCFD), "ipc"), ipc.Options{})
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := conn.Handshake(ctx, ipc.Hello{PID: os.Getpid(), WorkerID: env.WorkerID, Generation: env.Generation}); err != nil {
		return fail(fmt.Errorf("handshake: %w", err))
	}

	var serving sync.WaitGroup
	serving.Add(1)
	go func() {
		defer serving.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at the stop
			}
			if mode == "exit-on-connect" {
				os.Exit(1)
			}
			fmt.Fprintf(c, "pid %d worker %d generation %d\n", os.Getpid(), env.WorkerID, env.Generation)
			c.Close()
		}
	}()

	ready, err := ipc.NewMessage(ipc.KindReady, ipc.Ready{Listeners: 1})
	if err != nil {
		return fail(err)
	}
	if err := conn.Send(ready); err != nil {
		return fail(fmt.Errorf("send ready: %w", err))
	}
	if err := conn.Flush(ctx); err != nil {
		return fail(fmt.Errorf("send ready: %w", err))
	}

	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			m, err := conn.Recv()
			if err != nil {
				return // the master went away, or the conn was closed
			}
			m.CloseFDs()
			if m.Kind == ipc.KindDrain {
				return
			}
		}
	}()
	select {
	case <-stop:
	case <-drained:
	}
	ln.Close()
	serving.Wait()
	return 0
}
