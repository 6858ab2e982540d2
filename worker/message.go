package worker

import (
	"context"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/clusterd/clusterd/ipc"
)

// Message is the body of an application message or request from the master
// (or of the master's reply to [Request]): one msgpack value, which
// [Message.Decode] reads into a Go value. The zero Message is msgpack nil.
type Message struct {
	body msgpack.RawMessage
}

// Decode decodes the message into v, a pointer, as [msgpack.Unmarshal] does
// (with its allocation limits; a struct reads a msgpack map by the keys of
// its msgpack tags, or its field names). A body that does not fit v is an
// error wrapping an [*ipc.DecodeError].
func (m Message) Decode(v any) error {
	im := ipc.Message{Kind: ipc.KindUser, Body: m.body}
	if err := im.Decode(v); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// Raw returns the message's msgpack encoding (nil for an empty body). The
// caller must not modify it.
func (m Message) Raw() msgpack.RawMessage { return m.body }

// Handler answers one request from the master ([master.Master.Request] in
// clusterd's library mode). The reply is encoded with msgpack, as [Send]
// encodes its argument. An error is sent as an IPC error reply: an
// [*ipc.RemoteError] (or an error wrapping one) with its Code and Text, any
// other error with code [ipc.CodeInternal] and the error's text. ctx is done
// when the connection to the master ends. As in any goroutine, a panic in
// the handler ends the process.
type Handler func(ctx context.Context, req Message) (reply any, err error)

// Send sends msg, encoded with msgpack, to the master as a one-way user
// message. It queues the message and returns: messages from one goroutine
// arrive in the order they were sent, and a burst leaves in few system
// calls. It blocks only while the connection's write buffer is full (the
// master is not reading). [Flush] waits until what was sent is written.
//
// Outside clusterd Send returns [ErrNotWorker]. Other errors: msg cannot be
// encoded, or is larger than the protocol's frame limit (the connection stays
// usable), or the connection to the master has ended. The first call opens
// the connection (see [Ready]). Send is safe for concurrent use.
func Send(msg any) error {
	conn, err := self().workerConn()
	if err != nil {
		return err
	}
	m, err := ipc.NewMessage(ipc.KindUser, msg)
	if err != nil {
		return fmt.Errorf("worker: send: %w", err)
	}
	if err := conn.Send(m); err != nil {
		return fmt.Errorf("worker: send: %w", err)
	}
	return nil
}

// Flush blocks until every message queued by [Send] (and replies to the
// master's requests) before the call has been written to the connection, the
// connection ends, or ctx is done. A worker that sends a last message before
// it exits flushes first. Outside clusterd it returns [ErrNotWorker].
func Flush(ctx context.Context) error {
	conn, err := self().workerConn()
	if err != nil {
		return err
	}
	if err := conn.Flush(ctx); err != nil {
		return fmt.Errorf("worker: flush: %w", err)
	}
	return nil
}

// Messages returns the channel on which the master's user messages arrive,
// in the order the master sent them. It is closed when the connection to the
// master ends, and, outside clusterd, at once. Every call returns the same
// channel; the first opens the connection (see [Ready]).
//
// Messages is a channel rather than a callback so that a program can select
// on it beside [Drain] and its own events, and receives messages in the
// order they came without its handler's concurrency having to preserve it.
// Nothing is dropped: messages the program has not taken wait in the
// channel (a few hundred) and then in the connection, which stops reading
// from the master. So a program that receives messages must keep taking
// them; until it does, the master's later messages, requests and drain wait
// behind them. Messages that arrive before the first call (once [Ready] or
// another call opened the connection) wait in the channel too.
func Messages() <-chan Message {
	p := self()
	_, _ = p.ipcConn() // an error closes the channel; Ready reports it
	return p.msgs
}

// Request sends msg to the master as a request and waits for its reply, or
// until ctx is done. The master answers through its request handler (in
// clusterd's library mode); a master that has none answers with an
// [*ipc.RemoteError] of code [ipc.CodeUnsupported], and a handler's failure
// is an *ipc.RemoteError with the code it chose. Many goroutines may wait on
// requests at once; each gets its own reply.
//
// Outside clusterd Request returns [ErrNotWorker]. The first call opens the
// connection (see [Ready]). Request is safe for concurrent use.
func Request(ctx context.Context, msg any) (Message, error) {
	conn, err := self().workerConn()
	if err != nil {
		return Message{}, err
	}
	m, err := ipc.NewMessage(ipc.KindRequest, msg)
	if err != nil {
		return Message{}, fmt.Errorf("worker: request: %w", err)
	}
	r, err := conn.Call(ctx, m)
	if err != nil {
		return Message{}, fmt.Errorf("worker: request: %w", err)
	}
	_ = r.CloseFDs() // a reply to a user request carries none this API hands over
	if r.Kind != ipc.KindResponse {
		return Message{}, fmt.Errorf("worker: request: master replied with a %s message, want a response", r.Kind)
	}
	return Message{body: r.Body}, nil
}

// Handle sets the function that answers the master's requests, replacing
// any earlier one; nil removes it. Requests are answered concurrently, up to
// [MaxConcurrentRequests] at once, each reply matched to its request. A
// request that arrives while no handler is set is answered with an error of
// code [ipc.CodeUnsupported]: set the handler before [Ready]. Handle does not
// open the connection; outside clusterd the handler is never called. It is
// safe for concurrent use.
func Handle(h Handler) {
	p := self()
	p.mu.Lock()
	p.handler = h
	p.mu.Unlock()
}
