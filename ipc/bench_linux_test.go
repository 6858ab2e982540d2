package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Benchmarks between two processes: the test binary and its "sink" helper. Run:
//
//	go test -run '^$' -bench . -benchtime 2s ./ipc
//
// See docs/BENCHMARKS.md for figures.

// benchBody is a 64-byte msgpack body: a bin8 of 62 bytes.
func benchBody() []byte {
	body := make([]byte, 64)
	body[0], body[1] = 0xc4, 62
	for i := 2; i < len(body); i++ {
		body[i] = byte(i)
	}
	return body
}

// sinkCounts is the helper's answer to a KindStats request: "user" and "fds"
// count what it received, "received" and "reads" are its Conn's counters.
func sinkCounts(tb testing.TB, c *Conn) map[string]int64 {
	tb.Helper()
	r, err := c.Call(context.Background(), &Message{Kind: KindStats})
	if err != nil {
		tb.Fatalf("stats call: %v", err)
	}
	var s Stats
	if err := r.Decode(&s); err != nil {
		tb.Fatal(err)
	}
	return s.Counters
}

func startSink(b *testing.B, opts Options, extra ...*os.File) *Conn {
	c := startHelper(b, "sink", opts, extra...)
	if _, err := c.conn.Handshake(context.Background(), Hello{PID: os.Getpid(), WorkerID: -1}); err != nil {
		b.Fatal(err)
	}
	return c.conn
}

// BenchmarkOneWay sends 64-byte messages to another process as fast as Send
// takes them and reports the rate at which they arrive (msgs/s, measured until
// the child confirms the count), then writes the same frame bytes over a bare
// socketpair to the same child, once with one write(2) per message and once in
// 64 KiB writes, and reports those rates and the ratios.
func BenchmarkOneWay(b *testing.B) {
	rawParent, rawChild, err := Pair()
	if err != nil {
		b.Fatal(err)
	}
	defer rawParent.Close()
	c := startSink(b, Options{}, rawChild)
	rawChild.Close()

	m := &Message{Kind: KindUser, Body: benchBody()}
	var n int64
	before, childBefore := c.Counters(), sinkCounts(b, c)
	start := time.Now()
	for b.Loop() {
		if err := c.Send(m); err != nil {
			b.Fatal(err)
		}
		n++
	}
	childAfter := sinkCounts(b, c)
	elapsed := time.Since(start)
	after := c.Counters()
	if got := childAfter["user"]; got != n {
		b.Fatalf("child received %d messages, sent %d", got, n)
	}
	rate := float64(n) / elapsed.Seconds()
	b.ReportMetric(rate, "msgs/s")
	// How well the writes and reads were coalesced.
	b.ReportMetric(float64(after.Sent-before.Sent)/float64(after.Writes-before.Writes), "msgs/sendmsg")
	b.ReportMetric(float64(childAfter["received"]-childBefore["received"])/float64(childAfter["reads"]-childBefore["reads"]), "msgs/recvmsg")

	frame := appendFrame(nil, &envelope{kind: KindUser, body: m.Body})
	perMsg := rawRate(b, c, rawParent, frame, n, len(frame))
	bulk := rawRate(b, c, rawParent, frame, n, 64<<10)
	b.ReportMetric(perMsg, "raw-write-msgs/s")
	b.ReportMetric(bulk, "raw-bulk-msgs/s")
	b.ReportMetric(rate/perMsg, "ipc/raw-write")
	b.ReportMetric(rate/bulk, "ipc/raw-bulk")
}

// rawRate writes n copies of frame over raw in writes of chunk bytes, and returns
// the rate in frames per second until the child has read them all.
func rawRate(b *testing.B, c *Conn, raw *os.File, frame []byte, n int64, chunk int) float64 {
	b.Helper()
	total := n * int64(len(frame))
	job, err := NewMessage(KindJob, &sinkJob{Bytes: total})
	if err != nil {
		b.Fatal(err)
	}
	job.ID = uint64(chunk)
	buf := bytes.Repeat(frame, max(1, chunk/len(frame)))
	start := time.Now()
	if err := c.Send(job); err != nil {
		b.Fatal(err)
	}
	for left := total; left > 0; {
		p := buf
		if int64(len(p)) > left {
			p = p[:left]
		}
		k, err := raw.Write(p)
		if err != nil {
			b.Fatal(err)
		}
		left -= int64(k)
	}
	r, err := c.Recv()
	if err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	if r.Kind != KindResult {
		b.Fatalf("got %s, want result", r.Kind)
	}
	return float64(n) / elapsed.Seconds()
}

