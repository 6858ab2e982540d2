package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/sockshare"
)

// socket is the Conn's unix stream socket. Reads and writes go through the raw
// descriptor (sendmsg/recvmsg) under the runtime's poller, so that every write
// can carry SCM_RIGHTS and every read can receive it.
type socket struct {
	uc *net.UnixConn
	rc syscall.RawConn

	// The arguments and results of the sendmsg and recvmsg calls, and the
	// functions handed to rc that make them, built once in newSocket: a closure
	// made at each call would cost a heap allocation for itself and for every
	// variable it shares, on every read and write. write is called by the
	// Conn's writer goroutine only and read by its reader only, so each half
	// has one user at a time.
	w       sendmsgCall
	r       recvmsgCall
	sendmsg func(fd uintptr) bool
	recvmsg func(fd uintptr) bool
}

// sendmsgCall is one sendmsg(2) of [socket.write].
type sendmsgCall struct {
	p, oob []byte
	n      int
	err    error
}

func (c *sendmsgCall) call(fd uintptr) bool {
	c.n, c.err = unix.SendmsgN(int(fd), c.p, c.oob, nil, unix.MSG_NOSIGNAL)
	return c.err != unix.EAGAIN
}

// recvmsgCall is one recvmsg(2) of [socket.read], polling for up to spin before
// it lets the poller sleep.
type recvmsgCall struct {
	p, oob         []byte
	n, oobn, flags int
	err            error
	spin           time.Duration // Options.SpinWait
	spinStart      time.Time
}

func (c *recvmsgCall) call(fd uintptr) bool {
	for {
		c.n, c.oobn, c.flags, _, c.err = unix.Recvmsg(int(fd), c.p, c.oob, sockshare.RecvmsgFlags)
		if c.err != unix.EAGAIN {
			return true
		}
		// The socket ran dry. With SpinWait, poll it a little longer before
		// sleeping in the poller:
		// a sleeping thread, on an idle (virtual) CPU above all, takes tens of
		// microseconds to wake, which would dominate the round trip of a
		// request whose reply is a few microseconds away.
		if c.spin <= 0 {
			return false
		}
		if c.spinStart.IsZero() {
			c.spinStart = time.Now()
		} else if time.Since(c.spinStart) > c.spin {
			return false
		}
		// Let this process's goroutines run between polls (the one the last
		// message went to, above all). The thread keeps its CPU: yielding that
		// too (sched_yield) was measured to lose it to any busy process for a
		// whole time slice, milliseconds (docs/BENCHMARKS.md).
		runtime.Gosched()
	}
}

// newSocket duplicates f into a close-on-exec, non-blocking socket registered
// with the runtime poller, and closes f. spin is Options.SpinWait.
func newSocket(f *os.File, spin time.Duration) (*socket, error) {
	name := f.Name()
	nc, err := net.FileConn(f)
	// f is ours (NewConn took it); its duplicate, if any, is what we keep.
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		if nc != nil {
			_ = nc.Close() // the error above is the news
		}
		return nil, fmt.Errorf("ipc: new conn %s: %w", name, err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		_ = nc.Close() // wrong kind of socket; the error says so
		return nil, fmt.Errorf("ipc: new conn %s: not a unix socket", name)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		_ = uc.Close() // the error above is the news
		return nil, fmt.Errorf("ipc: new conn %s: %w", name, err)
	}
	var typ int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	}); err != nil {
		serr = err
	}
	if serr == nil && typ != unix.SOCK_STREAM {
		serr = errors.New("not a stream socket")
	}
	if serr != nil {
		_ = uc.Close() // the error above is the news
		return nil, fmt.Errorf("ipc: new conn %s: %w", name, os.NewSyscallError("getsockopt SO_TYPE", serr))
	}
	s := &socket{uc: uc, rc: rc, r: recvmsgCall{spin: spin}}
	s.sendmsg, s.recvmsg = s.w.call, s.r.call
	return s, nil
}

// write writes all of p; oob (SCM_RIGHTS) goes with the first sendmsg, so on the
// first byte of p. MSG_NOSIGNAL: a dead peer is an EPIPE error, not a signal. It
// returns the number of sendmsg calls that wrote data.
func (s *socket) write(p, oob []byte) (calls int, err error) {
	w := &s.w
	defer func() { w.p, w.oob = nil, nil }() // hold no buffer between writes
	for len(p) > 0 {
		w.p, w.oob = p, oob
		err = s.rc.Write(s.sendmsg)
		if err == nil {
			err = w.err
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return calls, os.NewSyscallError("sendmsg", err)
		}
		calls++
		p = p[w.n:]
		oob = nil
	}
	return calls, nil
}

