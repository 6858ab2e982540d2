package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterd/clusterd/sockshare"
)

// Conn is one end of an IPC connection: a framed msgpack message stream over a
// connected unix stream socket, with descriptors attached to messages.
//
// A Conn runs two goroutines of its own, a writer and a reader, which exit when
// the connection fails or is closed; [Conn.Close] waits for them. Send, Call,
// Flush and Close are safe for concurrent use; Recv and Handshake are for one
// reader at a time.
type Conn struct {
	opts Options
	sock *socket

	nextID atomic.Uint64

	// Failure state. dead is closed at the first failure (err) or at Close.
	mu       sync.Mutex
	err      error
	closed   bool
	dead     chan struct{}
	sockErr  error // result of closing the socket
	closing  sync.Once
	closeErr error

	// Pending calls by request id; the reader hands each matching reply over.
	callMu sync.Mutex
	calls  map[uint64]*pendingCall

	in inbox

	// Write side. Send appends encoded frames to wbuf; the writer goroutine swaps
	// wbuf with wspare and writes it. A frame with descriptors starts a segment:
	// the writer ends the previous sendmsg before it, so the descriptors travel on
	// the frame's first byte.
	wmu       sync.Mutex
	wbuf      []byte
	wsegs     []segment
	wspare    []byte
	wsegSpare []segment
	wfds      int           // descriptors in wsegs and in the batch being written
	wsleeping bool          // the writer waits for a kick
	wkick     chan struct{} // capacity 1
	wqueued   int64         // bytes ever appended to wbuf
	wwritten  int64         // bytes ever handed to the kernel
	winflight int64         // bytes of the batch the writer is writing now
	wflushed  chan struct{} // closed and cleared when a batch is taken and when it is written; made by waiters
	wfdFree   [][]int       // descriptor slices of written segments, for SendFDs to reuse
	woob      []byte        // the writer's SCM_RIGHTS control buffer, reused
	wnoYield  int           // batches the writer takes without yielding first (writer only)

	// Hold (see [Conn.Hold]): while held, Send appends to hbuf, which the writer
	// never takes, and Resume moves it to wbuf.
	held    bool
	hbuf    []byte
	hsegs   []segment
	hfds    int
	resumed chan struct{} // closed by Resume; made by Hold
	onHeld  func()        // tests: called (c.wmu held) when a frame is held

	count counters

	// setReadDeadline bounds the reader's next reads (the socket's
	// SetReadDeadline); nil for the in-memory readers of tests.
	setReadDeadline func(time.Time) error

	wg sync.WaitGroup
}

// counters are the running totals behind [Conn.Counters].
type counters struct {
	sent, received           atomic.Uint64
	sentBytes, receivedBytes atomic.Uint64
	sentFDs, receivedFDs     atomic.Uint64
	writes, reads            atomic.Uint64
}

// Counters are a connection's running totals since [NewConn], for metrics and
// for seeing how well writes are coalesced (Sent/Writes messages per sendmsg).
type Counters struct {
	// Sent counts the messages queued by Send and Call.
	Sent uint64
	// Received counts the messages read from the peer.
	Received uint64
	// SentBytes and ReceivedBytes count frame bytes written to and read from
	// the socket.
	SentBytes, ReceivedBytes uint64
	// SentFDs and ReceivedFDs count descriptors passed each way.
	SentFDs, ReceivedFDs uint64
	// Writes and Reads count the sendmsg(2) and recvmsg(2) calls that moved
	// data.
	Writes, Reads uint64
}

// Counters returns the connection's running totals. It is safe for concurrent
// use, also after Close; each field is read atomically, not the set at once.
func (c *Conn) Counters() Counters {
	return Counters{
		Sent:          c.count.sent.Load(),
		Received:      c.count.received.Load(),
		SentBytes:     c.count.sentBytes.Load(),
		ReceivedBytes: c.count.receivedBytes.Load(),
		SentFDs:       c.count.sentFDs.Load(),
		ReceivedFDs:   c.count.receivedFDs.Load(),
		Writes:        c.count.writes.Load(),
		Reads:         c.count.reads.Load(),
	}
}

// pendingCall is a call waiting for its reply.
type pendingCall struct {
	ch     chan *Message
	req    *Message    // the request, kept for Resume to send again
	queued atomic.Bool // its frame went to the write buffer (not held)
}

// segment is a run of buffered frames that starts with a frame carrying fds (the
// writer's duplicates, closed once written).
type segment struct {
	start  int
	fds    []int
	pooled bool // fds came from wfdFree (SendFDs) and go back to it
}

// maxFDFree bounds the descriptor slices kept for SendFDs.
const maxFDFree = 64