// BenchmarkRoundTrip measures Call latency to another process that answers at
// once, and reports the median and 99th percentile: with the default options,
// and with the reader polling for 50µs before it sleeps (Options.SpinWait). In
// the same run it measures what bounds them, 64-byte round trips over a bare
// socketpair to the same child with blocking read(2) and write(2): done by the
// waiting goroutine itself (raw-syscalls), and with a reader goroutine on each
// side handing every message to the goroutine that waits for it over a channel
// (raw-handoff), the least hand-over a Conn makes.
func BenchmarkRoundTrip(b *testing.B) {
	for _, spin := range []time.Duration{0, 50 * time.Microsecond} {
		name := "default"
		if spin > 0 {
			name = "spin=" + spin.String()
		}
		b.Run(name, func(b *testing.B) {
			c := startSink(b, Options{SpinWait: spin})
			req := &Message{Kind: KindRequest, Body: benchBody()}
			ctx := context.Background()
			lat := make([]time.Duration, 0, 1<<16)
			for b.Loop() {
				t0 := time.Now()
				r, err := c.Call(ctx, req)
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				if r.Kind != KindResponse {
					b.Fatalf("reply %s", r.Kind)
				}
			}
			reportLatency(b, lat)
		})
	}
	for _, echo := range []string{echoDirect, echoHandoff} {
		b.Run("raw-"+echo, func(b *testing.B) { benchRawRoundTrip(b, echo) })
	}
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "rtt-p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "rtt-p99-ns")
}

// Ways of answering on the bare socketpair (sinkJob.Echo).
const (
	echoDirect  = "syscalls" // one goroutine reads and writes
	echoHandoff = "handoff"  // a reader goroutine hands each message to a writer
)

// rawMsgSize is the size of a message on the bare socketpair.
const rawMsgSize = 64

// benchRawRoundTrip measures round trips of rawMsgSize bytes over a bare blocking
// socketpair to the sink, which answers in the way echo names, as this side does.
func benchRawRoundTrip(b *testing.B, echo string) {
	rawParent, rawChild, err := Pair()
	if err != nil {
		b.Fatal(err)
	}
	fd := int(rawParent.Fd())
	var replies <-chan []byte
	defer func() {
		// Shutting the socket down ends the reader goroutine's read and the
		// child's echo.
		_ = unix.Shutdown(fd, unix.SHUT_RDWR)
		if replies != nil {
			for range replies {
			}
		}
		rawParent.Close()
	}()
	c := startSink(b, Options{}, rawChild)
	rawChild.Close()
	job, err := NewMessage(KindJob, &sinkJob{Echo: echo})
	if err != nil {
		b.Fatal(err)
	}
	if r, err := c.Call(context.Background(), job); err != nil || r.Kind != KindResult {
		b.Fatalf("echo job: %v, %v", r, err)
	}
	if echo == echoHandoff {
		replies = rawReader(fd)
	}
	msg, in := make([]byte, rawMsgSize), make([]byte, rawMsgSize)
	lat := make([]time.Duration, 0, 1<<16)
	for b.Loop() {
		t0 := time.Now()
		if err := rawWriteAll(fd, msg); err != nil {
			b.Fatal(err)
		}
		if replies != nil {
			if _, ok := <-replies; !ok {
				b.Fatal("raw reader ended")
			}
		} else if err := rawReadFull(fd, in); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	reportLatency(b, lat)
}

// rawReader reads rawMsgSize-byte messages from the blocking descriptor fd and
// hands each one over on the returned channel, then yields the processor so that
// the goroutine it woke runs on this thread before this one blocks in read(2)
// again. The channel is closed at end of stream or at an error.
func rawReader(fd int) <-chan []byte {
	ch := make(chan []byte, 1)
	go func() {
		defer close(ch)
		for {
			p := make([]byte, rawMsgSize)
			if rawReadFull(fd, p) != nil {
				return
			}
			ch <- p
			runtime.Gosched()
		}
	}()
	return ch
}

// rawReadFull fills p from the blocking descriptor fd.
func rawReadFull(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Read(fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return io.EOF
		}
		p = p[n:]
	}
	return nil
}