// read reads into p with recvmsg and returns the descriptors that came with the
// data (close-on-exec, owned by the caller). End of stream is io.EOF. On an error
// no descriptor is returned open; when the kernel truncated the descriptors
// (MSG_CTRUNC) the error wraps ErrTooManyFDs and n still counts the data read.
func (s *socket) read(p, oob []byte) (int, []int, error) {
	r := &s.r
	r.p, r.oob = p, oob
	defer func() { r.p, r.oob = nil, nil }() // hold no buffer between reads
	for {
		r.spinStart = time.Time{}
		err := s.rc.Read(s.recvmsg)
		if err == nil {
			err = r.err
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, nil, fmt.Errorf("ipc: read: %w", os.NewSyscallError("recvmsg", err))
		}
		n, oobn, flags := r.n, r.oobn, r.flags
		var fds []int
		if oobn > 0 || flags&unix.MSG_CTRUNC != 0 {
			fds, err = sockshare.ParseRecvRights(oob[:oobn], flags)
			if err != nil {
				if errors.Is(err, sockshare.ErrControlTruncated) {
					return n, nil, fmt.Errorf("%w: read: %w", ErrTooManyFDs, err)
				}
				return 0, nil, fmt.Errorf("ipc: read: %w", err)
			}
		}
		if n == 0 && len(fds) == 0 {
			return 0, nil, io.EOF
		}
		return n, fds, nil
	}
}

func (s *socket) close() error { return s.uc.Close() }

// setReadDeadline bounds the reads that follow (the zero time: no bound); a
// read past it fails with an error wrapping os.ErrDeadlineExceeded.
func (s *socket) setReadDeadline(t time.Time) error { return s.uc.SetReadDeadline(t) }

// dupFiles duplicates the descriptors of files (F_DUPFD_CLOEXEC, through
// SyscallConn so that their blocking mode is left alone). On error it closes the
// duplicates made so far.
func dupFiles(files []*os.File) ([]int, error) {
	fds := make([]int, 0, len(files))
	for i, f := range files {
		if f == nil {
			closeRawFDs(fds)
			return nil, fmt.Errorf("descriptor %d is a nil file", i)
		}
		rc, err := f.SyscallConn()
		if err != nil {
			closeRawFDs(fds)
			return nil, fmt.Errorf("descriptor %d (%s): %w", i, f.Name(), err)
		}
		var dup int
		var derr error
		if err := rc.Control(func(fd uintptr) {
			dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}); err != nil {
			derr = err
		}
		if derr != nil {
			closeRawFDs(fds)
			return nil, fmt.Errorf("descriptor %d (%s): %w", i, f.Name(), os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr))
		}
		fds = append(fds, dup)
	}
	return fds, nil
}

// closeRawFDs closes descriptors the package owns and gives up on.
// dupRawFDs appends close-on-exec duplicates of fds to dst. On an error it
// closes the duplicates it made and returns dst as it was.
func dupRawFDs(dst, fds []int) ([]int, error) {
	n := len(dst)
	for _, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeRawFDs(dst[n:])
			return dst[:n], fmt.Errorf("dup descriptor %d: %w", fd, os.NewSyscallError("fcntl", err))
		}
		dst = append(dst, d)
	}
	return dst, nil
}

// appendRights appends to b an SCM_RIGHTS control message carrying fds (as
// unix.UnixRights builds it, into a buffer the caller reuses).
func appendRights(b []byte, fds []int) []byte {
	if len(fds) == 0 {
		return b
	}
	datalen := len(fds) * 4
	start := len(b)
	b = append(b, make([]byte, unix.CmsgSpace(datalen))...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[start]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(datalen))
	data := b[start+unix.CmsgLen(0):]
	for i, fd := range fds {
		binary.NativeEndian.PutUint32(data[4*i:], uint32(fd))
	}
	return b
}

func closeRawFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd) // a descriptor we drop; a close error has nobody to go to
	}
}

// newFiles wraps received descriptors as files named "fd N".
func newFiles(fds []int) []*os.File {
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "fd "+strconv.Itoa(fd))
	}
	return files
}

// Pair returns the two ends of a new connected unix stream socketpair
// (SOCK_CLOEXEC, blocking mode), for a parent and the child it starts: pass
// parent to [NewConn], and child to the child process (for instance in
// exec.Cmd.ExtraFiles, with its number in [EnvIPCFD]), then close child in the
// parent. The caller owns both files.
func Pair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ipc: pair: %w", os.NewSyscallError("socketpair", err))
	}
	return os.NewFile(uintptr(fds[0]), "ipc parent"), os.NewFile(uintptr(fds[1]), "ipc child"), nil
}

// fd returns the socket's descriptor number, leaving its mode as it is.
func (s *socket) fd() (int, error) {
	fd := -1
	if err := s.rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}
