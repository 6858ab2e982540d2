package ipc

import (
	"encoding/binary"
	"fmt"
)

// Wire format (see doc.go for the model):
//
//	frame    = length envelope
//	length   = uint32, big-endian: the number of bytes of envelope
//	envelope = msgpack array of 5: [kind, id, reply_to, nfds, body]
//
// kind, id, reply_to and nfds are non-negative msgpack integers (any width; the
// encoder uses the shortest); body is exactly one msgpack value (nil for none).
// A frame whose nfds is not 0 was written by one sendmsg(2) that starts at the
// frame's first byte and carries exactly nfds descriptors in one SCM_RIGHTS
// control message.
//
// The envelope is encoded and decoded here by hand rather than through the msgpack
// library's reflection: it is on the path of every message, and a fixed layout of
// four integers and a raw value is short to write and easy to fuzz.

const (
	// lengthSize is the size of a frame's length prefix.
	lengthSize = 4
	// envelopeLen is the number of elements of the envelope array.
	envelopeLen = 5
	// maxEnvelopeHead is the largest size of the envelope without its body: an
	// array32 header and four uint64s.
	maxEnvelopeHead = 5 + 4*9
)

// envelope is a decoded envelope; body aliases the decoded bytes.
type envelope struct {
	kind    Kind
	id      uint64
	replyTo uint64
	nfds    int
	// The body on the wire is head followed by body; head is empty but
	// for [Conn.SendJob], whose envelope of the job it holds.
	head []byte
	body []byte
}

// uintSize is the size of the shortest msgpack encoding of v.
func uintSize(v uint64) int {
	switch {
	case v <= 0x7f:
		return 1
	case v <= 0xff:
		return 2
	case v <= 0xffff:
		return 3
	case v <= 0xffffffff:
		return 5
	}
	return 9
}