// ErrWouldBlock is returned by [Conn.SendFDs] when the message does not fit
// in the write buffer now: the caller keeps its descriptors and may try
// another connection or later.
var ErrWouldBlock = errors.New("ipc: send would block")

// fixints are the one-byte msgpack bodies 0..127 (positive fixints) that
// SendFDs sends without encoding anything.
var fixints = func() (b [128]byte) {
	for i := range b {
		b[i] = byte(i)
	}
	return b
}()

// SendFDs queues one message of kind k whose body is the small integer tag
// (0..127, a one-byte msgpack value) and whose descriptors are duplicates of
// fds, and returns without waiting for the write. Unlike [Conn.Send] it never
// blocks: when the write buffer has no room for the frame or its
// descriptors, it returns [ErrWouldBlock] and queues nothing. It allocates
// nothing once the connection has sent a few such messages (the duplicates'
// slices are reused), which makes it the call for a hot path such as handing
// accepted connections to a worker. The caller keeps fds open and owned by
// it, as with Send; the duplicates are closed once written or when the
// connection ends. Safe for concurrent use.
func (c *Conn) SendFDs(k Kind, tag uint8, fds []int) error {
	if !k.Valid() {
		return fmt.Errorf("%w: send %s", ErrUnknownKind, k)
	}
	if tag > 127 {
		return fmt.Errorf("ipc: send %s: tag %d is above 127", k, tag)
	}
	if len(fds) == 0 || len(fds) > c.opts.MaxFDs {
		return fmt.Errorf("%w: send %s with %d, want 1 to %d", ErrTooManyFDs, k, len(fds), c.opts.MaxFDs)
	}
	e := envelope{kind: k, nfds: len(fds), body: fixints[tag : tag+1]}
	frame := lengthSize + envelopeSize(&e)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		return c.failureFor("send " + k.String())
	}
	if len(c.wbuf) > 0 && (len(c.wbuf)+frame > c.opts.WriteBuffer || c.wfds+len(fds) > c.opts.QueueFDs) {
		return ErrWouldBlock
	}
	var dups []int
	if n := len(c.wfdFree); n > 0 {
		dups, c.wfdFree = c.wfdFree[n-1][:0], c.wfdFree[:n-1]
	}
	dups, err := dupRawFDs(dups, fds)
	if err != nil {
		return fmt.Errorf("ipc: send %s: %w", k, err)
	}
	c.wsegs = append(c.wsegs, segment{start: len(c.wbuf), fds: dups, pooled: true})
	c.wfds += len(dups)
	c.wbuf = appendFrame(c.wbuf, &e)
	c.wqueued += int64(frame)
	c.count.sent.Add(1)
	if c.wsleeping {
		c.wsleeping = false
		select {
		case c.wkick <- struct{}{}:
		default:
		}
	}
	return nil
}

// NewConn returns a Conn over f, a connected unix stream socket such as either
// end of [Pair] or the descriptor named by [EnvIPCFD]. NewConn takes ownership of
// f: it duplicates the descriptor into a close-on-exec, non-blocking one owned by
// the Conn and closes f, also when it returns an error. The socket's open file
// description is switched to non-blocking mode; do not share it with anyone else.
//
// NewConn starts the Conn's reader and writer. The first message each end sends
// should be its hello: call [Conn.Handshake] before anything else.
func NewConn(f *os.File, opts Options) (*Conn, error) {
	if f == nil {
		return nil, errors.New("ipc: new conn: nil file")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		_ = f.Close() // NewConn owns f even on error; the options error is the news
		return nil, err
	}
	sock, err := newSocket(f, opts.SpinWait)
	if err != nil {
		return nil, err
	}
	c := &Conn{
		opts:  opts,
		sock:  sock,
		dead:  make(chan struct{}),
		calls: make(map[uint64]*pendingCall),
		wkick: make(chan struct{}, 1),
	}
	c.setReadDeadline = sock.setReadDeadline
	c.in.init(opts)
	c.wg.Add(2)
	go c.writeLoop()
	go c.readLoop()
	return c, nil
}

// isDead reports whether the connection has failed or been closed.
func (c *Conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// failure is the error methods return once the connection is dead.
func (c *Conn) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return c.err
}

// failureFor is the error of operation op on a dead connection: ErrClosed after
// Close, the recorded failure (already naming itself) otherwise, with a clean end
// of stream spelt out.
func (c *Conn) failureFor(op string) error {
	err := c.failure()
	if err == io.EOF {
		return fmt.Errorf("ipc: %s: peer closed the connection: %w", op, err)
	}
	return err
}

// fail records the first failure, marks the connection dead and closes the
// socket, which wakes the reader and the writer.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.dead)
	c.mu.Unlock()
	cerr := c.sock.close()
	c.mu.Lock()
	c.sockErr = cerr
	c.mu.Unlock()
}

