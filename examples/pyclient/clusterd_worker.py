"""A clusterd worker library in Python 3, standard library only.

It speaks the wire described in docs/PROTOCOL.md: frames of a 4-byte
big-endian length and a msgpack array [kind, id, reply_to, nfds, body] over
the unix socket whose descriptor is in CLUSTERD_IPC_FD, with descriptors
passed by SCM_RIGHTS. It carries the small msgpack encoder and decoder it
needs (PyPI's msgpack is not assumed to be installed).
"""

import datetime
import os
import socket
import struct

# Message kinds (docs/PROTOCOL.md, "Kinds").
HELLO, READY, HEARTBEAT, DRAIN, LISTEN_REQUEST, LISTEN_REPLY, CONN = 1, 2, 3, 4, 5, 6, 7
USER, REQUEST, RESPONSE, JOB, RESULT, STATS, ERROR = 8, 9, 10, 11, 12, 13, 14

VERSION = 1
MAX_FRAME = 1 << 20  # the Go side's default limit
MAX_FDS = 16


class ProtocolError(Exception):
    """The peer sent something this client cannot read."""


class RemoteError(Exception):
    """The peer answered a request with an error message."""

    def __init__(self, code, text):
        super().__init__("%s: %s" % (code, text))
        self.code, self.text = code, text


# --- msgpack, the subset the protocol uses ---------------------------------

def pack(v):
    """Encodes v (None, bool, int, float, str, bytes, list, tuple, dict,
    datetime) as msgpack."""
    out = bytearray()
    _pack(v, out)
    return bytes(out)


