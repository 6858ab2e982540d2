// Package ipc is the wire between a clusterd master and its workers: a framed
// msgpack message stream over a unix stream socketpair, with file descriptors
// attached to messages.
//
// # Processes and ownership
//
// The master makes one socketpair per worker with [Pair], keeps one end as a
// [Conn] ([NewConn]) and hands the other to the worker as an inherited
// descriptor whose number is in the environment variable [EnvIPCFD] (with the
// slot and generation in [EnvWorkerID] and [EnvWorkerGen]; see [Env]). The worker
// turns that descriptor into its own Conn. Both ends then call [Conn.Handshake]:
// each sends a [Hello] with its protocol [Version], pid and identity, and checks
// the peer's. The package knows nothing of masters and workers beyond these
// names: either end may send any message.
//
// # Wire model
//
// docs/PROTOCOL.md describes the wire byte by byte for workers written in
// other languages; examples/pyclient is one, in Python.
//
// A frame is a 4-byte big-endian length and one msgpack envelope of that many
// bytes: the array [kind, id, reply_to, nfds, body]. kind is a [Kind]; id and
// reply_to pair requests with replies ([Conn.Call]); nfds counts the descriptors
// attached to the frame; body is exactly one msgpack value, raw, decoded by the
// receiver into the struct of its kind ([Message.Decode]; [Hello], [Drain],
// [Error], ...). Descriptors travel with SCM_RIGHTS on the frame's first byte: the
// sender ends a sendmsg(2) before every frame that carries descriptors and starts
// the next one at it, and the receiver checks that the descriptors it gets arrived
// with the bytes of the frame that declares them.
//
// [Conn.Send] does not write: it appends the encoded frame to a buffer, and the
// connection's writer goroutine writes the whole buffer whenever it is idle. A
// burst of small messages from any number of goroutines therefore leaves in a few
// large writes, while a lone message is written at once; the reader side likewise
// takes many frames per read. This is what makes the channel fast (see
// docs/BENCHMARKS.md). [Conn.Flush] waits until what was sent has reached the
// kernel, and [Conn.Counters] shows how well messages were coalesced. A round
// trip is bounded not by its system calls but by the thread wake-ups of the Go
// scheduler in each process, to wake the reader and to hand each message from
// the reader to the goroutine waiting for it; [Options].SpinWait trades CPU for
// avoiding them.
//
// # Lifecycle
//
// A Conn owns its socket, a reader and a writer goroutine, and every descriptor in
// transit: duplicates of the descriptors passed to Send until they are written,
// and received descriptors until [Conn.Recv] hands them over (the receiver then
// owns them and closes them). The first failure — the peer closing ([io.EOF], or
// [ErrTruncated] in the middle of a frame), an I/O error, or a protocol violation
// — ends the connection: the socket is closed, so the peer sees it too; pending
// calls fail; Recv still returns the messages received before it, then the error,
// which callers log. [Conn.Close] releases everything, on every path; it is
// idempotent, and every method returns [ErrClosed] after it.
//
// # Limits
//
// A peer cannot make a Conn panic or grow its memory without bound. A frame's
// length is checked against [Options].MaxFrameSize before anything is allocated
// for it ([ErrFrameTooLarge]); a frame may carry at most MaxFDs descriptors
// ([ErrTooManyFDs]), and more in one message are truncated by the kernel and
// closed; an undefined kind is [ErrUnknownKind]; malformed msgpack is a
// [*DecodeError], found by a non-recursive scan that refuses any container longer
// than the bytes left, so no declared length is ever allocated; descriptors
// that do not match their frame are [ErrProtocol]. [Message.Decode] turns a panic
// of the msgpack library on hostile input (the fuzzer found one) into a
// [*DecodeError]. Received messages wait for
// Recv in a queue bounded in messages, bytes and descriptors; when it is full the
// reader stops reading and the kernel's socket buffer pushes back on the peer.
// Send is bounded the same way by WriteBuffer and QueueFDs. A frame that has
// begun to arrive must end within [Options].FrameTimeout (10 s by default) or
// the connection fails with [ErrFrameTimeout]: a peer that sends half a frame
// and stops cannot hold the reader forever. The clock runs only while the
// reader waits for the peer, not while it waits for room in its own queue, and
// a connection may stay idle between frames for any time.
//
// # Balanced connections: the hand-off
//
// Under --balance round-robin and least-conn the master keeps every listening
// socket, accepts, and passes each connection to one worker. Every connection
// has exactly one owner at every moment, and the owner is the one that closes
// it:
//
//  1. The master accepts it and owns it. It picks a ready worker that asked
//     for that listener (a [KindListenReply] with Balanced set, naming the
//     listener's ID) and has fewer than its bound of unacknowledged
//     connections, sends a duplicate in a [KindConn] message (body: the
//     listener ID; up to 16 connections of one listener per message), and
//     keeps its own descriptor in that worker's list of outstanding ones. The
//     duplicate in flight is not an owner: if the worker dies, the kernel
//     closes it with the worker's end of the socket, and the master's copy
//     keeps the connection open.
//  2. The worker's reader takes the descriptors from the message and queues
//     them on the listener, or, when it has no such listener, the listener is
//     closed (also when they came after the close) or its queue is full,
//     sends them straight back in a KindConn message with those descriptors. It counts as "received" each one it
//     queued, and each one it gave back once the message carrying it is
//     queued for sending, and reports its running totals ([ConnReport]:
//     received, closed) in a KindConn message without descriptors.
//  3. The master reads the report and closes its copies of the oldest
//     outstanding connections up to Received: from then on the worker alone
//     owns them, and closes each when the program is done with it (counted in
//     Closed) or gives it back (a closing listener sends back what it had
//     queued and waits, briefly, until that is written before the process
//     may exit). A connection given back is the master's again, from step 1.
//  4. When the worker's connection ends (it died, or was reaped) before a
//     report covered a connection, the master hands its copy to another
//     worker. The master keeps no copy longer than that: nothing stays half
//     closed in the master, as with a Node cluster primary whose worker dies
//     before it takes a connection.
//
// The totals are running counts, never differences, so a report that is lost
// or late is made good by the next one. least-conn counts a worker's open
// connections as handed minus Closed. The window where two processes hold a
// descriptor is between the worker taking it and the master reading the
// report; a worker killed inside it had the connection in hand, and its
// client may see the connection fail (such connections are the only ones a
// kill may break).
//
// # Pitfalls
//
// Replies to [Conn.Call] go straight to their callers, but they are read in
// order behind other messages: when the receive queue is full, a reply waits
// until someone calls Recv. Handshake must come
// before the first Recv. Frames still buffered by Send are dropped by Close;
// Flush first. The socket is put in non-blocking mode, which belongs to its open
// file description: do not share the descriptor given to NewConn.
//
// Connections work on Linux only; on other systems the package compiles and
// [Pair] and [NewConn] return errors wrapping [errors.ErrUnsupported].
package ipc