// Err returns the error that ended the connection: [io.EOF] when the peer closed
// it cleanly between frames, [ErrClosed] after Close, the protocol or I/O error
// otherwise. It returns nil while the connection works. It does not block.
func (c *Conn) Err() error {
	if !c.isDead() {
		return nil
	}
	return c.failure()
}

// Done returns a channel that is closed when the connection fails or is closed;
// [Conn.Err] then says why. Messages already received can still be taken with
// Recv after a failure (but not after Close).
func (c *Conn) Done() <-chan struct{} { return c.dead }

// Close closes the connection: the socket, the reader and writer goroutines (it
// waits for them), and every descriptor the Conn still holds (received messages
// nobody took with Recv, duplicates of descriptors waiting to be sent). Frames not
// yet written are discarded: call [Conn.Flush] first to wait for them. Pending and
// later calls of every method return [ErrClosed]. Close is idempotent; every call
// returns the result of the first, the error of closing the socket.
func (c *Conn) Close() error {
	c.closing.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.fail(ErrClosed)
		c.wg.Wait()
		c.in.close()
		c.mu.Lock()
		if c.sockErr != nil {
			c.closeErr = fmt.Errorf("ipc: close: %w", c.sockErr)
		}
		c.mu.Unlock()
	})
	return c.closeErr
}

// Send queues m to be written and returns without waiting for the write: small
// messages sent in a burst, from one goroutine or many, leave in few system calls.
// It blocks only while Options.WriteBuffer bytes (or Options.QueueFDs
// descriptors) wait to be written. Messages from one goroutine arrive in the order
// they were sent. Send is safe for concurrent use.
//
// Send writes m.ID and m.ReplyTo as they are (0 means none). It duplicates
// m.FDs (close-on-exec, without changing their blocking mode) before returning:
// the caller keeps its files and may close them at once; the duplicates are
// closed once written or when the connection ends.
//
// Errors: a message that breaks a limit ([ErrUnknownKind], [ErrTooManyFDs],
// [ErrFrameTooLarge], a body that is not one msgpack value: [*DecodeError]) is
// refused and the connection stays usable. Once the connection is dead Send
// returns the error that ended it ([ErrClosed] after Close). A write error found
// after Send returned ends the connection and is reported by the next Send,
// Flush, Recv and [Conn.Err].
func (c *Conn) Send(m *Message) error {
	if m == nil {
		return errors.New("ipc: send: nil message")
	}
	return c.send(m, m.ID, nil)
}

// send queues m with id; call is the pending call m is the request of (nil
// for a message that is not), marked queued when its frame goes to the write
// buffer rather than the held one.
func (c *Conn) send(m *Message, id uint64, call *pendingCall) error {
	e, fds, frame, err := c.prepare(m, id)
	if err != nil {
		return err
	}
	return c.queue(&e, fds, frame, call)
}

// SendJob sends a [KindJob] message with ID id whose body is the [Job]
// {attempt, body}: what Send(&Message{Kind: KindJob, ID: id, Body:
// EncodeJob(Job{Attempt: attempt, Body: body})}) sends, without encoding the
// job's envelope into a buffer first. body (one msgpack value, or empty
// for nil) is copied once, into the connection's write buffer, before
// SendJob returns.
func (c *Conn) SendJob(id uint64, attempt int, body []byte) error {
	if len(body) > 0 {
		if err := checkBody(body); err != nil {
			return fmt.Errorf("%w (send %s body)", err, KindJob)
		}
	}
	var head [1 + 8 + 9 + 5 + 1]byte
	e := envelope{kind: KindJob, id: id, head: appendJobHead(head[:0], attempt, len(body) == 0), body: body}
	size := envelopeSize(&e)
	if size > c.opts.MaxFrameSize {
		return fmt.Errorf("%w: send %s of %d bytes, limit %d", ErrFrameTooLarge, KindJob, size, c.opts.MaxFrameSize)
	}
	return c.queue(&e, nil, lengthSize+size, nil)
}

