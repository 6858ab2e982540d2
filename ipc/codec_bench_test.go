package ipc

import (
	"io"
	"testing"
)

// In-process costs of the per-message work on the data path, without sockets:
// encoding a 64-byte message into the send buffer, and reading it back out of a
// stream (decode, body copy, Message allocation).

func BenchmarkEncodeFrame(b *testing.B) {
	body := make([]byte, 64)
	body[0], body[1] = 0xc4, 62
	e := envelope{kind: KindUser, id: 12345, body: body}
	buf := make([]byte, 0, 64<<10)
	for b.Loop() {
		if len(buf) > 60<<10 {
			buf = buf[:0]
		}
		if err := checkBody(e.body); err != nil {
			b.Fatal(err)
		}
		buf = appendFrame(buf, &e)
	}
}

func BenchmarkReadFrames(b *testing.B) {
	body := make([]byte, 64)
	body[0], body[1] = 0xc4, 62
	var stream []byte
	for i := range 10000 {
		stream = appendFrame(stream, &envelope{kind: KindUser, id: uint64(i), body: body})
	}
	opts, err := Options{}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	c := &Conn{opts: opts}
	n := 0
	deliver := func(*Message) error { n++; return nil }
	for b.Loop() {
		if err := c.readFrames(memReader(stream, 0), deliver); err != io.EOF {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/msg")
}

// BenchmarkDecodeBody: Message.Decode of a small struct, as a job's
// handler or a result's caller decodes one.
func BenchmarkDecodeBody(b *testing.B) {
	type payload struct {
		Seq int    `msgpack:"seq"`
		Pad string `msgpack:"pad"`
	}
	body, err := Encode(payload{Seq: 7, Pad: "0123456789abcdef0123456789abcdef"})
	if err != nil {
		b.Fatal(err)
	}
	m := &Message{Kind: KindJob, Body: body}
	b.ReportAllocs()
	for b.Loop() {
		var p payload
		if err := m.Decode(&p); err != nil || p.Seq != 7 {
			b.Fatal(p, err)
		}
	}
}
