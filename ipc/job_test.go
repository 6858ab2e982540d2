package ipc

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// jobSeeds are Job bodies as the library writes them, and bodies the fast
// decoder leaves to it.
func jobSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	for _, j := range []Job{{}, {Attempt: 1, Body: msgpack.RawMessage{0x01}}, {Attempt: 3, Body: msgpack.RawMessage{0x82, 0xa3, 's', 'e', 'q', 0x07, 0xa3, 'p', 'a', 'd', 0xa1, 'x'}},
		{Attempt: 200, Body: msgpack.RawMessage{0xc4, 0x02, 0, 1}}, {Attempt: -40}, {Attempt: math.MaxInt64}, {Attempt: math.MinInt64, Body: msgpack.RawMessage{0x90}}} {
		b, err := msgpack.Marshal(j)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds,
		[]byte{0x80},
		[]byte{0xc0},
		[]byte{0x92, 0x02, 0x05}, // array form
		[]byte{0x81, 0xa4, 'b', 'o', 'd', 'y', 0xc0},                       // nil body
		[]byte{0x82, 0xa4, 'b', 'o', 'd', 'y', 0x01, 0xa2, 'i', 'd', 0x02}, // unknown key
		[]byte{0x82, 0xa7, 'a', 't', 't', 'e', 'm', 'p', 't', 0x01, 0xa7, 'a', 't', 't', 'e', 'm', 'p', 't', 0x02},
		[]byte{0x81, 0xa7, 'a', 't', 't', 'e', 'm', 'p', 't', 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		[]byte{0x81, 0xa4, 'b', 'o', 'd', 'y', 0xdd, 0xff, 0xff, 0xff, 0xff},
	)
}

// TestEncodeJob: EncodeJob writes what the msgpack library writes for a Job.
func TestEncodeJob(t *testing.T) {
	t.Parallel()
	bodies := []msgpack.RawMessage{nil, {0x01}, {0xc0}, bytes.Repeat([]byte{0xa1, 'x'}, 1)}
	for _, attempt := range []int{0, 1, 3, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64} {
		for _, body := range bodies {
			j := Job{Attempt: attempt, Body: body}
			want, err := msgpack.Marshal(j)
			if err != nil {
				t.Fatal(err)
			}
			if got := EncodeJob(j); !bytes.Equal(got, want) {
				t.Errorf("EncodeJob(%+v) = % x, want % x", j, got, want)
			}
			// Appended to a reused buffer, after what it holds.
			prefix := []byte{0xde, 0xad}
			if got := AppendJob(prefix, j); !bytes.Equal(got[:2], prefix) || !bytes.Equal(got[2:], want) {
				t.Errorf("AppendJob(% x, %+v) = % x, want the prefix then % x", prefix, j, got, want)
			}
		}
	}
}

// TestDecodeJobFast: what EncodeJob writes is read without the library.
func TestDecodeJobFast(t *testing.T) {
	t.Parallel()
	for _, j := range []Job{{Attempt: 1, Body: msgpack.RawMessage{0x01}}, {Attempt: -200, Body: msgpack.RawMessage{0x90}}, {Attempt: math.MaxInt64, Body: msgpack.RawMessage{0xa1, 'x'}}} {
		got, ok := decodeJob(EncodeJob(j))
		if !ok || got.Attempt != j.Attempt || !bytes.Equal(got.Body, j.Body) {
			t.Errorf("decodeJob(EncodeJob(%+v)) = %+v, %v", j, got, ok)
		}
	}
}

// FuzzDecodeJob: DecodeJob gives what the library's decoding of a Job gives,
// error or value.
func FuzzDecodeJob(f *testing.F) {
	for _, s := range jobSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &Message{Kind: KindJob, Body: data}
		var got, want Job
		gotErr := m.DecodeJob(&got)
		wantErr := m.Decode(&want)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("% x: DecodeJob error %v, Decode error %v", data, gotErr, wantErr)
		}
		if gotErr != nil {
			var de *DecodeError
			if !errors.As(gotErr, &de) {
				t.Fatalf("DecodeJob error %v is not a *DecodeError", gotErr)
			}
			return
		}
		if got.Attempt != want.Attempt || !bytes.Equal(got.Body, want.Body) || (got.Body == nil) != (want.Body == nil) {
			t.Fatalf("% x: DecodeJob %+v, Decode %+v", data, got, want)
		}
	})
}

// TestEncodeAsLibrary: Encode, with its pooled encoders, writes what
// msgpack.Marshal writes, also right after a value it failed to encode
// (which left part of an encoding in the pooled buffer), and for a body
// larger than the pool keeps.
func TestEncodeAsLibrary(t *testing.T) {
	t.Parallel()
	type job struct {
		Seq  int               `msgpack:"seq"`
		Pad  string            `msgpack:"pad,omitempty"`
		Tags map[string]string `msgpack:"tags,omitempty"`
	}
	values := []any{1, "x", []int{1, 2, 3}, job{Seq: 7, Pad: "abc"}, &job{Seq: -1, Tags: map[string]string{"a": "b"}},
		job{Pad: string(bytes.Repeat([]byte{'y'}, maxPooledEncoding+1))}, map[string]any{"k": []byte{1, 2}}, job{Seq: 2}}
	var kept [][2][]byte
	for i, v := range values {
		if _, err := Encode(struct{ C chan int }{make(chan int)}); err == nil {
			t.Fatal("Encode of a channel: no error")
		}
		want, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Encode(v)
		if err != nil {
			t.Fatalf("value %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("value %d: Encode = % x, want % x", i, got, want)
		}
		kept = append(kept, [2][]byte{got, want})
	}
	// Each body is a copy: the encodings after it did not overwrite it.
	for i, k := range kept {
		if !bytes.Equal(k[0], k[1]) {
			t.Errorf("value %d: its body changed to % x after later encodings, want % x", i, k[0], k[1])
		}
	}
}

// TestSendJobAsSend: SendJob puts on the wire what Send of the encoded Job
// does, for empty and non-empty bodies, and refuses a body that is not one
// msgpack value.
func TestSendJobAsSend(t *testing.T) {
	t.Parallel()
	for _, body := range [][]byte{nil, {0x01}, bytes.Repeat([]byte{0x90}, 1), append([]byte{0xc5, 0x10, 0x00}, make([]byte, 4096)...)} {
		for _, attempt := range []int{1, 2, 300, -5} {
			var viaSend, viaJob []byte
			e := envelope{kind: KindJob, id: 9, body: EncodeJob(Job{Attempt: attempt, Body: body})}
			viaSend = appendFrame(viaSend, &e)
			var head [32]byte
			j := envelope{kind: KindJob, id: 9, head: appendJobHead(head[:0], attempt, len(body) == 0), body: body}
			viaJob = appendFrame(viaJob, &j)
			if !bytes.Equal(viaSend, viaJob) {
				t.Errorf("attempt %d, body of %d bytes: SendJob's frame % x, want % x", attempt, len(body), viaJob, viaSend)
			}
			if envelopeSize(&e) != envelopeSize(&j) {
				t.Errorf("attempt %d: size %d, want %d", attempt, envelopeSize(&j), envelopeSize(&e))
			}
		}
	}
}