// queue writes e's frame into the write buffer (or, while held, the held
// one), waiting for room; fds are the descriptors that go with it (the
// Conn's duplicates), frame its size.
func (c *Conn) queue(e *envelope, fds []int, frame int, call *pendingCall) error {
	c.wmu.Lock()
	for {
		if c.isDead() {
			c.wmu.Unlock()
			closeRawFDs(fds)
			return c.failureFor("send " + e.kind.String())
		}
		// Room in the write buffer, or while held in the held one (Resume
		// makes room there).
		queued, queuedFDs := len(c.wbuf), c.wfds
		if c.held {
			queued, queuedFDs = len(c.hbuf), c.hfds
		}
		if queued == 0 || (queued+frame <= c.opts.WriteBuffer && queuedFDs+len(fds) <= c.opts.QueueFDs) {
			break
		}
		ch := c.resumed
		if !c.held {
			ch = c.flushedLocked()
		}
		c.wmu.Unlock()
		select {
		case <-ch:
		case <-c.dead:
		}
		c.wmu.Lock()
	}
	if c.held {
		if len(fds) > 0 {
			c.hsegs = append(c.hsegs, segment{start: len(c.hbuf), fds: fds})
			c.hfds += len(fds)
		}
		c.hbuf = appendFrame(c.hbuf, e)
		if c.onHeld != nil {
			c.onHeld()
		}
	} else {
		c.queueLocked(e, fds, frame)
		if call != nil {
			call.queued.Store(true)
		}
	}
	c.count.sent.Add(1)
	c.wmu.Unlock()
	return nil
}

// prepare checks m against the limits and duplicates its descriptors; it
// returns the frame's envelope, the duplicates and the frame's size.
func (c *Conn) prepare(m *Message, id uint64) (envelope, []int, int, error) {
	if !m.Kind.Valid() {
		return envelope{}, nil, 0, fmt.Errorf("%w: send %s", ErrUnknownKind, m.Kind)
	}
	if len(m.FDs) > c.opts.MaxFDs {
		return envelope{}, nil, 0, fmt.Errorf("%w: send %s with %d, limit %d", ErrTooManyFDs, m.Kind, len(m.FDs), c.opts.MaxFDs)
	}
	if err := checkBody(m.Body); err != nil {
		return envelope{}, nil, 0, fmt.Errorf("%w (send %s body)", err, m.Kind)
	}
	e := envelope{kind: m.Kind, id: id, replyTo: m.ReplyTo, nfds: len(m.FDs), body: m.Body}
	size := envelopeSize(&e)
	if size > c.opts.MaxFrameSize {
		return envelope{}, nil, 0, fmt.Errorf("%w: send %s of %d bytes, limit %d", ErrFrameTooLarge, m.Kind, size, c.opts.MaxFrameSize)
	}
	var fds []int
	if len(m.FDs) > 0 {
		var err error
		if fds, err = dupFiles(m.FDs); err != nil {
			return envelope{}, nil, 0, fmt.Errorf("ipc: send %s: %w", m.Kind, err)
		}
	}
	return e, fds, lengthSize + size, nil
}

// prepareMaybe is prepare for a message that may be nil (nothing to send).
func (c *Conn) prepareMaybe(m *Message) (envelope, []int, int, error) {
	if m == nil {
		return envelope{}, nil, 0, nil
	}
	return c.prepare(m, m.ID)
}

// queueLocked appends a frame to the write buffer and wakes the writer.
// c.wmu is held.
func (c *Conn) queueLocked(e *envelope, fds []int, frame int) {
	if len(fds) > 0 {
		c.wsegs = append(c.wsegs, segment{start: len(c.wbuf), fds: fds})
		c.wfds += len(fds)
	}
	c.wbuf = appendFrame(c.wbuf, e)
	c.wqueued += int64(frame)
	c.kickLocked()
}

// kickLocked wakes the writer if it sleeps. c.wmu is held.
func (c *Conn) kickLocked() {
	if c.wsleeping {
		c.wsleeping = false
		select {
		case c.wkick <- struct{}{}:
		default:
		}
	}
}

// ErrHeld is returned by [Conn.Hold] on a connection already held.
var ErrHeld = errors.New("ipc: connection already held")

// Hold queues last (nil: nothing) as the last frame the writer writes, and
// from then on keeps every message sent in memory, unwritten, until
// [Conn.Resume]: the stream then ends at a frame boundary that both ends
// know of, which is what a master replacing its own image needs (the
// socket crosses the exec; the queues do not). Senders block, as they do
// on a full write buffer, once Options.WriteBuffer bytes are held. Reading
// goes on. Use [Conn.Flush] to wait until last is written.
func (c *Conn) Hold(last *Message) error {
	e, fds, frame, err := c.prepareMaybe(last)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		closeRawFDs(fds)
		return c.failureFor("hold")
	}
	if c.held {
		closeRawFDs(fds)
		return ErrHeld
	}
	if last != nil {
		c.queueLocked(&e, fds, frame)
		c.count.sent.Add(1)
	}
	c.held = true
	c.resumed = make(chan struct{})
	return nil
}

