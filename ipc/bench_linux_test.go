package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"
	"time"
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
	job, err := NewMessage(KindJob, total)
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
// and with the reader polling for 50µs before it sleeps (Options.SpinWait).
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
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "rtt-p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "rtt-p99-ns")
		})
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

// helperSink counts KindUser messages and their descriptors (closing them),
// answers KindStats with the counts and KindRequest with an empty response, and
// for a KindJob whose body is a byte count reads that many bytes from its raw
// socket (fd 4) and answers with a KindResult.
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
			var total int64
			if err = m.Decode(&total); err == nil {
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
