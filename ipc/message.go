package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// Version is the protocol version this package speaks. Both ends exchange it in
// their hello ([Conn.Handshake]); a peer with another version is refused.
const Version = 1

// Kind is the type of a message. Its numeric values are part of the wire format and
// never change meaning; a frame with a kind outside KindHello..KindError is a
// protocol error ([ErrUnknownKind]).
type Kind uint8

// Message kinds. The body each one carries is named in its comment; "application"
// means the body is whatever msgpack the two ends agree on.
const (
	// KindHello opens a connection in both directions; body [Hello].
	KindHello Kind = 1
	// KindReady tells the master that the worker serves; body [Ready] or none.
	KindReady Kind = 2
	// KindHeartbeat is a liveness signal; body [Heartbeat].
	KindHeartbeat Kind = 3
	// KindDrain asks the worker to stop accepting and finish by a deadline; body [Drain].
	KindDrain Kind = 4
	// KindListenRequest asks the master for a listener by address; body [ListenRequest].
	KindListenRequest Kind = 5
	// KindListenReply answers a listen request with the listener attached as the
	// message's only descriptor; body [ListenReply]. A failure is a [KindError].
	KindListenReply Kind = 6
	// KindConn carries accepted connections (--balance round-robin and
	// least-conn). From the master: one or more connections as its
	// descriptors, all of one balanced listener, whose id (see
	// [ListenReply]) is the body. From a worker: without descriptors, a
	// [ConnReport]; with descriptors, connections the worker gives back
	// (of the listener its body names), which the master hands on.
	KindConn Kind = 7
	// KindUser is a one-way application message.
	KindUser Kind = 8
	// KindRequest is an application request; the answer is a KindResponse (or a
	// KindError) whose ReplyTo is the request's ID.
	KindRequest Kind = 9
	// KindResponse answers a KindRequest; application body.
	KindResponse Kind = 10
	// KindJob is a unit of work that the master spreads over workers; body
	// [Job]. The worker answers it with a KindResult (or a KindError) whose
	// ReplyTo is the job's ID. A worker may send one to the master as a
	// request (Submit): the master has another worker do it and answers
	// with the KindResult.
	KindJob Kind = 11
	// KindResult acknowledges a job with its outcome; application body.
	KindResult Kind = 12
	// KindStats reports counters; body [Stats].
	KindStats Kind = 13
	// KindError answers a request that failed; body [Error].
	KindError Kind = 14

	kindMax = KindError
)

var kindNames = [...]string{
	KindHello:         "hello",
	KindReady:         "ready",
	KindHeartbeat:     "heartbeat",
	KindDrain:         "drain",
	KindListenRequest: "listen-request",
	KindListenReply:   "listen-reply",
	KindConn:          "conn",
	KindUser:          "user",
	KindRequest:       "request",
	KindResponse:      "response",
	KindJob:           "job",
	KindResult:        "result",
	KindStats:         "stats",
	KindError:         "error",
}

// Valid reports whether k is a kind this version of the protocol defines.
func (k Kind) Valid() bool { return k >= KindHello && k <= kindMax }