// Resume ends a [Conn.Hold]: it queues first (nil: nothing), then, with
// resend, again every pending [Conn.Call] whose request was written before
// the hold (the peer that will answer may be a new image that never read
// it), then what was sent while held, in order. On a connection not held
// it queues first only.
func (c *Conn) Resume(first *Message, resend bool) error {
	e, fds, frame, err := c.prepareMaybe(first)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		closeRawFDs(fds)
		return c.failureFor("resume")
	}
	if first != nil {
		c.queueLocked(&e, fds, frame)
		c.count.sent.Add(1)
	}
	if !c.held {
		return nil
	}
	if resend {
		c.callMu.Lock()
		ids := make([]uint64, 0, len(c.calls))
		for id, p := range c.calls {
			if p.queued.Load() {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		for _, id := range ids {
			e, fds, frame, err := c.prepare(c.calls[id].req, id)
			if err != nil {
				continue // it passed these checks when first sent
			}
			c.queueLocked(&e, fds, frame)
		}
		c.callMu.Unlock()
	}
	base := len(c.wbuf)
	for _, sg := range c.hsegs {
		sg.start += base
		c.wsegs = append(c.wsegs, sg)
	}
	c.wfds += c.hfds
	c.wbuf = append(c.wbuf, c.hbuf...)
	c.wqueued += int64(len(c.hbuf))
	c.hbuf, c.hsegs, c.hfds = nil, nil, 0
	c.held = false
	close(c.resumed)
	c.kickLocked()
	return nil
}

// flushedLocked returns the channel closed when the writer next takes or finishes
// a batch.
func (c *Conn) flushedLocked() chan struct{} {
	if c.wflushed == nil {
		c.wflushed = make(chan struct{})
	}
	return c.wflushed
}

// Flush blocks until every message that Send queued before the call has been
// handed to the kernel, the connection fails (its error), or ctx is done
// (ctx.Err(); the messages stay queued). It is safe for concurrent use.
func (c *Conn) Flush(ctx context.Context) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return fmt.Errorf("ipc: flush: %w", ErrClosed)
	}
	c.wmu.Lock()
	target := c.wqueued
	for c.wwritten < target {
		// A connection that failed while the writer still had these bytes
		// in a sendmsg (the peer read them and closed at once) has not
		// failed them: wait for that write's own result.
		if c.isDead() && c.wwritten+c.winflight < target {
			c.wmu.Unlock()
			return c.failureFor("flush")
		}
		ch := c.flushedLocked()
		dead := c.dead
		if c.isDead() {
			dead = nil // the writer closes ch when that write returns
		}
		c.wmu.Unlock()
		select {
		case <-ch:
		case <-dead:
		case <-ctx.Done():
			return fmt.Errorf("ipc: flush: %w", ctx.Err())
		}
		c.wmu.Lock()
	}
	c.wmu.Unlock()
	return nil
}

// coalesceBelow is the size of a batch under which the writer lets the
// goroutines ready to run go first, so that what they send joins the batch.
const coalesceBelow = 16 << 10

// coalesceBackoff is how many batches the writer takes as they are after
// a yield that added nothing to its batch.
const coalesceBackoff = 8

// writeLoop is the writer goroutine: it writes whatever Send has buffered, as one
// batch, whenever it is idle, so a burst of sends is coalesced into the batch
// written while the previous one was in the kernel.
func (c *Conn) writeLoop() {
	defer c.wg.Done()
	for {
		c.wmu.Lock()
		for len(c.wbuf) == 0 && !c.isDead() {
			c.wsleeping = true
			c.wmu.Unlock()
			select {
			case <-c.wkick:
			case <-c.dead:
			}
			c.wmu.Lock()
		}
		if c.wnoYield > 0 {
			c.wnoYield--
		} else if n := len(c.wbuf); n < coalesceBelow && !c.isDead() {
			// The sender that woke the writer made it the next goroutine
			// to run on its thread, ahead of the senders woken with it
			// (the callers whose answers one read brought in, in a
			// master): written now, the batch would be that one frame,
			// a sendmsg(2) each. Let them run first. When that brought
			// nothing (one request at a time), stop for a while: it
			// costs the lone frame a pass through the scheduler.
			c.wmu.Unlock()
			runtime.Gosched()
			c.wmu.Lock()
			if len(c.wbuf) == n {
				c.wnoYield = coalesceBackoff
			}
		}
		if c.isDead() {
			c.wmu.Unlock()
			c.dropWrites()
			return
		}
		data, segs := c.wbuf, c.wsegs
		c.wbuf, c.wsegs = c.wspare[:0], c.wsegSpare[:0]
		c.wspare, c.wsegSpare = nil, nil
		c.winflight = int64(len(data))
		if c.wflushed != nil {
			// Senders waiting for room can fill the emptied buffer while this
			// batch is written.
			close(c.wflushed)
			c.wflushed = nil
		}
		c.wmu.Unlock()

		nfds, err := c.writeBatch(data, segs)

		c.wmu.Lock()
		c.winflight = 0
		c.wfds -= nfds
		if err == nil {
			c.wwritten += int64(len(data))
			c.count.sentBytes.Add(uint64(len(data)))
		}
		if cap(data) <= 2*c.opts.WriteBuffer {
			c.wspare = data[:0]
		}
		for _, s := range segs {
			if s.pooled && len(c.wfdFree) < maxFDFree {
				c.wfdFree = append(c.wfdFree, s.fds[:0])
			}
		}
		clear(segs)
		c.wsegSpare = segs[:0]
		if c.wflushed != nil {
			close(c.wflushed)
			c.wflushed = nil
		}
		c.wmu.Unlock()
		if err != nil {
			c.fail(fmt.Errorf("ipc: write: %w", err))
			c.dropWrites()
			return
		}
	}
}

