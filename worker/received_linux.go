package worker

import (
	"net"

	"golang.org/x/sys/unix"
)

// received reports how many bytes TCP connection c has received in all
// (TCP_INFO's tcpi_bytes_received, Linux 4.1) and whether some of them wait
// unread in its receive queue (SIOCINQ). Together they tell the drain whether
// a request has reached a connection that net/http still reports idle: it
// may sit in the kernel, or net/http may be reading it. known is false for a
// connection that is not TCP or whose fd cannot be queried.
func received(c net.Conn) (n uint64, pending, known bool) {
	if hc, ok := c.(*handedConn); ok {
		c = hc.Conn // a balanced listener's: the TCP connection it wraps
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, false, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, false, false
	}
	var qerr error
	err = rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, qerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if qerr != nil {
			return
		}
		var inq int
		inq, qerr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		n, pending = info.Bytes_received, inq > 0
	})
	if err != nil || qerr != nil {
		return 0, false, false
	}
	return n, pending, true
}
