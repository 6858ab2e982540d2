//go:build faults

package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/worker"
)

// The fault suite's helpers: workers that misbehave on purpose, and the
// clusterd command under a low fd limit. Registered like exec_test.go's
// registerHelperCommand calls, from init, only in the faults build.
func init() {
	for name, h := range map[string]func([]string) int{
		"hostile":         hostileHelper,
		"clusterd-nofds":  clusterdNoFDsHelper,
		"clusterd-stdout": clusterdStdoutHelper,
	} {
		if _, dup := helpers[name]; dup {
			panic("duplicate test helper " + name)
		}
		helpers[name] = h
	}
}

// clusterdNoFDsHelper runs the clusterd command with RLIMIT_NOFILE set to
// $FAULT_NOFILE, so the master runs out of descriptors.
func clusterdNoFDsHelper(args []string) int {
	n, err := strconv.ParseUint(os.Getenv("FAULT_NOFILE"), 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "clusterd-nofds helper: FAULT_NOFILE: %v\n", err)
		return exitExecFailed
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
		fmt.Fprintf(os.Stderr, "clusterd-nofds helper: setrlimit: %v\n", err)
		return exitExecFailed
	}
	return helpers["clusterd"](args)
}

// clusterdStdoutHelper runs the clusterd command with its stdout moved to
// the fd 3 it inherited (a pipe the test never reads).
func clusterdStdoutHelper(args []string) int {
	if err := unix.Dup3(3, 1, 0); err != nil {
		fmt.Fprintf(os.Stderr, "clusterd-stdout helper: dup3: %v\n", err)
		return exitExecFailed
	}
	unix.Close(3)
	return helpers["clusterd"](args)
}

// hostileHelper misbehaves in the way its first argument names, in slot 0
// only (and, where said, only in some generations); every other worker is
// workerHelper with the remaining arguments.
//
//	grandkids   every worker starts two `sleep 600`, one of them in its own
//	            session, then serves
//	forkbomb    slot 0, generation 1: starts 200 grandchildren (100 that exit
//	            at once, 100 `sleep 600`, a third of those in their own
//	            session), prints "forked 200 sleeps=PID,..." and exits 0
//	closer      slot 0: says ready, closes every inherited listener, prints
//	            "closed listeners" and waits for SIGTERM
//	spew        slot 0: says ready, then writes about 100 MB/s of lines to
//	            stdout and stderr together until SIGTERM
//	notifyflood slot 0: floods $NOTIFY_SOCKET with junk and with READY=1 for
//	            other pids, never waiting for room, prints "flood done sent=N
//	            dropped=M", then says READY=1 itself
//	            and waits; slot 1: opens $FAULT_FIFO (blocks until the test
//	            opens it), then says READY=1 and waits
//	ipcgarbage  slot 0, generation 1: writes a 64 KiB frame of garbage to its IPC fd;
//	            generation 2: a frame header announcing 1 GiB; both then wait
func hostileHelper(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "hostile helper: no mode")
		return 2
	}
	mode, rest := args[0], args[1:]
	id, _ := worker.ID()
	gen := worker.Generation()
	switch {
	case mode == "grandkids":
		for i := range 2 {
			if err := startSleep(i == 1); err != nil {
				fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
				return 1
			}
		}
	case mode == "forkbomb" && id == 0 && gen == 1:
		return forkBomb()
	case mode == "closer" && id == 0:
		return closeListeners()
	case mode == "spew" && id == 0:
		return spew()
	case mode == "notifyflood" && id == 0:
		return notifyFlood()
	case mode == "notifyflood" && id == 1:
		return notifyLate()
	case mode == "ipcgarbage" && id == 0 && (gen == 1 || gen == 2):
		return ipcGarbage(gen)
	}
	return workerHelper(rest)
}

func startSleep(newSession bool) error {
	cmd := exec.Command("/bin/sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: newSession}
	return cmd.Start() // never waited for: the master must reap it
}

func forkBomb() int {
	var sleeps []string
	for i := range 200 {
		var cmd *exec.Cmd
		if i%2 == 0 {
			cmd = exec.Command("/bin/true")
		} else {
			cmd = exec.Command("/bin/sleep", "600")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: i%3 == 0}
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "hostile helper: fork %d: %v\n", i, err)
			return 1
		}
		if i%2 == 1 {
			sleeps = append(sleeps, strconv.Itoa(cmd.Process.Pid))
		}
	}
	fmt.Printf("forked 200 sleeps=%s\n", strings.Join(sleeps, ","))
	return 0
}