// writeBatch writes data, one sendmsg per segment so that each segment's
// descriptors ride on its first byte, and closes every segment's descriptors. It
// returns the number of descriptors closed.
func (c *Conn) writeBatch(data []byte, segs []segment) (nfds int, err error) {
	calls := 0
	write := func(p, oob []byte) {
		var n int
		n, err = c.sock.write(p, oob)
		calls += n
	}
	pos := 0
	for i, s := range segs {
		if err == nil && s.start > pos {
			write(data[pos:s.start], nil)
		}
		end := len(data)
		if i+1 < len(segs) {
			end = segs[i+1].start
		}
		if err == nil {
			c.woob = appendRights(c.woob[:0], s.fds)
			write(data[s.start:end], c.woob)
			if err == nil {
				c.count.sentFDs.Add(uint64(len(s.fds)))
			}
		}
		closeRawFDs(s.fds)
		nfds += len(s.fds)
		pos = end
	}
	if err == nil && pos < len(data) {
		write(data[pos:], nil)
	}
	c.count.writes.Add(uint64(calls))
	return nfds, err
}

// dropWrites closes the descriptors of frames that will never be written.
func (c *Conn) dropWrites() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, s := range c.wsegs {
		closeRawFDs(s.fds)
		c.wfds -= len(s.fds)
	}
	c.wsegs = nil
	c.wbuf = nil
	for _, s := range c.hsegs {
		closeRawFDs(s.fds)
	}
	c.hsegs, c.hbuf, c.hfds = nil, nil, 0
	if c.wflushed != nil {
		close(c.wflushed)
		c.wflushed = nil
	}
}

// Recv returns the next message from the peer, blocking until one arrives. The
// caller owns the descriptors of the returned message ([Message.CloseFDs]).
// Replies to pending [Conn.Call]s go to their callers, not to Recv. Recv is for
// one reader at a time: messages are delivered in the order they were received.
//
// After the peer closed the connection, or broke the protocol, Recv first returns
// the messages received before that, then the error: [io.EOF] for a clean close
// between frames, or an error wrapping [ErrTruncated], [ErrFrameTooLarge],
// [ErrTooManyFDs], [ErrUnknownKind], [ErrProtocol] or a [*DecodeError]. After
// Close it returns [ErrClosed].
func (c *Conn) Recv() (*Message, error) {
	return c.recv(context.Background())
}

func (c *Conn) recv(ctx context.Context) (*Message, error) {
	m, err := c.in.pop(ctx)
	if err != nil {
		if err == errQueueEnd {
			return nil, c.failure()
		}
		return nil, err
	}
	return m, nil
}

// Call sends m as a request and blocks until the peer's reply arrives: the first
// message whose ReplyTo is the request's ID. Call gives the request a fresh ID of
// its own (m.ID is ignored and m is not modified). A reply of kind [KindError] is
// returned as a [*RemoteError]; the caller owns the descriptors of any other
// reply. Cancelling ctx stops the wait and returns ctx's error (a reply that
// arrives later is delivered to Recv). Call is safe for concurrent use, but needs
// a goroutine to keep calling Recv while the receive queue is full (replies are
// read in order behind the queued messages).
func (c *Conn) Call(ctx context.Context, m *Message) (*Message, error) {
	if m == nil {
		return nil, errors.New("ipc: call: nil message")
	}
	id := c.nextID.Add(1)
	ch := make(chan *Message, 1)
	call := &pendingCall{ch: ch, req: m}
	c.callMu.Lock()
	c.calls[id] = call
	c.callMu.Unlock()
	if err := c.send(m, id, call); err != nil {
		c.forget(id)
		return nil, err
	}
	select {
	case r := <-ch:
		return callResult(r)
	case <-ctx.Done():
		if !c.forget(id) {
			return callResult(<-ch)
		}
		return nil, fmt.Errorf("ipc: call %s: %w", m.Kind, ctx.Err())
	case <-c.dead:
		if !c.forget(id) {
			return callResult(<-ch)
		}
		return nil, c.failureFor("call " + m.Kind.String())
	}
}

