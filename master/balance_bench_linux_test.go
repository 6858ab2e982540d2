package master

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/clusterd/clusterd/ipc"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// BenchmarkHandOff measures the master's side of handing accepted
// connections to workers: picking a worker, queueing the descriptors in an
// ipc message (several per sendmsg), the writer's sendmsg, and the
// acknowledgements closing the master's copies. One op is one connection.
// The four "workers" are goroutines that read their end of the socketpair
// with raw recvmsg (so that they allocate nothing themselves) and
// acknowledge what they got through the report path; -benchmem shows the
// allocations of the master's path.
func BenchmarkHandOff(b *testing.B) {
	for _, mode := range []Balance{BalanceRoundRobin, BalanceLeastConn} {
		b.Run(mode.String(), func(b *testing.B) { benchHandOff(b, mode) })
	}
}

func benchHandOff(b *testing.B, mode Balance) {
	bal := newBalancer(mode, DefaultConnQueue, 0, hclog.NewNullLogger())
	var targets []*target
	var readers sync.WaitGroup
	var peers []*os.File
	for slot := range 4 {
		parent, child, err := ipc.Pair()
		if err != nil {
			b.Fatal(err)
		}
		conn, err := ipc.NewConn(parent, ipc.Options{})
		if err != nil {
			b.Fatal(err)
		}
		t := bal.newTarget(slot, 1000+slot, conn)
		t.listens.Store(1)
		targets = append(targets, t)
		peers = append(peers, child)
		readers.Go(func() { rawWorker(int(child.Fd()), t) })
		b.Cleanup(func() { conn.Close() })
	}
	bal.publish(targets)
	src, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(src)
	var (
		batch [acceptBatch]int
		picks [acceptBatch]*target
		group [acceptBatch]int
	)
	a := &accepter{b: bal, id: 0}
	const per = 16 // connections per wake-up
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += per {
		for !bal.retryHeld() {
			<-bal.wake
		}
		n := min(per, b.N-done)
		for i := range n {
			fd, err := unix.Dup(src)
			if err != nil {
				b.Fatal(err)
			}
			batch[i] = fd
		}
		a.handOut(batch[:n], picks[:n], group[:0])
	}
	b.StopTimer()
	for !bal.retryHeld() {
		<-bal.wake
	}
	var handed uint64
	for _, t := range targets {
		handed += t.handed.Load()
	}
	if handed != uint64(b.N) {
		b.Errorf("%d connections handed, want %d", handed, b.N)
	}
	for _, t := range targets {
		t.conn.Close()
	}
	for _, p := range peers {
		p.Close()
	}
	readers.Wait()
}

// rawWorker reads descriptors from fd until it fails, closes them, and
// acknowledges each read through t's report path.
func rawWorker(fd int, t *target) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*ipc.MaxFDsLimit))
	var iov unix.Iovec
	iov.Base = &buf[0]
	iov.SetLen(len(buf))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.Iovlen = 1
	var got atomic.Uint64
	for {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
		n, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || n == 0 {
			return
		}
		for off := 0; off+unix.SizeofCmsghdr <= int(msg.Controllen); {
			h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
			if h.Len < unix.SizeofCmsghdr {
				break
			}
			if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
				data := oob[off+unix.CmsgLen(0) : off+int(h.Len)]
				for i := 0; i+4 <= len(data); i += 4 {
					unix.Close(int(*(*int32)(unsafe.Pointer(&data[i]))))
					got.Add(1)
				}
			}
			off += unix.CmsgSpace(int(h.Len) - unix.CmsgLen(0))
		}
		v := got.Load()
		t.report(ipc.ConnReport{Received: v, Closed: v})
	}
}