// waitTerm blocks until SIGTERM or SIGINT.
func waitTerm() int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

func closeListeners() int {
	lns, err := worker.Listeners()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	if err := worker.Ready(); err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	for _, ln := range lns {
		ln.Close()
	}
	// Whatever of the inherited fds 3.. the library did not take.
	for fd := 3; fd < 3+len(lns); fd++ {
		unix.Close(fd)
	}
	fmt.Println("closed listeners")
	return waitTerm()
}

func spew() int {
	if _, err := worker.Listeners(); err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	if err := worker.Ready(); err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	line := strings.Repeat("x", 99) + "\n"
	chunk := []byte(strings.Repeat(line, 5000)) // 500 kB
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// 100 MB/s: a chunk to each stream every 10 ms, or as fast as the
	// pipes take them.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return 0
		case <-tick.C:
		}
		os.Stdout.Write(chunk)
		os.Stderr.Write(chunk)
	}
}

// notifySender sends datagrams to $NOTIFY_SOCKET without ever blocking:
// a flood that finds the socket full counts the datagram as dropped, as
// a sender that must not stall would.
type notifySender struct {
	fd   int
	addr *unix.SockaddrUnix
}

func newNotifySender() (*notifySender, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, fmt.Errorf("no NOTIFY_SOCKET")
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	return &notifySender{fd: fd, addr: &unix.SockaddrUnix{Name: path}}, nil
}

// send reports whether the datagram was sent; flags MSG_DONTWAIT for the
// flood, 0 for the datagram that must arrive.
func (n *notifySender) send(msg []byte, flags int) error {
	return unix.Sendto(n.fd, msg, flags, n.addr)
}

func (n *notifySender) close() { unix.Close(n.fd) }

func notifyFlood() int {
	ns, err := newNotifySender()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	defer ns.close()
	// Others: every other process of this test's cluster, and the master.
	mark := os.Getenv("CLUSTERD_TEST_MARK")
	var others []int
	for _, pid := range markedPIDs(mark) {
		if pid != os.Getpid() {
			others = append(others, pid)
		}
	}
	others = append(others, os.Getppid(), 1)
	junk := make([]byte, 60_000)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	sent, dropped := 0, 0
	for i := range 20000 {
		var msg []byte
		switch i % 5 {
		case 0:
			msg = junk[:i%len(junk)]
		case 1:
			msg = junk // oversized for any state line
		case 2:
			msg = fmt.Appendf(nil, "READY=1\nMAINPID=%d\n", others[i%len(others)])
		case 3:
			msg = []byte("READY=1\x00MAINPID=1")
		case 4:
			msg = []byte("=\n==\nREADY\nREADY=\nREADY=2\nWATCHDOG=trigger\nSTATUS=" + strings.Repeat("s", 4000))
		}
		if ns.send(msg, unix.MSG_DONTWAIT) == nil {
			sent++
		} else {
			dropped++ // the socket is full: a flood does not wait
		}
	}
	fmt.Printf("flood done sent=%d dropped=%d\n", sent, dropped)
	if err := ns.send([]byte("READY=1"), 0); err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	return waitTerm()
}

func notifyLate() int {
	f, err := os.OpenFile(os.Getenv("FAULT_FIFO"), os.O_RDONLY, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	io.Copy(io.Discard, f) // until the test closes its end
	f.Close()
	ns, err := newNotifySender()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	defer ns.close()
	if err := ns.send([]byte("READY=1"), 0); err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %v\n", err)
		return 1
	}
	fmt.Printf("late ready pid=%d\n", os.Getpid())
	return waitTerm()
}

func ipcGarbage(gen int) int {
	fd, err := strconv.Atoi(os.Getenv(ipc.EnvIPCFD))
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostile helper: %s: %v\n", ipc.EnvIPCFD, err)
		return 1
	}
	f := os.NewFile(uintptr(fd), "ipc")
	w := bufio.NewWriter(f)
	if gen == 1 {
		// A frame of a plausible length whose envelope is not msgpack.
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], 1<<16)
		w.Write(hdr[:])
		for i := range 1 << 16 {
			w.WriteByte(byte(i*31 + 0xc1)) // 0xc1 is never used in msgpack
		}
	} else {
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], 1<<30)
		w.Write(hdr[:])
		w.Write(make([]byte, 1<<16))
	}
	w.Flush() // an error here means the master closed it: fine
	fmt.Printf("garbage sent gen=%d\n", gen)
	return waitTerm()
}