// forget removes a pending call; false means the reader already took it and is
// handing its reply over.
func (c *Conn) forget(id uint64) bool {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	_, ok := c.calls[id]
	delete(c.calls, id)
	return ok
}

func callResult(r *Message) (*Message, error) {
	if r.Kind != KindError {
		return r, nil
	}
	_ = r.CloseFDs() // an error reply has no use for descriptors; nothing to report
	var e Error
	if err := r.Decode(&e); err != nil {
		return nil, fmt.Errorf("%w (error reply to a call)", err)
	}
	return nil, &RemoteError{Code: e.Code, Text: e.Text}
}

// Handshake sends local as this end's hello and waits for the peer's, which must
// be the first message the peer sent. A zero local.Version means [Version]. It
// returns the peer's hello, or an error: wrapping [ErrVersion] when the peer
// speaks another version, [ErrProtocol] when its first message is not a hello,
// ctx's error when ctx is done first. Call it once, before the first Recv and
// with no concurrent Recv; after an error, close the connection.
func (c *Conn) Handshake(ctx context.Context, local Hello) (Hello, error) {
	if local.Version == 0 {
		local.Version = Version
	}
	m, err := NewMessage(KindHello, &local)
	if err != nil {
		return Hello{}, fmt.Errorf("%w (handshake)", err)
	}
	if err := c.Send(m); err != nil {
		return Hello{}, err
	}
	r, err := c.in.pop(ctx)
	if err == errQueueEnd {
		return Hello{}, c.failureFor("handshake")
	}
	if err != nil {
		return Hello{}, err
	}
	if r.Kind != KindHello || len(r.FDs) > 0 {
		_ = r.CloseFDs() // a broken hello's descriptors are of no use; the error says why
		return Hello{}, fmt.Errorf("%w: handshake: first message is %s with %d descriptors, want a hello", ErrProtocol, r.Kind, len(r.FDs))
	}
	var peer Hello
	if err := r.Decode(&peer); err != nil {
		return Hello{}, fmt.Errorf("%w (peer's hello)", err)
	}
	if peer.Version != Version {
		return peer, fmt.Errorf("%w: handshake: peer speaks version %d, this end %d", ErrVersion, peer.Version, Version)
	}
	return peer, nil
}

// readLoop is the reader goroutine.
func (c *Conn) readLoop() {
	defer c.wg.Done()
	err := c.readFrames(c.sock.read, c.deliver)
	c.fail(err)
	c.in.finish()
}

// fdBatch is the descriptors one recvmsg returned, with the stream range of the
// bytes that came with them: they belong to a frame starting in [start, end).
type fdBatch struct {
	start, end int64
	fds        []int
}