// appendUint appends the shortest msgpack encoding of v.
func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= 0xff:
		return append(b, 0xcc, byte(v))
	case v <= 0xffff:
		return append(b, 0xcd, byte(v>>8), byte(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

// envelopeSize is the encoded size of e's envelope (without the length prefix).
func envelopeSize(e *envelope) int {
	n := 1 + uintSize(uint64(e.kind)) + uintSize(e.id) + uintSize(e.replyTo) + uintSize(uint64(e.nfds))
	if len(e.head)+len(e.body) == 0 {
		return n + 1
	}
	return n + len(e.head) + len(e.body)
}

// appendFrame appends the frame of e (length prefix and envelope) to b. The caller
// has checked e: a valid kind, a body that is one msgpack value, a size that fits
// the limit.
func appendFrame(b []byte, e *envelope) []byte {
	size := envelopeSize(e)
	b = binary.BigEndian.AppendUint32(b, uint32(size))
	b = append(b, 0x90|envelopeLen)
	b = appendUint(b, uint64(e.kind))
	b = appendUint(b, e.id)
	b = appendUint(b, e.replyTo)
	b = appendUint(b, uint64(e.nfds))
	if len(e.head)+len(e.body) == 0 {
		return append(b, 0xc0)
	}
	return append(append(b, e.head...), e.body...)
}

// decodeEnvelope decodes one envelope, which must fill b exactly. The body aliases
// b. Errors are a [*DecodeError], or wrap [ErrUnknownKind].
func decodeEnvelope(b []byte) (envelope, error) {
	var e envelope
	pos, n, err := readArrayLen(b, 0)
	if err != nil {
		return e, err
	}
	if n != envelopeLen {
		return e, &DecodeError{Offset: 0, Reason: fmt.Sprintf("envelope is an array of %d elements, want %d", n, envelopeLen)}
	}
	var kind, nfds uint64
	fields := [...]struct {
		dst  *uint64
		name string
	}{{&kind, "kind"}, {&e.id, "id"}, {&e.replyTo, "reply_to"}, {&nfds, "nfds"}}
	for _, f := range fields {
		if *f.dst, pos, err = readUint(b, pos); err != nil {
			if de, ok := err.(*DecodeError); ok {
				de.Reason += " (" + f.name + ")"
			}
			return e, err
		}
	}
	if kind > 0xff || !Kind(kind).Valid() {
		return e, fmt.Errorf("%w %d", ErrUnknownKind, kind)
	}
	e.kind = Kind(kind)
	if nfds > 1<<20 {
		// Far above any limit; checked here so that it fits an int everywhere.
		return e, fmt.Errorf("%w: frame declares %d", ErrTooManyFDs, nfds)
	}
	e.nfds = int(nfds)
	end, err := skipValue(b, pos)
	if err != nil {
		return e, err
	}
	if end != len(b) {
		return e, &DecodeError{Offset: end, Reason: fmt.Sprintf("%d bytes after the body", len(b)-end)}
	}
	if !(end-pos == 1 && b[pos] == 0xc0) {
		e.body = b[pos:end]
	}
	return e, nil
}

// readArrayLen reads a msgpack array header at b[pos:].
func readArrayLen(b []byte, pos int) (next int, n uint64, err error) {
	if pos >= len(b) {
		return pos, 0, &DecodeError{Offset: pos, Reason: "empty envelope"}
	}
	c := b[pos]
	switch {
	case c&0xf0 == 0x90:
		return pos + 1, uint64(c & 0x0f), nil
	case c == 0xdc:
		v, err := readBE(b, pos+1, 2)
		return pos + 3, v, err
	case c == 0xdd:
		v, err := readBE(b, pos+1, 4)
		return pos + 5, v, err
	}
	return pos, 0, &DecodeError{Offset: pos, Reason: fmt.Sprintf("envelope starts with 0x%02x, not an array", c)}
}

// readUint reads a non-negative msgpack integer of any width at b[pos:].
func readUint(b []byte, pos int) (v uint64, next int, err error) {
	if pos >= len(b) {
		return 0, pos, &DecodeError{Offset: pos, Reason: "envelope ends before its integers"}
	}
	c := b[pos]
	if c <= 0x7f {
		return uint64(c), pos + 1, nil
	}
	var size int
	signed := false
	switch c {
	case 0xcc, 0xcd, 0xce, 0xcf:
		size = 1 << (c - 0xcc)
	case 0xd0, 0xd1, 0xd2, 0xd3:
		size = 1 << (c - 0xd0)
		signed = true
	default:
		return 0, pos, &DecodeError{Offset: pos, Reason: fmt.Sprintf("0x%02x is not a non-negative integer", c)}
	}
	v, err = readBE(b, pos+1, size)
	if err != nil {
		return 0, pos, err
	}
	if signed && v>>(uint(size)*8-1) != 0 {
		return 0, pos, &DecodeError{Offset: pos, Reason: "negative integer in the envelope"}
	}
	return v, pos + 1 + size, nil
}

// readBE reads a big-endian unsigned integer of size bytes at b[pos:].
func readBE(b []byte, pos, size int) (uint64, error) {
	if len(b)-pos < size {
		return 0, &DecodeError{Offset: pos, Reason: fmt.Sprintf("%d-byte integer cut short", size)}
	}
	var v uint64
	for _, c := range b[pos : pos+size] {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// skipValue checks that b[pos:] starts with one complete msgpack value and returns
// the offset after it. It walks nested arrays and maps without recursion: it keeps
// the count of values still to read, and since every value takes at least one byte,
// a count larger than the bytes left is refused at once, so a hostile header can
// neither recurse deeply nor make anything allocate.
func skipValue(b []byte, pos int) (int, error) {
	pending := 1 // values still to read
	for pending > 0 {
		if pos >= len(b) {
			return pos, &DecodeError{Offset: pos, Reason: "value cut short"}
		}
		c := b[pos]
		at := pos
		pos++
		pending--
		var skip int64  // payload bytes to skip
		var more int64  // values to add (container elements)
		var lsize int   // size of a length field that follows c
		var extra int64 // fixed bytes after the length field (ext type)
		var per int64   // values per element (2 for maps), with lsize
		switch {
		case c <= 0x7f || c >= 0xe0: // positive and negative fixint
		case c <= 0x8f: // fixmap
			more = int64(c&0x0f) * 2
		case c <= 0x9f: // fixarray
			more = int64(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = int64(c & 0x1f)
		case c == 0xc0, c == 0xc2, c == 0xc3: // nil, false, true
		case c == 0xc1:
			return at, &DecodeError{Offset: at, Reason: "reserved byte 0xc1"}
		case c >= 0xc4 && c <= 0xc6: // bin 8/16/32
			lsize = 1 << (c - 0xc4)
		case c >= 0xc7 && c <= 0xc9: // ext 8/16/32
			lsize = 1 << (c - 0xc7)
			extra = 1
		case c == 0xca:
			skip = 4
		case c == 0xcb:
			skip = 8
		case c >= 0xcc && c <= 0xcf: // uint 8..64
			skip = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3: // int 8..64
			skip = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8: // fixext 1..16
			skip = 1 + 1<<(c-0xd4)
		case c >= 0xd9 && c <= 0xdb: // str 8/16/32
			lsize = 1 << (c - 0xd9)
		case c == 0xdc || c == 0xdd: // array 16/32
			lsize = 2 << (c - 0xdc)
			per = 1
		default: // 0xde, 0xdf: map 16/32
			lsize = 2 << (c - 0xde)
			per = 2
		}
		if lsize > 0 {
			n, err := readBE(b, pos, lsize)
			if err != nil {
				return at, &DecodeError{Offset: at, Reason: fmt.Sprintf("length of 0x%02x cut short", c)}
			}
			pos += lsize
			if per > 0 {
				more = int64(n) * per
			} else {
				skip = int64(n) + extra
			}
		}
		left := int64(len(b) - pos)
		if skip > left {
			return at, &DecodeError{Offset: at, Reason: fmt.Sprintf("0x%02x needs %d bytes, %d left", c, skip, left)}
		}
		pos += int(skip)
		if more > 0 {
			if more+int64(pending) > int64(len(b)-pos) {
				return at, &DecodeError{Offset: at, Reason: fmt.Sprintf("container of %d values in %d bytes", more, len(b)-pos)}
			}
			pending += int(more)
		}
	}
	return pos, nil
}

// checkBody reports whether body is nil or exactly one msgpack value.
func checkBody(body []byte) error {
	if len(body) == 0 {
		return nil
	}
	end, err := skipValue(body, 0)
	if err != nil {
		return err
	}
	if end != len(body) {
		return &DecodeError{Offset: end, Reason: fmt.Sprintf("%d bytes after the body's value", len(body)-end)}
	}
	return nil
}

// frameReader splits a byte stream into frames. The owner reads into space(),
// reports the bytes with advance, and takes complete frames with next. The buffer
// only grows to hold one frame whose length prefix has been checked against the
// limit, so its size is bounded by minBuffer + lengthSize + max.
type frameReader struct {
	buf  []byte
	r, w int   // buf[r:w] holds unconsumed bytes
	off  int64 // stream offset of buf[0]
	max  int   // frame size limit
}

// readBufferSize is the frame reader's normal buffer: large enough that one read
// brings in hundreds of small frames.
const readBufferSize = 64 << 10

func newFrameReader(max int) *frameReader {
	return &frameReader{buf: make([]byte, readBufferSize), max: max}
}

// next returns the envelope of the next complete frame (aliasing the buffer until
// the next call to space) and the stream offset of the frame's first byte. ok is
// false when no complete frame is buffered. A length over the limit is an error
// wrapping [ErrFrameTooLarge].
func (fr *frameReader) next() (env []byte, at int64, ok bool, err error) {
	avail := fr.w - fr.r
	if avail < lengthSize {
		return nil, 0, false, nil
	}
	n := binary.BigEndian.Uint32(fr.buf[fr.r:])
	if int64(n) > int64(fr.max) {
		return nil, 0, false, fmt.Errorf("%w: frame at byte %d declares %d bytes, limit %d", ErrFrameTooLarge, fr.off+int64(fr.r), n, fr.max)
	}
	if avail < lengthSize+int(n) {
		return nil, 0, false, nil
	}
	at = fr.off + int64(fr.r)
	env = fr.buf[fr.r+lengthSize : fr.r+lengthSize+int(n)]
	fr.r += lengthSize + int(n)
	return env, at, true, nil
}

// partial reports how many bytes of an incomplete frame are buffered.
func (fr *frameReader) partial() int { return fr.w - fr.r }

// pos is the stream offset of the first unconsumed byte.
func (fr *frameReader) pos() int64 { return fr.off + int64(fr.r) }

// end is the stream offset after the last buffered byte.
func (fr *frameReader) end() int64 { return fr.off + int64(fr.w) }

// space returns the free tail of the buffer to read into, after making room for
// the whole of the frame that is partly buffered (its length is checked by next
// before space is called).
func (fr *frameReader) space() []byte {
	if fr.r == fr.w {
		fr.off += int64(fr.w)
		fr.r, fr.w = 0, 0
		if len(fr.buf) > readBufferSize {
			// Give back the memory of a large frame.
			fr.buf = make([]byte, readBufferSize)
		}
	}
	need := lengthSize
	if fr.w-fr.r >= lengthSize {
		need += int(binary.BigEndian.Uint32(fr.buf[fr.r:]))
	}
	if need < readBufferSize/2 {
		need = readBufferSize / 2 // read a useful amount at a time
	}
	if len(fr.buf)-fr.r < need || len(fr.buf)-fr.w < readBufferSize/8 {
		if len(fr.buf) < need {
			nb := make([]byte, need)
			copy(nb, fr.buf[fr.r:fr.w])
			fr.buf = nb
		} else {
			copy(fr.buf, fr.buf[fr.r:fr.w])
		}
		fr.off += int64(fr.r)
		fr.w -= fr.r
		fr.r = 0
	}
	return fr.buf[fr.w:]
}

// advance records n bytes read into space().
func (fr *frameReader) advance(n int) { fr.w += n }