def _pack(v, out):
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, int):
        if -32 <= v <= 0x7F:
            out += struct.pack(">b", v)
        elif 0 < v <= 0xFFFFFFFF:
            out += struct.pack(">BI", 0xCE, v)
        elif 0 < v <= 0xFFFFFFFFFFFFFFFF:
            out += struct.pack(">BQ", 0xCF, v)
        elif -(1 << 63) <= v < 0:
            out += struct.pack(">Bq", 0xD3, v)
        else:
            raise ValueError("integer %d does not fit msgpack" % v)
    elif isinstance(v, float):
        out += struct.pack(">Bd", 0xCB, v)
    elif isinstance(v, str):
        b = v.encode("utf-8")
        _head(out, len(b), 0xA0, 31, 0xD9, 0xDA, 0xDB)
        out += b
    elif isinstance(v, (bytes, bytearray)):
        _head(out, len(v), None, 0, 0xC4, 0xC5, 0xC6)
        out += v
    elif isinstance(v, (list, tuple)):
        _head(out, len(v), 0x90, 15, None, 0xDC, 0xDD)
        for x in v:
            _pack(x, out)
    elif isinstance(v, dict):
        _head(out, len(v), 0x80, 15, None, 0xDE, 0xDF)
        for k, x in v.items():
            _pack(k, out)
            _pack(x, out)
    elif isinstance(v, datetime.datetime):
        # msgpack's timestamp extension (type -1), 96-bit form.
        ns = round(v.timestamp() * 1e9)
        out += bytes([0xC7, 12, 0xFF]) + struct.pack(">Iq", ns % 1000000000, ns // 1000000000)
    else:
        raise TypeError("cannot encode %r as msgpack" % type(v))


def _head(out, n, fix, fixmax, c8, c16, c32):
    if fix is not None and n <= fixmax:
        out.append(fix | n)
    elif c8 is not None and n <= 0xFF:
        out += struct.pack(">BB", c8, n)
    elif n <= 0xFFFF:
        out += struct.pack(">BH", c16, n)
    else:
        out += struct.pack(">BI", c32, n)


def unpack(b):
    """Decodes one msgpack value that fills b."""
    v, pos = _unpack(b, 0)
    if pos != len(b):
        raise ProtocolError("%d bytes after the msgpack value" % (len(b) - pos))
    return v


def _take(b, pos, n):
    if len(b) - pos < n:
        raise ProtocolError("msgpack value cut short at byte %d" % pos)
    return b[pos:pos + n], pos + n


def _unpack(b, pos):
    c, pos = _take(b, pos, 1)
    c = c[0]
    if c <= 0x7F:
        return c, pos
    if c >= 0xE0:
        return c - 0x100, pos
    if 0x80 <= c <= 0x8F:
        return _map(b, pos, c & 0x0F)
    if 0x90 <= c <= 0x9F:
        return _array(b, pos, c & 0x0F)
    if 0xA0 <= c <= 0xBF:
        s, pos = _take(b, pos, c & 0x1F)
        return s.decode("utf-8"), pos
    if c == 0xC0:
        return None, pos
    if c in (0xC2, 0xC3):
        return c == 0xC3, pos
    fixed = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
             0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
    if c in fixed:
        raw, pos = _take(b, pos, struct.calcsize(fixed[c]))
        return struct.unpack(fixed[c], raw)[0], pos
    sized = {0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
             0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
             0xDC: (2, "array"), 0xDD: (4, "array"), 0xDE: (2, "map"), 0xDF: (4, "map"),
             0xC7: (1, "ext"), 0xC8: (2, "ext"), 0xC9: (4, "ext")}
    if c in sized:
        size, what = sized[c]
        raw, pos = _take(b, pos, size)
        n = int.from_bytes(raw, "big")
        if what in ("array", "map"):
            if n > len(b) - pos:  # every element takes at least one byte
                raise ProtocolError("msgpack %s of %d elements in %d bytes" % (what, n, len(b) - pos))
            return (_array if what == "array" else _map)(b, pos, n)
        if what == "ext":
            t, pos = _take(b, pos, 1)
            data, pos = _take(b, pos, n)
            return _ext(struct.unpack(">b", t)[0], data), pos
        data, pos = _take(b, pos, n)
        return (bytes(data) if what == "bin" else data.decode("utf-8")), pos
    if 0xD4 <= c <= 0xD8:  # fixext 1, 2, 4, 8, 16
        t, pos = _take(b, pos, 1)
        data, pos = _take(b, pos, 1 << (c - 0xD4))
        return _ext(struct.unpack(">b", t)[0], data), pos
    raise ProtocolError("msgpack byte 0x%02x is not supported" % c)


def _array(b, pos, n):
    out = []
    for _ in range(n):
        v, pos = _unpack(b, pos)
        out.append(v)
    return out, pos


def _map(b, pos, n):
    out = {}
    for _ in range(n):
        k, pos = _unpack(b, pos)
        v, pos = _unpack(b, pos)
        out[k] = v
    return out, pos


def _ext(t, data):
    """Ext type -1 is msgpack's timestamp (Go's time.Time, as in a drain's
    deadline); it becomes an aware datetime. Other types stay (type, bytes)."""
    if t != -1:
        return (t, bytes(data))
    if len(data) == 4:
        sec, nsec = struct.unpack(">I", data)[0], 0
    elif len(data) == 8:
        v = struct.unpack(">Q", data)[0]
        sec, nsec = v & 0x3FFFFFFFF, v >> 34
    elif len(data) == 12:
        nsec, sec = struct.unpack(">Iq", data)
    else:
        raise ProtocolError("msgpack timestamp of %d bytes" % len(data))
    return datetime.datetime.fromtimestamp(sec + nsec / 1e9, datetime.timezone.utc)


# --- the connection --------------------------------------------------------

class Message:
    """One frame: kind, id, reply_to, body (decoded), fds (owned by the
    receiver, who closes them)."""

    def __init__(self, kind, id=0, reply_to=0, body=None, fds=()):
        self.kind, self.id, self.reply_to, self.body, self.fds = kind, id, reply_to, body, list(fds)

    def __repr__(self):
        return "Message(kind=%d, id=%d, reply_to=%d, body=%r, fds=%r)" % (
            self.kind, self.id, self.reply_to, self.body, self.fds)


class Conn:
    """The worker's end of the IPC connection to the master."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self.buf = bytearray()
        self.fds = []  # received descriptors not yet claimed by a frame
        self.next_id = 0
        self.pending = []  # messages read while waiting for a reply
        self.master = None
        self.hello = None  # this worker's hello, sent again for pause and resume
        self.held = None  # frames queued while the master upgrades (a list), or None
        self.unanswered = None  # the frame of the request call() waits for

    @classmethod
    def from_env(cls):
        """Returns the connection named by CLUSTERD_IPC_FD, or None outside
        clusterd."""
        v = os.environ.get("CLUSTERD_IPC_FD")
        if v is None:
            return None
        if not v.isdigit() or int(v) < 3:
            raise ValueError("CLUSTERD_IPC_FD=%r: not an inherited descriptor" % v)
        return cls(int(v))

    def send(self, kind, body=None, id=0, reply_to=0):
        env = bytearray([0x95])
        for n in (kind, id, reply_to, 0):
            _pack(n, env)
        env += pack(body)
        if len(env) > MAX_FRAME:
            raise ValueError("frame of %d bytes is above the limit %d" % (len(env), MAX_FRAME))
        frame = struct.pack(">I", len(env)) + env
        if self.held is not None:
            self.held.append(frame)  # paused: the master is replacing its image
        else:
            self.sock.sendall(frame)
        return frame

    def master_hello(self, m):
        """Acts on a hello the master sends after the handshake
        (docs/PROTOCOL.md 4a): with pause, answer with this worker's hello
        marked paused and hold every later frame; otherwise answer with the
        hello and send what was held, after the unanswered request when the
        hello comes from a new image of the master (another boot)."""
        body = m.body if isinstance(m.body, dict) else {}
        if body.get("pause"):
            if self.held is None:
                self.send(HELLO, dict(self.hello, paused=True))
                self.held = []
            return
        held, self.held = self.held or [], None
        self.send(HELLO, self.hello)
        if body.get("boot") != self.master.get("boot") and self.unanswered is not None:
            self.sock.sendall(self.unanswered)
        for frame in held:
            self.sock.sendall(frame)
        self.master = body

    def _fill(self):
        data, anc, flags, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(4 * (MAX_FDS + 1)))
        for level, typ, raw in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                n = len(raw) - len(raw) % 4
                self.fds += list(struct.unpack("%di" % (n // 4), raw[:n]))
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("descriptors truncated")
        if not data:
            if self.buf:
                raise ProtocolError("stream ended %d bytes into a frame" % len(self.buf))
            raise EOFError("master closed the connection")
        self.buf += data

    def buffered(self):
        """Reports whether a whole frame is already buffered, so that recv
        will not block."""
        return bool(self.pending) or (len(self.buf) >= 4 and len(self.buf) >= 4 + struct.unpack(">I", self.buf[:4])[0])

    def _read(self):
        while len(self.buf) < 4:
            self._fill()
        n = struct.unpack(">I", self.buf[:4])[0]
        if n > MAX_FRAME:
            raise ProtocolError("frame of %d bytes is above the limit %d" % (n, MAX_FRAME))
        while len(self.buf) < 4 + n:
            self._fill()
        env = unpack(bytes(self.buf[4:4 + n]))
        del self.buf[:4 + n]
        if not isinstance(env, list) or len(env) != 5:
            raise ProtocolError("envelope is not an array of 5")
        kind, id, reply_to, nfds, body = env
        if nfds > len(self.fds):
            raise ProtocolError("frame declares %d descriptors, %d arrived" % (nfds, len(self.fds)))
        fds, self.fds = self.fds[:nfds], self.fds[nfds:]
        return Message(kind, id, reply_to, body, fds)

    def recv(self):
        """Returns the next message from the master, blocking."""
        if self.pending:
            return self.pending.pop(0)
        return self._read()

    def handshake(self, worker_id, generation):
        self.hello = {"version": VERSION, "pid": os.getpid(), "worker_id": worker_id, "generation": generation}
        self.send(HELLO, self.hello)
        m = self._read()
        if m.kind != HELLO:
            raise ProtocolError("first message is kind %d, want a hello" % m.kind)
        if m.body.get("version") != VERSION:
            raise ProtocolError("master speaks version %r, this client %d" % (m.body.get("version"), VERSION))
        self.master = m.body
        return m.body

    def call(self, kind, body):
        """Sends a request and returns its reply; messages that arrive before
        it wait for recv, in order."""
        self.next_id += 1
        id = self.next_id
        frame = self.send(kind, body, id=id)
        if self.held is None:
            self.unanswered = frame
        while True:
            m = self._read()
            if m.kind == HELLO and m.reply_to == 0:
                self.master_hello(m)
                continue
            if m.reply_to == id:
                self.unanswered = None
                if m.kind == ERROR:
                    for fd in m.fds:
                        os.close(fd)
                    raise RemoteError(m.body.get("code"), m.body.get("text"))
                return m
            self.pending.append(m)

    def request(self, body):
        return self.call(REQUEST, body).body

    def listen(self, addr):
        """Asks the master for a listening socket (addr as in clusterd's
        --listen, e.g. "tcp://127.0.0.1:0") and returns it with the address
        it is bound to."""
        m = self.call(LISTEN_REQUEST, {"addr": addr})
        if m.kind != LISTEN_REPLY or len(m.fds) != 1:
            for fd in m.fds:
                os.close(fd)
            raise ProtocolError("listen answered by kind %d with %d descriptors" % (m.kind, len(m.fds)))
        return socket.socket(fileno=m.fds[0]), m.body.get("addr", "")


def worker_env():
    """Returns (slot, generation) from CLUSTERD_WORKER_ID and _GEN."""
    return int(os.environ.get("CLUSTERD_WORKER_ID", "-1")), int(os.environ.get("CLUSTERD_WORKER_GEN", "0"))
