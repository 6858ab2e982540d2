package ipc

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Helper processes: the test binary re-executes itself with CLUSTERD_TEST_HELPER
// naming a helper, which gets its IPC end at fd 3 (CLUSTERD_IPC_FD) and any
// further files after it.

const (
	envTestHelper = "CLUSTERD_TEST_HELPER"
	// envTestSpin passes Options.SpinWait to a helper.
	envTestSpin = "CLUSTERD_TEST_SPIN_WAIT"
)

type helper struct {
	run       func() int
	benchOnly bool // used by benchmarks only: not required in a test run
}

var (
	helpers   = map[string]helper{}
	helpersMu sync.Mutex
	usedHelp  = map[string]bool{}
)

func registerHelper(name string, benchOnly bool, run func() int) {
	if _, dup := helpers[name]; dup {
		panic("ipc test: helper " + name + " registered twice")
	}
	helpers[name] = helper{run: run, benchOnly: benchOnly}
}

func TestMain(m *testing.M) {
	registerHelper("echo", false, helperEcho)
	registerHelper("halfframe", false, helperHalfFrame)
	registerHelper("sink", true, helperSink)
	if name := os.Getenv(envTestHelper); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "ipc test: unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h.run())
	}
	flag.Parse()
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" && !testing.Short() {
		var unused []string
		for name, h := range helpers {
			if !h.benchOnly && !usedHelp[name] {
				unused = append(unused, name)
			}
		}
		sort.Strings(unused)
		if len(unused) > 0 {
			fmt.Fprintf(os.Stderr, "ipc test: helpers never used: %v\n", unused)
			code = 1
		}
	}
	os.Exit(code)
}

// helperConn opens the IPC end a helper inherited.
func helperConn() (*Conn, error) {
	env, ok, err := ParseEnv(os.LookupEnv)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s not set", EnvIPCFD)
	}
	var opts Options
	if s := os.Getenv(envTestSpin); s != "" {
		if opts.SpinWait, err = time.ParseDuration(s); err != nil {
			return nil, err
		}
	}
	return NewConn(os.NewFile(uintptr(env.IPCFD), "ipc"), opts)
}

// child is a started helper process.
type child struct {
	cmd    *exec.Cmd
	conn   *Conn
	stderr *bytes.Buffer
	waited chan error
}

// startHelper starts helper name with the parent's end of a fresh pair as a Conn
// made with opts (the helper uses the same SpinWait), extra files at fds 4, 5,
// ... and a cleanup that closes the connection, waits for the child (which exits
// at end of stream) and kills its process group if it does not exit in time.
func startHelper(t testing.TB, name string, opts Options, extra ...*os.File) *child {
	t.Helper()
	helpersMu.Lock()
	usedHelp[name] = true
	helpersMu.Unlock()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent, end, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envTestHelper+"="+name,
		EnvIPCFD+"=3", EnvWorkerID+"=7", EnvWorkerGen+"=2", envTestSpin+"="+opts.SpinWait.String())
	cmd.ExtraFiles = append([]*os.File{end}, extra...)
	c := &child{cmd: cmd, stderr: new(bytes.Buffer), waited: make(chan error, 1)}
	cmd.Stderr = c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		parent.Close()
		end.Close()
		t.Fatalf("start helper %s: %v", name, err)
	}
	go func() { c.waited <- cmd.Wait() }()
	end.Close()
	conn, err := NewConn(parent, opts)
	if err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-c.waited
		t.Fatal(err)
	}
	c.conn = conn
	t.Cleanup(func() {
		conn.Close()
		// The child exits at end of stream; give it until the test's own
		// deadline (at most ten seconds) before killing it.
		wait := 10 * time.Second
		if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
			if dl, ok := d.Deadline(); ok {
				wait = min(wait, max(time.Until(dl)/2, time.Second))
			}
		}
		grace := time.NewTimer(wait)
		defer grace.Stop()
		select {
		case err := <-c.waited:
			if err != nil {
				t.Errorf("helper %s: %v; stderr:\n%s", name, err, c.stderr)
			}
		case <-grace.C:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-c.waited
			t.Errorf("helper %s outlived its connection; killed; stderr:\n%s", name, c.stderr)
		}
	})
	return c
}

// helperEcho: handshake, then answer requests. A request with body "pipe" gets a
// reply carrying the read end of a new pipe holding "from <pid>"; any other
// request is echoed back with its body and descriptors. KindUser messages are
// counted; a KindStats request gets the count. Exits at end of stream.
func helperEcho() int {
	c, err := helperConn()
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	defer c.Close()
	env, _, _ := ParseEnv(os.LookupEnv)
	if _, err := c.Handshake(context.Background(), Hello{PID: os.Getpid(), WorkerID: env.WorkerID, Generation: env.Generation}); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	var users int64
	for {
		m, err := c.Recv()
		if err != nil {
			if err == io.EOF {
				return 0
			}
			fmt.Fprintln(os.Stderr, "echo: recv:", err)
			return 1
		}
		var r *Message
		switch m.Kind {
		case KindUser:
			users++
			_ = m.CloseFDs()
			continue
		case KindStats:
			r, err = m.Reply(KindStats, &Stats{Counters: map[string]int64{"user": users}})
		case KindRequest:
			var cmd string
			if m.Decode(&cmd) == nil && cmd == "pipe" {
				r, err = pipeReply(m)
			} else {
				r = &Message{Kind: KindResponse, ReplyTo: m.ID, Body: m.Body, FDs: m.FDs}
			}
		default:
			r, err = m.Reply(KindError, &Error{Code: CodeUnsupported, Text: m.Kind.String()})
		}
		if err == nil {
			err = c.Send(r)
		}
		_ = m.CloseFDs()
		for _, f := range r.FDs {
			f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo: send:", err)
			return 1
		}
	}
}

func pipeReply(m *Message) (*Message, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pw.Close()
	if _, err := pw.WriteString("from " + strconv.Itoa(os.Getpid())); err != nil {
		pr.Close()
		return nil, err
	}
	r, err := m.Reply(KindResponse, "pipe")
	if err != nil {
		pr.Close()
		return nil, err
	}
	r.FDs = []*os.File{pr}
	return r, nil
}
