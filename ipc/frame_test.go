package ipc

import (
	"bytes"
	"errors"
	"io"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	t.Parallel()
	bodies := []any{nil, 0, -1, "hello", []byte{1, 2, 3}, &Hello{Version: 1, PID: 42, WorkerID: 3, Generation: 9},
		&Drain{Deadline: time.Unix(1700000000, 5).UTC()}, &Stats{Counters: map[string]int64{"a": 1, "b": -2}},
		&Error{Code: CodeInternal, Text: "x"}, []any{1, "a", map[string]any{"k": []any{nil, true, 1.5}}},
		uint64(math.MaxUint64), float32(1.25), make([]byte, 70000)}
	ids := []uint64{0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, math.MaxUint64}
	for _, body := range bodies {
		for i, id := range ids {
			raw, err := Encode(body)
			if err != nil {
				t.Fatal(err)
			}
			e := envelope{kind: Kind(1 + i%int(kindMax)), id: id, replyTo: ids[len(ids)-1-i], nfds: i, body: raw}
			frame := appendFrame(nil, &e)
			if got := len(frame) - lengthSize; got != envelopeSize(&e) {
				t.Fatalf("envelopeSize = %d, encoded %d bytes", envelopeSize(&e), got)
			}
			got, err := decodeEnvelope(frame[lengthSize:])
			if err != nil {
				t.Fatalf("decodeEnvelope(%x) = %v", frame, err)
			}
			if got.kind != e.kind || got.id != e.id || got.replyTo != e.replyTo || got.nfds != e.nfds || !bytes.Equal(got.body, e.body) {
				t.Fatalf("decodeEnvelope(appendFrame(%+v)) = %+v", e, got)
			}
		}
	}
}

// TestEnvelopeWideIntegers: integers in wider encodings than needed, and signed
// ones, as other encoders may write them, decode to the same values.
func TestEnvelopeWideIntegers(t *testing.T) {
	t.Parallel()
	env := []byte{0xdc, 0, 5, // array16 of 5
		0xd0, 8, // int8 8: user
		0xcf, 0, 0, 0, 0, 0, 0, 1, 0, // uint64 256
		0xd3, 0, 0, 0, 0, 0, 0, 0, 7, // int64 7
		0xcd, 0, 0, // uint16 0
		0xa2, 'h', 'i'}
	e, err := decodeEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	if e.kind != KindUser || e.id != 256 || e.replyTo != 7 || e.nfds != 0 || string(e.body) != "\xa2hi" {
		t.Fatalf("decodeEnvelope = %+v", e)
	}
	neg := []byte{0x95, 8, 0xd0, 0xff, 0, 0, 0xc0}
	var de *DecodeError
	if _, err := decodeEnvelope(neg); !errors.As(err, &de) {
		t.Fatalf("decodeEnvelope(negative id) = %v, want a *DecodeError", err)
	}
}

// TestSkipValue checks the scanner against what the msgpack library encodes,
// and against hostile headers.
func TestSkipValue(t *testing.T) {
	t.Parallel()
	values := []any{nil, true, false, 0, 127, 128, -1, -33, -200, 1 << 40, -1 << 40, uint64(math.MaxUint64),
		float32(3.5), 2.5, "", "short", string(make([]byte, 40)), string(make([]byte, 300)), string(make([]byte, 70000)),
		[]byte{}, make([]byte, 300), make([]byte, 70000), []int{}, make([]int, 20), make([]int, 70000),
		map[string]int{}, map[string]int{"a": 1}, map[int]bool{1: true, 2: false, 3: true, 4: true, 5: true, 6: true, 7: true, 8: true, 9: true, 10: true, 11: true, 12: true, 13: true, 14: true, 15: true, 16: true, 17: true},
		time.Unix(1, 0), time.Unix(1<<40, 1), time.Unix(1<<40, 0),
		[]any{[]any{[]any{map[string]any{"x": []byte{1}}}}}}
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		end, err := skipValue(b, 0)
		if err != nil || end != len(b) {
			t.Errorf("skipValue(%T %.20x) = %d, %v; want %d", v, b, end, err, len(b))
		}
		for cut := 0; cut < len(b) && cut < 64; cut++ {
			if _, err := skipValue(b[:cut], 0); err == nil {
				t.Errorf("skipValue(%T cut at %d) = nil error", v, cut)
			}
		}
	}
	for _, ext := range [][]byte{{0xd4, 1, 0}, {0xd5, 1, 0, 0}, {0xd6, 1, 0, 0, 0, 0}, {0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		append([]byte{0xd8, 1}, make([]byte, 16)...), {0xc7, 2, 1, 0, 0}, {0xc8, 0, 1, 1, 0}, {0xc9, 0, 0, 0, 1, 1, 0}} {
		if end, err := skipValue(ext, 0); err != nil || end != len(ext) {
			t.Errorf("skipValue(%x) = %d, %v; want %d", ext, end, err, len(ext))
		}
	}
	hostile := [][]byte{
		{0xdd, 0xff, 0xff, 0xff, 0xff},       // array of 4 billion in no bytes
		{0xdf, 0xff, 0xff, 0xff, 0xff, 1, 2}, // map of 4 billion
		{0xdb, 0xff, 0xff, 0xff, 0xff},       // string of 4 GiB
		{0xc9, 0xff, 0xff, 0xff, 0xff, 1},    // ext of 4 GiB
		{0xc1},
		bytes.Repeat([]byte{0x91}, 100000), // deep nesting, cut short
	}
	for _, b := range hostile {
		if _, err := skipValue(b, 0); err == nil {
			t.Errorf("skipValue(%.16x) = nil error", b)
		}
	}
	deep := append(bytes.Repeat([]byte{0x91}, 100000), 0xc0)
	if end, err := skipValue(deep, 0); err != nil || end != len(deep) {
		t.Errorf("skipValue(100000 nested arrays) = %d, %v", end, err)
	}
}