// rawWriteAll writes p to the blocking descriptor fd.
func rawWriteAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// echoRaw answers every rawMsgSize bytes read from the blocking descriptor fd with
// the same bytes until end of stream, in the way echo names.
func echoRaw(fd int, echo string) {
	if echo == echoHandoff {
		for p := range rawReader(fd) {
			if rawWriteAll(fd, p) != nil {
				return
			}
		}
		return
	}
	p := make([]byte, rawMsgSize)
	for rawReadFull(fd, p) == nil && rawWriteAll(fd, p) == nil {
	}
}

// BenchmarkFDPassing sends messages carrying one descriptor each to another
// process, which closes them, and reports descriptors per second until the child
// confirms the count.
func BenchmarkFDPassing(b *testing.B) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	c := startSink(b, Options{})
	m := &Message{Kind: KindUser, FDs: []*os.File{f}}
	var n int64
	start := time.Now()
	for b.Loop() {
		if err := c.Send(m); err != nil {
			b.Fatal(err)
		}
		n++
	}
	got := sinkCounts(b, c)["fds"]
	elapsed := time.Since(start)
	if got != n {
		b.Fatalf("child received %d descriptors, sent %d", got, n)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "fds/s")
}

// sinkJob is the body of a KindJob to the sink: read Bytes bytes from the raw
// socket, or start answering on it as Echo names (echoDirect, echoHandoff).
type sinkJob struct {
	Bytes int64
	Echo  string
}

// helperSink counts KindUser messages and their descriptors (closing them),
// answers KindStats with the counts and KindRequest with an empty response, and
// for a KindJob ([sinkJob]) either reads its byte count from its raw socket (fd
// 4) or starts echoing on that socket, then answers with a KindResult.
func helperSink() int {
	c, err := helperConn()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sink:", err)
		return 1
	}
	defer c.Close()
	if _, err := c.Handshake(context.Background(), Hello{PID: os.Getpid()}); err != nil {
		fmt.Fprintln(os.Stderr, "sink:", err)
		return 1
	}
	raw := os.NewFile(4, "raw")
	rbuf := make([]byte, 256<<10)
	var users, fds int64
	for {
		m, err := c.Recv()
		if err == io.EOF {
			return 0
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "sink: recv:", err)
			return 1
		}
		var r *Message
		switch m.Kind {
		case KindUser:
			users++
			fds += int64(len(m.FDs))
			if err := m.CloseFDs(); err != nil {
				fmt.Fprintln(os.Stderr, "sink:", err)
				return 1
			}
			continue
		case KindStats:
			cn := c.Counters()
			r, err = m.Reply(KindStats, &Stats{Counters: map[string]int64{"user": users, "fds": fds,
				"received": int64(cn.Received), "reads": int64(cn.Reads)}})
		case KindRequest:
			r = &Message{Kind: KindResponse, ReplyTo: m.ID}
		case KindJob:
			var job sinkJob
			if err = m.Decode(&job); err == nil && job.Echo != "" {
				go echoRaw(4, job.Echo)
			}
			total := job.Bytes
			if err == nil {
				for total > 0 {
					var k int
					k, err = raw.Read(rbuf[:min(int64(len(rbuf)), total)])
					if err != nil {
						break
					}
					total -= int64(k)
				}
			}
			if err == nil {
				r, err = m.Reply(KindResult, binary.BigEndian.AppendUint64(nil, uint64(total)))
			}
		}
		if err == nil && r != nil {
			err = c.Send(r)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "sink:", err)
			return 1
		}
	}
}
