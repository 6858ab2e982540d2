package master

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// testSink is a sink writing to a buffer; its contents are complete once
// the sink is closed.
func testSink(t *testing.T) (*sink, *syncBuffer) {
	t.Helper()
	var buf syncBuffer
	return newSink("stdout", &buf, hclog.NewNullLogger(), sinkBuffer), &buf
}

func TestOutputPrefix(t *testing.T) {
	sk, buf := testSink(t)
	s := &stream{sink: sk, prefix: "[w3 pid 1234] "}
	long := strings.Repeat("x", maxLineLength+10)
	in := "one\ntwo\n" + long + "\nlast without newline"
	// Fed in small pieces, as a pipe may deliver it.
	for len(in) > 0 {
		n := min(len(in), 7)
		s.feed([]byte(in[:n]))
		in = in[n:]
	}
	s.flush()
	sk.close()
	want := "[w3 pid 1234] one\n[w3 pid 1234] two\n" +
		"[w3 pid 1234] " + strings.Repeat("x", maxLineLength) + "\n" +
		"[w3 pid 1234] xxxxxxxxxx\n" +
		"[w3 pid 1234] last without newline\n"
	if got := buf.String(); got != want {
		t.Errorf("relayed %d bytes, want %d:\n%.300q", len(got), len(want), got)
	}
}

// TestOutputPrefixBatches checks that the lines of one read reach the
// writer in one Write, each with its prefix, and that a line split
// between reads is whole.
func TestOutputPrefixBatches(t *testing.T) {
	w := &countingWriter{}
	sk := newSink("stdout", w, hclog.NewNullLogger(), sinkBuffer)
	s := &stream{sink: sk, prefix: "[w0 pid 1] "}
	s.feed([]byte(strings.Repeat("short line\n", 1000) + "split "))
	s.feed([]byte("line\n"))
	s.flush()
	sk.close()
	want := strings.Repeat("[w0 pid 1] short line\n", 1000) + "[w0 pid 1] split line\n"
	if got := w.buf.String(); got != want {
		t.Fatalf("relayed %d bytes, want %d:\n%.200q", len(got), len(want), got)
	}
	// Two feeds: at most two writes, not one per line.
	if w.writes > 2 {
		t.Errorf("%d writes for 1001 lines in two reads, want at most 2", w.writes)
	}
}

type countingWriter struct {
	buf    bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.buf.Write(p)
}

func TestOutputRaw(t *testing.T) {
	sk, buf := testSink(t)
	s := &stream{sink: sk}
	s.feed([]byte("no prefix, "))
	s.feed([]byte("no newline"))
	s.flush()
	sk.close()
	if got := buf.String(); got != "no prefix, no newline" {
		t.Errorf("raw relay %q", got)
	}
}

func TestTail(t *testing.T) {
	long := strings.Repeat("é", tailLength) // two bytes each
	for _, tc := range []struct {
		name  string
		feeds []string
		flush bool
		want  string
	}{
		{"nothing", nil, false, ""},
		{"no newline yet", []string{"starting"}, false, ""},
		{"one line", []string{"bind: address already in use\n"}, false, "bind: address already in use"},
		{"last of many", []string{"a\nb\nc\n"}, false, "c"},
		{"split between reads", []string{"listen tcp :80: bi", "nd: address already in use\n"}, false, "listen tcp :80: bind: address already in use"},
		{"blank lines after it", []string{"fatal: no config\n\n  \n"}, false, "fatal: no config"},
		{"blank lines in the next read", []string{"fatal: no config\n", "\n\n"}, false, "fatal: no config"},
		{"crlf", []string{"error\r\n"}, false, "error"},
		{"partial at the end", []string{"first\nexit without newline"}, true, "exit without newline"},
		{"partial but no flush", []string{"first\nexit without newline"}, false, "first"},
		{"cut at a character", []string{"x" + long + "\n"}, false, "x" + strings.Repeat("é", (tailLength-1)/2) + "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sk, _ := testSink(t)
			defer sk.close()
			tl := &tail{}
			s := &stream{sink: sk, prefix: "[w0 pid 1] ", tail: tl}
			for _, f := range tc.feeds {
				s.feed([]byte(f))
			}
			if tc.flush {
				s.flush()
			}
			if got := tl.String(); got != tc.want {
				t.Errorf("tail after %q = %q, want %q", tc.feeds, got, tc.want)
			}
		})
	}
	var none *tail
	if got := none.String(); got != "" {
		t.Errorf("nil tail = %q, want \"\"", got)
	}
}

// The relay benchmarks feed 64 KiB reads of 40-byte lines (a full pipe of
// a chatty worker) through a stream into a sink writing to /dev/null, and
// do the sink's write themselves, so that ns/op is all the CPU the master
// spends per read. BenchmarkRelayPrefix is --output prefix; BenchmarkRelayRaw
// the untouched relay; BenchmarkRelayLineWrites the relay as it was before
// it coalesced lines, one write(2) per prefixed line, for comparison.
func BenchmarkRelayPrefix(b *testing.B) { benchmarkRelay(b, "[w0 pid 12345] ") }

func BenchmarkRelayRaw(b *testing.B) { benchmarkRelay(b, "") }

func BenchmarkRelayLineWrites(b *testing.B) {
	chunk := relayChunk()
	f := openDevNull(b)
	prefix := "[w0 pid 12345] "
	var scratch []byte
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		p := chunk
		for {
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				break
			}
			scratch = append(append(scratch[:0], prefix...), p[:i+1]...)
			if _, err := f.Write(scratch); err != nil {
				b.Fatal(err)
			}
			p = p[i+1:]
		}
	}
}

func benchmarkRelay(b *testing.B, prefix string) {
	chunk := relayChunk()
	// No goroutine: the benchmark writes for the sink, one Write per read.
	sk := &sink{name: "stdout", w: openDevNull(b), log: hclog.NewNullLogger(), limit: sinkBuffer,
		wake: make(chan struct{}, 1)}
	s := &stream{sink: sk, prefix: prefix, tail: &tail{}}
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		s.feed(chunk)
		<-sk.wake
		sk.writeQueued()
	}
	b.StopTimer()
	if blocked, failed := sk.dropped(); blocked.bytes+failed.bytes > 0 {
		b.Fatalf("output dropped: %+v blocked, %+v failed", blocked, failed)
	}
}

// relayChunk is one 64 KiB read of 40-byte lines, ending inside a line.
func relayChunk() []byte {
	line := strings.Repeat("relay benchmark line ", 2)[:39] + "\n"
	chunk := []byte(strings.Repeat(line, 64<<10/len(line)))
	return append(chunk, line[:len(line)/2]...)
}

func openDevNull(b *testing.B) *os.File {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}
