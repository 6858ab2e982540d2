package ipc

import (
	"errors"
	"fmt"
	"io"
)

// Errors that callers can test for with [errors.Is]. The package wraps them with the
// detail of the case (sizes, counts, offsets), so log the error itself and branch on
// the sentinel.
var (
	// ErrClosed is returned by every method of a [Conn] after [Conn.Close].
	ErrClosed = errors.New("ipc: connection closed")

	// ErrFrameTooLarge reports a frame longer than [Options.MaxFrameSize]: sent by
	// the peer (the connection is closed before anything is allocated for it) or
	// passed to [Conn.Send] (nothing is sent; the connection stays usable).
	ErrFrameTooLarge = errors.New("ipc: frame too large")

	// ErrTooManyFDs reports a frame with more descriptors than [Options.MaxFDs].
	// Every descriptor that arrived with it has been closed.
	ErrTooManyFDs = errors.New("ipc: too many file descriptors")

	// ErrUnknownKind reports a message whose [Kind] this version does not define.
	ErrUnknownKind = errors.New("ipc: unknown message kind")

	// ErrTruncated reports a stream that ended inside a frame: the peer closed the
	// connection (or died) while writing. It wraps [io.ErrUnexpectedEOF].
	ErrTruncated = fmt.Errorf("ipc: truncated frame: %w", io.ErrUnexpectedEOF)

	// ErrProtocol reports a peer that broke the protocol in a way that is neither a
	// limit nor bad msgpack: descriptors that do not match the frame that declares
	// them, or a first message that is not a hello.
	ErrProtocol = errors.New("ipc: protocol violation")

	// ErrFrameTimeout reports a peer that started a frame and did not finish it
	// within [Options.FrameTimeout].
	ErrFrameTimeout = errors.New("ipc: frame timed out")

	// ErrVersion reports a handshake with a peer that speaks another protocol
	// version.
	ErrVersion = errors.New("ipc: protocol version mismatch")
)

// DecodeError reports bytes that are not the msgpack the protocol expects: a
// malformed envelope or body received from the peer, a body handed to
// [Conn.Send] that is not exactly one msgpack value, or a body that does not decode
// into the value passed to [Message.Decode]. Test for it with [errors.As].
type DecodeError struct {
	// Offset is the byte offset in the envelope or body where decoding failed, or
	// -1 when the msgpack library reported the error (see Err).
	Offset int
	// Reason says what was wrong, in lowercase words.
	Reason string
	// Err is the underlying error of the msgpack library, if any.
	Err error
}

// Error implements error.
func (e *DecodeError) Error() string {
	if e.Offset < 0 {
		if e.Err != nil {
			return fmt.Sprintf("ipc: bad msgpack: %s: %v", e.Reason, e.Err)
		}
		return "ipc: bad msgpack: " + e.Reason
	}
	return fmt.Sprintf("ipc: bad msgpack at byte %d: %s", e.Offset, e.Reason)
}

// Unwrap returns the msgpack library's error, or nil.
func (e *DecodeError) Unwrap() error { return e.Err }

// RemoteError is an error that the peer sent as a [KindError] message (body
// [Error]) in reply to a [Conn.Call]. Code is meant for branching, Text for humans.
type RemoteError struct {
	// Code is the [Error] body's code, such as [CodeUnsupported].
	Code string
	// Text is the [Error] body's text.
	Text string
}

// Error implements error.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("ipc: peer error %s: %s", e.Code, e.Text)
}