// String returns the kind's lowercase name, or "kind(N)" for an undefined kind.
func (k Kind) String() string {
	if k.Valid() {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Message is one frame of the wire: an envelope (kind, id, reply-to id, descriptor
// count) and a msgpack body, with descriptors attached.
//
// ID and ReplyTo are free for the application except through [Conn.Call], which
// chooses the request's ID itself and matches the answer by its ReplyTo. ID 0 and
// ReplyTo 0 mean "none". Each end numbers its own requests; a ReplyTo refers to an
// ID chosen by the peer.
type Message struct {
	// Kind says what the message is and which body it carries.
	Kind Kind
	// ID identifies a request among the sender's; 0 means none.
	ID uint64
	// ReplyTo is the peer's ID of the request this message answers; 0 means
	// none.
	ReplyTo uint64
	// Body is exactly one msgpack value, or nil for none. Build it with [Encode]
	// and read it with [Message.Decode].
	Body msgpack.RawMessage
	// FDs are the descriptors attached to the message. [Conn.Send] duplicates
	// them and leaves the caller's files open and owned by the caller. On a
	// received message they are new close-on-exec descriptors owned by the
	// receiver, who must close them ([Message.CloseFDs]).
	FDs []*os.File
}

// NewMessage returns a message of kind k with body v encoded by [Encode].
func NewMessage(k Kind, v any) (*Message, error) {
	body, err := Encode(v)
	if err != nil {
		return nil, err
	}
	return &Message{Kind: k, Body: body}, nil
}

// Reply returns a message of kind k with body v that answers m: its ReplyTo is
// m.ID.
func (m *Message) Reply(k Kind, v any) (*Message, error) {
	r, err := NewMessage(k, v)
	if err != nil {
		return nil, err
	}
	r.ReplyTo = m.ID
	return r, nil
}

// Decode decodes m's body into v (a pointer), with the msgpack library's
// allocation limits in force. A nil body decodes as msgpack nil. A failure is a
// [*DecodeError], also when the msgpack library panics on what the peer sent.
func (m *Message) Decode(v any) (err error) {
	// The body comes from the peer, and msgpack v5.4.1 panics on some input
	// (a nil where a struct-typed field such as time.Time is expected in an
	// array-encoded struct: reflect.Value.IsNil on a struct; the fuzz corpus
	// keeps the case). A peer must not be able to crash us: the panic becomes
	// a decode error.
	defer func() {
		if p := recover(); p != nil {
			err = &DecodeError{Offset: -1, Reason: fmt.Sprintf("decode %s body: msgpack panicked: %v", m.Kind, p)}
		}
	}()
	body := m.Body
	if len(body) == 0 {
		body = nilBody
	}
	// msgpack.Unmarshal, without the bytes.Reader it allocates for every
	// value (a quarter of the master's allocations per job). A decoder
	// that panicked is not put back.
	d := bodyDecoders.Get().(*bodyDecoder)
	d.r.Reset(body)
	d.dec.Reset(&d.r)
	err = d.dec.Decode(v)
	d.r.Reset(nil)
	bodyDecoders.Put(d)
	if err != nil {
		return &DecodeError{Offset: -1, Reason: "decode " + m.Kind.String() + " body", Err: err}
	}
	return nil
}

// bodyDecoder is a msgpack decoder with the reader it reads from.
type bodyDecoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var bodyDecoders = sync.Pool{New: func() any {
	d := new(bodyDecoder)
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}}

// CloseFDs closes every descriptor attached to m and sets m.FDs to nil. It
// returns the first error of the closes. It is what a receiver calls for a
// message whose descriptors it does not keep.
func (m *Message) CloseFDs() error {
	var errs []error
	for _, f := range m.FDs {
		if f != nil {
			if err := f.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	m.FDs = nil
	return errors.Join(errs...)
}

var nilBody = msgpack.RawMessage{0xc0}

// cloneBody copies a received body out of the read buffer.
func cloneBody(b []byte) msgpack.RawMessage {
	c := make(msgpack.RawMessage, len(b))
	copy(c, b)
	return c
}

// Encode encodes v as a message body. A nil v gives a nil body. A
// msgpack.RawMessage is returned as it is, after checking that it is exactly one
// msgpack value.
func Encode(v any) (msgpack.RawMessage, error) {
	switch b := v.(type) {
	case nil:
		return nil, nil
	case msgpack.RawMessage:
		if err := checkBody(b); err != nil {
			return nil, err
		}
		return b, nil
	}
	e := encoders.Get().(*encoder)
	err := e.encode(e.scratch[:0], v)
	var b msgpack.RawMessage
	if err == nil {
		b = bytes.Clone(e.w.b)
	}
	e.scratch = nil
	if cap(e.w.b) <= maxPooledEncoding {
		e.scratch = e.w.b[:0]
	}
	e.w.b = nil
	encoders.Put(e)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// AppendEncode appends the body Encode returns for v to b and returns the
// extended buffer: a sender that owns b can reuse it once the message was
// sent (Send copies the body), where Encode allocates a body per value.
func AppendEncode(b []byte, v any) ([]byte, error) {
	switch r := v.(type) {
	case nil:
		return b, nil
	case msgpack.RawMessage:
		if err := checkBody(r); err != nil {
			return nil, err
		}
		return append(b, r...), nil
	}
	e := encoders.Get().(*encoder)
	err := e.encode(b, v)
	b, e.w.b = e.w.b, nil
	encoders.Put(e)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// encoder is a msgpack encoder and the buffer it appends to, pooled:
// msgpack.Marshal grows a new buffer by doubling for every value, which
// for a body of a few KiB allocated, cleared and copied about four times
// its size. Encode encodes into scratch and copies the body out at its
// size.
type encoder struct {
	w       appender
	enc     *msgpack.Encoder
	scratch []byte
}

// maxPooledEncoding is the largest scratch buffer the pool keeps: a rare
// large body does not pin its buffer for the life of the process.
const maxPooledEncoding = 64 << 10

func (e *encoder) encode(b []byte, v any) error {
	e.w.b = b
	e.enc.Reset(&e.w)
	if err := e.enc.Encode(v); err != nil {
		return &DecodeError{Offset: -1, Reason: "encode body", Err: err}
	}
	return nil
}

// appender is an io.Writer (and io.ByteWriter, so that msgpack writes to
// it directly) that appends to b.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

func (a *appender) WriteByte(c byte) error {
	a.b = append(a.b, c)
	return nil
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = msgpack.NewEncoder(&e.w)
	return e
}}