// memReader returns a read function for readFrames over data, chunk bytes at a
// time (all of it when chunk is 0), then io.EOF.
func memReader(data []byte, chunk int) func(p, oob []byte) (int, []int, error) {
	return func(p, oob []byte) (int, []int, error) {
		if len(data) == 0 {
			return 0, nil, io.EOF
		}
		n := len(p)
		if chunk > 0 && chunk < n {
			n = chunk
		}
		n = copy(p, data[:min(n, len(data))])
		data = data[n:]
		return n, nil, nil
	}
}

// readAll runs the Conn's frame reader over data and returns what it delivered
// and the error it ended with, checking on the way that its buffer stays within
// bounds.
func readAll(t testing.TB, data []byte, chunk int, opts Options) ([]*Message, error) {
	t.Helper()
	opts, err := opts.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	c := &Conn{opts: opts}
	var got []*Message
	err = c.readFrames(memReader(data, chunk), func(m *Message) error {
		got = append(got, m)
		return nil
	})
	return got, err
}

func TestReadFrames(t *testing.T) {
	t.Parallel()
	var stream []byte
	var want []*Message
	for i := range 500 {
		body, err := Encode(bytes.Repeat([]byte{byte(i)}, i*37%3000))
		if err != nil {
			t.Fatal(err)
		}
		m := &Message{Kind: Kind(1 + i%int(kindMax)), ID: uint64(i), ReplyTo: uint64(i * 7), Body: body}
		want = append(want, m)
		stream = appendFrame(stream, &envelope{kind: m.Kind, id: m.ID, replyTo: m.ReplyTo, body: m.Body})
	}
	for _, chunk := range []int{0, 1, 3, 4, 5, 1000, 70000} {
		got, err := readAll(t, stream, chunk, Options{})
		if err != io.EOF {
			t.Fatalf("chunk %d: readFrames error = %v, want io.EOF", chunk, err)
		}
		if len(got) != len(want) {
			t.Fatalf("chunk %d: %d messages, want %d", chunk, len(got), len(want))
		}
		for i := range got {
			if got[i].Kind != want[i].Kind || got[i].ID != want[i].ID || got[i].ReplyTo != want[i].ReplyTo || !bytes.Equal(got[i].Body, want[i].Body) {
				t.Fatalf("chunk %d: message %d = %+v, want %+v", chunk, i, got[i], want[i])
			}
		}
		_, err = readAll(t, stream[:len(stream)-1], chunk, Options{})
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("chunk %d: truncated stream error = %v, want ErrTruncated", chunk, err)
		}
	}
}

// fuzzOptions are small limits, so that the fuzzer reaches them.
var fuzzOptions = Options{MaxFrameSize: 4096, MaxFDs: 4}

