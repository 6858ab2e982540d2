package ipc

import (
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// The Job body is on the path of every job, twice (the master encodes it,
// the worker decodes it), so it is encoded and decoded here by hand as the
// envelope is (frame.go), not through the msgpack library's reflection. The
// encoder writes the bytes msgpack.Marshal writes for a Job; the decoder
// reads the map the encoder writes, and leaves anything else (other keys,
// other layouts, a nil body) to the library, so that every body decodes as
// the library decodes it.

// Keys of the Job map, as msgpack fixstr.
var (
	jobKeyAttempt = []byte("\xa7attempt")
	jobKeyBody    = []byte("\xa4body")
)

// EncodeJob encodes j as the body of a [KindJob]. j.Body is copied as it is
// (nil when empty), as [Encode] copies a Job's body: it must be one msgpack
// value, which [Conn.Send] checks with the rest of the message.
func EncodeJob(j Job) msgpack.RawMessage {
	return AppendJob(make([]byte, 0, 1+len(jobKeyAttempt)+9+len(jobKeyBody)+max(len(j.Body), 1)), j)
}

// AppendJob appends the encoding [EncodeJob] returns to b: a sender that
// reuses b once [Conn.Send] returned (Send copies the body into the
// connection's buffer) allocates nothing per job.
func AppendJob(b []byte, j Job) []byte {
	return append(appendJobHead(b, j.Attempt, len(j.Body) == 0), j.Body...)
}

// appendJobHead appends what comes before a Job's body in its encoding:
// all of it when the body is empty (nil).
func appendJobHead(b []byte, attempt int, empty bool) []byte {
	b = append(b, 0x82)
	b = append(b, jobKeyAttempt...)
	b = appendInt(b, int64(attempt))
	b = append(b, jobKeyBody...)
	if empty {
		b = append(b, 0xc0)
	}
	return b
}

// appendInt appends the shortest msgpack encoding of v, as the msgpack
// library writes an int: the uint formats for v >= 0, the int ones below.
func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16:
		return append(b, 0xd1, byte(v>>8), byte(v))
	case v >= math.MinInt32:
		return append(b, 0xd2, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	u := uint64(v)
	return append(b, 0xd3, byte(u>>56), byte(u>>48), byte(u>>40), byte(u>>32), byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
}

// DecodeJob decodes m's body as a [Job], as m.Decode(&j) would; j.Body
// aliases m.Body. A failure is a [*DecodeError].
func (m *Message) DecodeJob(j *Job) error {
	if fast, ok := decodeJob(m.Body); ok {
		*j = fast
		return nil
	}
	// The library decodes into a Job of its own, so that j does not escape
	// to the heap in the callers, which the fast path serves.
	slow := new(Job)
	err := m.Decode(slow)
	*j = *slow
	return err
}

// decodeJob reads the map EncodeJob writes: at most one "attempt" integer
// and one "body" value other than nil, in either order; ok is false for
// anything else.
func decodeJob(b []byte) (j Job, ok bool) {
	if len(b) == 0 || b[0] < 0x80 || b[0] > 0x82 {
		return Job{}, false
	}
	n := int(b[0] & 0x0f)
	pos := 1
	var seenAttempt, seenBody bool
	for range n {
		switch {
		case hasKey(b[pos:], jobKeyAttempt) && !seenAttempt:
			pos += len(jobKeyAttempt)
			v, next, ok := readInt(b, pos)
			if !ok {
				return Job{}, false
			}
			j.Attempt, pos, seenAttempt = v, next, true
		case hasKey(b[pos:], jobKeyBody) && !seenBody:
			pos += len(jobKeyBody)
			if pos >= len(b) || b[pos] == 0xc0 {
				return Job{}, false
			}
			end, err := skipValue(b, pos)
			if err != nil {
				return Job{}, false
			}
			j.Body, pos, seenBody = msgpack.RawMessage(b[pos:end:end]), end, true
		default:
			return Job{}, false
		}
	}
	if pos != len(b) {
		return Job{}, false
	}
	return j, true
}

func hasKey(b, key []byte) bool {
	return len(b) >= len(key) && string(b[:len(key)]) == string(key)
}

// readInt reads a msgpack integer of any format at b[pos:] that fits an int.
func readInt(b []byte, pos int) (v int, next int, ok bool) {
	if pos >= len(b) {
		return 0, pos, false
	}
	c := b[pos]
	switch {
	case c <= 0x7f:
		return int(c), pos + 1, true
	case c >= 0xe0:
		return int(int8(c)), pos + 1, true
	case c >= 0xcc && c <= 0xcf:
		size := 1 << (c - 0xcc)
		u, err := readBE(b, pos+1, size)
		if err != nil || u > math.MaxInt {
			return 0, pos, false
		}
		return int(u), pos + 1 + size, true
	case c >= 0xd0 && c <= 0xd3:
		size := 1 << (c - 0xd0)
		u, err := readBE(b, pos+1, size)
		if err != nil {
			return 0, pos, false
		}
		shift := 64 - 8*uint(size) // sign-extend from size bytes
		return int(int64(u<<shift) >> shift), pos + 1 + size, true
	}
	return 0, pos, false
}