// readFrames reads with read and hands every frame to deliver until an error,
// which it returns. (The fuzz test drives it with an in-memory read.)
func (c *Conn) readFrames(read func(p, oob []byte) (int, []int, error), deliver func(*Message) error) error {
	fr := newFrameReader(c.opts.MaxFrameSize)
	// Room for one descriptor more than the limit, so that a peer sending too
	// many is seen (or the kernel reports MSG_CTRUNC).
	oob := make([]byte, sockshare.RightsSpace(c.opts.MaxFDs+1))
	var batches []fdBatch
	defer func() {
		for _, b := range batches {
			closeRawFDs(b.fds)
		}
	}()
	// fdErr is a read that brought more descriptors than allowed (they are
	// closed): it ends the connection once the frames before it are delivered.
	var fdErr error
	// The frame timeout: armed is the stream offset of the partial frame the
	// read deadline is set for, -1 while none is set. It is armed just before a
	// read, after every complete frame was delivered, so that time spent
	// waiting for room in the inbox does not count against the peer.
	armed := int64(-1)
	for {
		for {
			env, at, ok, err := fr.next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			e, err := decodeEnvelope(env)
			if err != nil {
				return fmt.Errorf("%w (frame at byte %d)", err, at)
			}
			if e.nfds > c.opts.MaxFDs {
				return fmt.Errorf("%w: frame at byte %d declares %d, limit %d", ErrTooManyFDs, at, e.nfds, c.opts.MaxFDs)
			}
			var fds []int
			if e.nfds > 0 {
				if len(batches) == 0 || at < batches[0].start || at >= batches[0].end || len(batches[0].fds) != e.nfds {
					if fdErr != nil {
						return fdErr
					}
					got := 0
					if len(batches) > 0 {
						got = len(batches[0].fds)
					}
					return fmt.Errorf("%w: frame at byte %d declares %d descriptors, %d arrived with it", ErrProtocol, at, e.nfds, got)
				}
				fds = batches[0].fds
				batches = batches[1:]
			} else if len(batches) > 0 && batches[0].end <= at+int64(lengthSize+len(env)) {
				// The descriptors came with bytes up to this frame's end, and no
				// frame before claimed them: no later frame can.
				return fmt.Errorf("%w: %d descriptors arrived with no frame declaring them (frame at byte %d)", ErrProtocol, len(batches[0].fds), at)
			}
			m := &Message{Kind: e.kind, ID: e.id, ReplyTo: e.replyTo}
			if len(e.body) > 0 {
				m.Body = cloneBody(e.body)
			}
			if len(fds) > 0 {
				m.FDs = newFiles(fds)
				c.count.receivedFDs.Add(uint64(len(fds)))
			}
			c.count.received.Add(1)
			if err := deliver(m); err != nil {
				_ = m.CloseFDs() // the connection is ending; its error is the news
				return err
			}
		}
		if fdErr != nil {
			return fdErr
		}
		// Every complete frame is dispatched: what is buffered is the start of at
		// most one frame, so at most one batch can still be waiting, for it.
		if len(batches) > 1 || (len(batches) == 1 && batches[0].end <= fr.pos()) {
			return fmt.Errorf("%w: %d descriptors arrived with no frame declaring them", ErrProtocol, len(batches[0].fds))
		}
		p := fr.space()
		start := fr.end()
		if c.setReadDeadline != nil {
			switch at := fr.pos(); {
			case fr.partial() > 0 && at != armed:
				if err := c.setReadDeadline(time.Now().Add(c.opts.FrameTimeout)); err != nil {
					return fmt.Errorf("ipc: read: set deadline: %w", err)
				}
				armed = at
			case fr.partial() == 0 && armed >= 0:
				if err := c.setReadDeadline(time.Time{}); err != nil {
					return fmt.Errorf("ipc: read: clear deadline: %w", err)
				}
				armed = -1
			}
		}
		n, fds, rerr := read(p, oob)
		if n > 0 {
			c.count.reads.Add(1)
			c.count.receivedBytes.Add(uint64(n))
		}
		if errors.Is(rerr, ErrTooManyFDs) {
			fdErr, rerr = rerr, nil
		}
		switch {
		case len(fds) > c.opts.MaxFDs:
			closeRawFDs(fds)
			fdErr = fmt.Errorf("%w: %d descriptors in one message, limit %d", ErrTooManyFDs, len(fds), c.opts.MaxFDs)
		case len(fds) > 0 && n == 0:
			closeRawFDs(fds)
			return fmt.Errorf("%w: %d descriptors without data", ErrProtocol, len(fds))
		case len(fds) > 0:
			batches = append(batches, fdBatch{start: start, end: start + int64(n), fds: fds})
		}
		fr.advance(n)
		if rerr != nil {
			if armed >= 0 && errors.Is(rerr, os.ErrDeadlineExceeded) {
				return fmt.Errorf("%w: %d bytes of the frame at byte %d arrived, the rest not within %v",
					ErrFrameTimeout, fr.partial(), fr.pos(), c.opts.FrameTimeout)
			}
			if rerr == io.EOF {
				if k := fr.partial(); k > 0 {
					return fmt.Errorf("%w: stream ended %d bytes into a frame", ErrTruncated, k)
				}
				if len(batches) > 0 {
					return fmt.Errorf("%w: %d descriptors arrived with no frame declaring them", ErrProtocol, len(batches[0].fds))
				}
				return io.EOF
			}
			return rerr
		}
	}
}

// deliver hands m to the pending call it answers, or queues it for Recv (waiting
// for room: that is the backpressure on the peer).
func (c *Conn) deliver(m *Message) error {
	if m.ReplyTo != 0 {
		c.callMu.Lock()
		p, ok := c.calls[m.ReplyTo]
		if ok {
			delete(c.calls, m.ReplyTo)
		}
		c.callMu.Unlock()
		if ok {
			p.ch <- m
			return nil
		}
	}
	return c.in.push(m, c.dead)
}

// FD returns the descriptor number of the connection's socket without
// changing its mode, for a program that must keep the socket across an
// exec of its own image (clear its close-on-exec flag and build a new Conn
// on it there). The number is valid while the Conn is open.
func (c *Conn) FD() (int, error) {
	fd, err := c.sock.fd()
	if err != nil {
		return -1, fmt.Errorf("ipc: fd: %w", err)
	}
	return fd, nil
}