// checkRoundTrip re-encodes a decoded message and decodes it again: the result
// must be the same message.
func checkRoundTrip(t *testing.T, m *Message, nfds int) {
	t.Helper()
	e := envelope{kind: m.Kind, id: m.ID, replyTo: m.ReplyTo, nfds: nfds, body: m.Body}
	frame := appendFrame(nil, &e)
	e2, err := decodeEnvelope(frame[lengthSize:])
	if err != nil {
		t.Fatalf("decode(encode(%+v)) = %v", e, err)
	}
	if e2.kind != e.kind || e2.id != e.id || e2.replyTo != e.replyTo || e2.nfds != e.nfds || !bytes.Equal(e2.body, e.body) {
		t.Fatalf("decode(encode(%+v)) = %+v", e, e2)
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, seed := range fuzzSeedFrames(f) {
		f.Add(seed, uint8(0))
		f.Add(seed, uint8(1))
		f.Add(seed, uint8(7))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint8(0))
	f.Add([]byte{0, 0, 0x10, 0x01}, uint8(0))
	f.Add([]byte{0, 0, 0, 0}, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		got, err := readAll(t, data, int(chunk), fuzzOptions)
		runtime.ReadMemStats(&after)
		// The read buffer, and copies of what arrived: never what a length
		// prefix merely declares.
		if grown := after.TotalAlloc - before.TotalAlloc; grown > uint64(2*readBufferSize+16*len(data)+64<<10) {
			t.Fatalf("reading %d bytes allocated %d bytes", len(data), grown)
		}
		if err == nil {
			t.Fatal("readFrames ended without an error")
		}
		for _, m := range got {
			if !m.Kind.Valid() || len(m.Body) > fuzzOptions.MaxFrameSize || len(m.FDs) != 0 {
				t.Fatalf("delivered %+v", m)
			}
			checkRoundTrip(t, m, 0)
		}
		// A stream that ended cleanly is made of whole frames: encoding what was
		// delivered gives the same messages back.
		if err == io.EOF {
			var again []byte
			for _, m := range got {
				again = appendFrame(again, &envelope{kind: m.Kind, id: m.ID, replyTo: m.ReplyTo, body: m.Body})
			}
			got2, err := readAll(t, again, 0, fuzzOptions)
			if err != io.EOF || len(got2) != len(got) {
				t.Fatalf("re-reading %d messages: %d, %v", len(got), len(got2), err)
			}
		}
	})
}

func FuzzDecodeEnvelope(f *testing.F) {
	for _, seed := range fuzzSeedFrames(f) {
		f.Add(seed[lengthSize:])
	}
	f.Add([]byte{0x95, 1, 0, 0, 0, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x95, 1, 0, 0, 0, 0xc1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		e, err := decodeEnvelope(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) && !errors.Is(err, ErrUnknownKind) && !errors.Is(err, ErrTooManyFDs) {
				t.Fatalf("decodeEnvelope error %v is of no documented type", err)
			}
			return
		}
		m := &Message{Kind: e.kind, ID: e.id, ReplyTo: e.replyTo, Body: e.body}
		checkRoundTrip(t, m, e.nfds)
		// Decoding the body with the msgpack library, as receivers do, must not
		// panic, and allocates in proportion to the input: the scan has
		// checked every declared length against the bytes present.
		var v any
		_ = m.Decode(&v)
		for _, dst := range []any{&Hello{}, &Drain{}, &Stats{}, &Error{}, &ListenRequest{}} {
			_ = m.Decode(dst)
		}
		runtime.ReadMemStats(&after)
		if grown := after.TotalAlloc - before.TotalAlloc; grown > uint64(64*len(data)+1<<20) {
			t.Fatalf("decoding %d bytes allocated %d bytes", len(data), grown)
		}
	})
}

// fuzzSeedFrames returns well-formed frames of every kind and body type.
func fuzzSeedFrames(tb testing.TB) [][]byte {
	bodies := []any{nil, &Hello{Version: Version, PID: 1234, WorkerID: 2, Generation: 3}, &Ready{Listeners: 2},
		&Heartbeat{Seq: 9}, &Drain{Deadline: time.Unix(1700000000, 0)}, &ListenRequest{Addr: "tcp://:8080"},
		&ListenReply{Addr: "127.0.0.1:8080"}, &Stats{Counters: map[string]int64{"requests": 10}},
		&Error{Code: CodeListen, Text: "address in use"}, []any{1, "x", []byte{0}}}
	var seeds [][]byte
	for i, body := range bodies {
		raw, err := Encode(body)
		if err != nil {
			tb.Fatal(err)
		}
		for k := KindHello; k <= kindMax; k++ {
			if int(k)%len(bodies) != i && body != nil {
				continue
			}
			seeds = append(seeds, appendFrame(nil, &envelope{kind: k, id: uint64(k) * 1000, replyTo: uint64(i), body: raw}))
		}
	}
	two := append(appendFrame(nil, &envelope{kind: KindUser, id: 1}), appendFrame(nil, &envelope{kind: KindConn, nfds: 1})...)
	return append(seeds, two)
}

// TestDecodePanic: input on which the msgpack library panics (found by
// FuzzDecodeEnvelope) is a decode error instead.
func TestDecodePanic(t *testing.T) {
	t.Parallel()
	m := &Message{Kind: KindDrain, Body: msgpack.RawMessage{0x91, 0xc0}}
	var d Drain
	var de *DecodeError
	if err := m.Decode(&d); !errors.As(err, &de) {
		t.Fatalf("Decode(%x) = %v, want a *DecodeError", m.Body, err)
	}
	// The pooled decoders Decode uses still decode what follows.
	for i := range 100 {
		body, err := Encode(map[string]int{"n": i})
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]int
		if err := (&Message{Kind: KindUser, Body: body}).Decode(&got); err != nil || got["n"] != i {
			t.Fatalf("decode %d after the panic: %v, %v", i, got, err)
		}
	}
}
