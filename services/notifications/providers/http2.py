"""A lean HTTP/2 client for the push providers: one connection per origin, many concurrent streams.

APNs requires HTTP/2 and FCM serves it; both are used as one long-lived connection carrying every push as
a stream of its own. httpx (httpcore, anyio, h2) cost about 1.4 ms of CPU per push, and the h2 library
alone 0.2-0.6 ms (debug-log calls, header validation, the stream state machine, HPACK's dynamic table
and Huffman coding, all in Python): more than the rest of the service together (decision 0039). This is
the client side of HTTP/2 (RFC 9113) that a push client needs, on an asyncio Protocol:

* requests: HEADERS (+ CONTINUATION past the peer's frame size) and DATA within the peer's flow-control
  windows; at most the peer's SETTINGS_MAX_CONCURRENT_STREAMS streams open, the rest wait for a slot;
* everything the peer may send: SETTINGS (acknowledged; the ones that bind us applied), PING (answered),
  WINDOW_UPDATE, RST_STREAM (that request fails), GOAWAY (streams above its last id fail unprocessed,
  the others finish; new requests open a new connection), padding, PRIORITY (ignored), unknown frame
  types (ignored); a protocol violation closes the connection with GOAWAY and fails what is in flight;
* our receive windows are opened wide at the start and replenished at half, on the connection and on
  any stream whose answer is that long;
* HPACK (RFC 7541): responses are decoded by `HpackDecoder` below (the static and dynamic tables, size
  updates, every literal form, Huffman coding by a 4-bit state machine), every header block in order,
  even for a stream we gave up on; `hpack.Decoder` cost about 40 us per response, most of it in Huffman
  decoding the apns-id. Requests are encoded as literals without indexing and without Huffman coding
  (6.2.2), names from the static table where it has them. That is valid for any decoder, keeps no
  encoder state, and is cheap on both sides; the price is header bytes (about 600 per push instead of
  about 200 with indexing), nothing next to one TLS record per push.
* `request_many`: a batch's requests that need not wait (a free stream slot, the body within the
  windows) are opened and written at once, and only their futures awaited: no task per request. The
  others (connecting, waiting for a slot or a window) run as a coroutine each;
* deadlines: one timer per connection, at the earliest deadline of its open streams, cancels the
  overdue ones with RST_STREAM (no `asyncio.timeout` per request);
* writes made in the same turn of the event loop (a batch's pushes, started together) go out in one
  `transport.write`.

Over https it negotiates h2 by ALPN (and refuses a server that does not); over plain http (the local
fake) it speaks h2 with prior knowledge. Failures that leave a request without an answer raise
`Http2Error`: the caller retries, as it would after any network error.
"""

from __future__ import annotations

import abc
import asyncio
import json
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings (RFC 9113 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 3, 4, 5

# Error codes (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0, 1, 2, 3, 6
CANCEL, COMPRESSION_ERROR = 8, 9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
OUR_MAX_FRAME = 16_384  # the default: we do not advertise a larger one
STREAM_WINDOW = 1 << 20  # what we let the peer send on one stream before it hears from us
CONNECTION_WINDOW = 1 << 24  # and on the connection
MAX_HEADER_BLOCK = 1 << 20  # a peer's header block (with CONTINUATION) larger than this is an attack

# HPACK static table (RFC 7541 appendix A): the names we may send, and the fields sent whole.
_STATIC_NAME = {
    b":authority": 1, b":method": 2, b":path": 4, b":scheme": 6, b"accept": 19, b"authorization": 23,
    b"content-length": 28, b"content-type": 31, b"user-agent": 58,
}  # fmt: skip
_METHOD = {b"GET": b"\x82", b"POST": b"\x83"}
_SCHEME = {b"http": b"\x86", b"https": b"\x87"}


# -- HPACK decoding (RFC 7541) ------------------------------------------------------------------------------

STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)  # fmt: skip
EOS = 256
MAX_HEADER_LIST = 256 * 1024  # decoded; a small block can name a table entry many times over


class HpackError(ValueError):
    pass


def _huffman_nibbles() -> tuple[list[tuple[int, bytes]], frozenset[int]]:
    """The Huffman code (appendix B) as a state machine over 4-bit input. A state is the tree node the
    bits so far lead to (0: the root; 256: an error, absorbing); machine[state << 4 | nibble] = (next
    state, what it emits). A string may end at the root or after at most 7 padding bits, all ones (the
    EOS code's prefix): the accepting states."""
    tree: list[list[int]] = [[0, 0]]  # node -> [child on 0, child on 1]; a child < 0 is the leaf ~symbol
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                tree[node][bit] = ~symbol
            else:
                if tree[node][bit] == 0:
                    tree.append([0, 0])
                    tree[node][bit] = len(tree) - 1
                node = tree[node][bit]
    assert len(tree) == HUFFMAN_ERROR  # a full tree of 257 leaves has 256 inner nodes
    machine = []
    for state in range(HUFFMAN_ERROR + 1):
        for nibble in range(16):
            node, emit = state, b""
            for shift in (3, 2, 1, 0):
                if node == HUFFMAN_ERROR:
                    break
                child = tree[node][(nibble >> shift) & 1]
                if child >= 0:
                    node = child
                elif ~child == EOS:
                    node, emit = HUFFMAN_ERROR, b""
                else:
                    node, emit = 0, emit + bytes((~child,))
            machine.append((node, emit))
    accepting, node = {0}, 0
    for _ in range(7):
        node = tree[node][1]
        accepting.add(node)
    return machine, frozenset(accepting)


HUFFMAN_ERROR = 256
_NIBBLES, _ACCEPTING = _huffman_nibbles()
_HUFFMAN_STATES: list[int] = []  # the machine over whole bytes, made from the nibbles' on first use
_HUFFMAN_EMITS: list[bytes] = []


def _huffman_bytes() -> None:
    nibbles = _NIBBLES
    for state in range(HUFFMAN_ERROR + 1):
        for byte in range(256):
            middle, first = nibbles[state << 4 | byte >> 4]
            end, second = nibbles[middle << 4 | byte & 0xF]
            _HUFFMAN_STATES.append(end)
            _HUFFMAN_EMITS.append(b"" if end == HUFFMAN_ERROR else first + second)


def huffman_decode(data: bytes) -> bytes:
    if not _HUFFMAN_STATES:
        _huffman_bytes()
    states, emits, out, state = _HUFFMAN_STATES, _HUFFMAN_EMITS, bytearray(), 0
    for byte in data:
        at = state << 8 | byte
        state = states[at]
        out += emits[at]
    if state not in _ACCEPTING:  # the error state included
        raise HpackError("EOS in a Huffman-coded string" if state == HUFFMAN_ERROR else "bad Huffman padding")
    return bytes(out)


class HpackDecoder:
    """One connection's header block decoder: names and values as latin-1 text (bytes for bytes)."""

    def __init__(self, max_table_size: int = 4096) -> None:
        self.limit = max_table_size  # our SETTINGS_HEADER_TABLE_SIZE: the most a size update may set
        self.max_size = max_table_size
        self.size = 0
        self.table: deque[tuple[str, str]] = deque()  # the dynamic table, newest first

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        try:
            return self._decode(block)
        except IndexError as exc:
            raise HpackError("a truncated header block") from exc

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        at, end, total = 0, len(block), 0
        while at < end:
            first = block[at]
            if first & 0x80:  # indexed field (6.1)
                if first == 0xFF:
                    index, at = self._integer(block, at, 7)
                else:
                    index, at = first & 0x7F, at + 1
                if 0 < index <= 61:
                    name, value = STATIC_TABLE[index - 1]
                else:
                    name, value = self._entry(index)
            elif first & 0x40:  # literal with incremental indexing (6.2.1)
                index, at = self._integer(block, at, 6)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, at = self._string(block, at)
                value, at = self._string(block, at)
                self._add(name, value)
            elif first & 0x20:  # dynamic table size update (6.3): only before the first field
                if fields:
                    raise HpackError("a table size update after a field")
                size, at = self._integer(block, at, 5)
                if size > self.limit:
                    raise HpackError(f"a table size of {size} over our {self.limit}")
                self.max_size = size
                self._evict(0)
                continue
            else:  # literal without indexing or never indexed (6.2.2, 6.2.3)
                index, at = self._integer(block, at, 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, at = self._string(block, at)
                value, at = self._string(block, at)
            total += len(name) + len(value) + 32
            if total > MAX_HEADER_LIST:
                raise HpackError("a header list too large")
            fields.append((name, value))
        return fields

    @staticmethod
    def _integer(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
        mask = (1 << prefix_bits) - 1
        value = block[at] & mask
        at += 1
        if value < mask:
            return value, at
        shift = 0
        while True:
            byte = block[at]
            at += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, at
            shift += 7
            if shift > 28:
                raise HpackError("an integer too large")

    def _string(self, block: bytes, at: int) -> tuple[str, int]:
        huffman = block[at] & 0x80
        length, at = self._integer(block, at, 7)
        if at + length > len(block):
            raise HpackError("a truncated string")
        raw = block[at : at + length]
        return (huffman_decode(raw) if huffman else raw).decode("latin-1"), at + length

    def _entry(self, index: int) -> tuple[str, str]:
        if 0 < index <= 61:
            return STATIC_TABLE[index - 1]
        if 61 < index <= 61 + len(self.table):
            return self.table[index - 62]
        raise HpackError(f"no table entry {index}")

    def _add(self, name: str, value: str) -> None:
        size = len(name) + len(value) + 32
        if size > self.max_size:  # 4.4: an entry larger than the table empties it
            self.table.clear()
            self.size = 0
            return
        self._evict(size)
        self.table.appendleft((name, value))
        self.size += size

    def _evict(self, room: int) -> None:
        while self.size + room > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32


# -- the client --------------------------------------------------------------------------------------------


class Http2Error(Exception):
    """The request got no (whole) answer: connection failure, protocol error, reset stream, timeout."""


class ConnectError(Http2Error):
    pass


class ConnectionClosed(Http2Error):
    pass


class StreamReset(Http2Error):
    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset by the server (error code {code})")
        self.code = code


class RequestTimeout(Http2Error):
    pass


class _Unusable(Exception):
    """This connection takes no new stream (GOAWAY, closed, ids used up): nothing was sent; use another."""


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with `first`'s high bits set on the first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(name: bytes, value: bytes) -> bytes:
    """One header field, HPACK-encoded as a literal without indexing, no Huffman (RFC 7541 6.2.2)."""
    index = _STATIC_NAME.get(name)
    head = _integer(index, 4, 0) if index else b"\x00" + _integer(len(name), 7, 0) + name
    return head + _integer(len(value), 7, 0) + value


def fields(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(field(n, v) for n, v in headers)


@dataclass(frozen=True, slots=True)
class Response:
    status_code: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps its last value
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class _Stream:
    __slots__ = ("body", "deadline", "future", "headers", "id", "received", "send_window", "status")

    def __init__(
        self, stream_id: int, send_window: int, future: asyncio.Future[Response], deadline: float
    ) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.future = future
        self.deadline = deadline  # loop time: no whole answer by then, the stream is cancelled
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.received = 0  # DATA bytes not yet given back with a WINDOW_UPDATE


class ProtocolViolation(Exception):
    """The peer broke RFC 9113: the connection ends with GOAWAY and this error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FramedConnection(asyncio.Protocol, abc.ABC):
    """What both ends of an HTTP/2 connection do with frames (this client, and the local push fake's
    server, providers/fake_server.py): read them off the socket, each header block with its
    CONTINUATIONs decoded in order, PING answered, malformed frames refused with GOAWAY; and write them,
    the frames of one turn of the event loop in one write. What a frame means to a stream is the
    subclass's (the hooks below)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.max_frame = OUR_MAX_FRAME  # the peer's SETTINGS_MAX_FRAME_SIZE: the most we send in one
        self.decoder = HpackDecoder()
        self.block: bytearray | None = None  # a header block still waiting for CONTINUATION
        self.block_stream = 0
        self.block_end_stream = False
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.flush_scheduled = False

    # -- the hooks -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _headers(self, stream_id: int, decoded: list[tuple[str, str]], end_stream: bool) -> None: ...

    @abc.abstractmethod
    def _data(self, flags: int, stream_id: int, payload: bytes) -> None: ...

    @abc.abstractmethod
    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None: ...

    @abc.abstractmethod
    def _window_update(self, stream_id: int, payload: bytes) -> None: ...

    @abc.abstractmethod
    def _stream_reset(self, stream_id: int, code: int) -> None: ...

    @abc.abstractmethod
    def _goaway(self, last_stream_id: int, code: int) -> None: ...

    @abc.abstractmethod
    def _close_with(self, code: int, message: str) -> None: ...

    # -- frames in -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        inbox = self.inbox
        inbox += data
        at, end = 0, len(inbox)
        try:
            while end - at >= 9:
                length = int.from_bytes(inbox[at : at + 3])
                if length > OUR_MAX_FRAME:
                    raise ProtocolViolation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - at - 9 < length:
                    break
                kind, flags = inbox[at + 3], inbox[at + 4]
                stream_id = int.from_bytes(inbox[at + 5 : at + 9]) & MAX_STREAM_ID
                payload = bytes(inbox[at + 9 : at + 9 + length])
                at += 9 + length
                self._frame_received(kind, flags, stream_id, payload)
        except ProtocolViolation as exc:
            self._close_with(exc.code, f"protocol error: {exc}")
            return
        except Exception as exc:  # a bug here must not leave the streams in flight waiting forever
            self._close_with(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            raise
        del inbox[:at]

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is not None and (kind != CONTINUATION or stream_id != self.block_stream):
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block interrupted")
        if kind == DATA:
            if stream_id == 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "HEADERS on stream 0")
            start, stop = 0, len(payload)
            if flags & PADDED:
                start, stop = 1, stop - payload[0]
            if flags & PRIORITY_FLAG:
                start += 5
            if stop < start:
                raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than the frame")
            self.block, self.block_stream = bytearray(payload[start:stop]), stream_id
            self.block_end_stream = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                self._header_block_done()
        elif kind == CONTINUATION:
            if self.block is None:
                raise ProtocolViolation(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self.block += payload
            if len(self.block) > MAX_HEADER_BLOCK:
                raise ProtocolViolation(PROTOCOL_ERROR, "a header block too large")
            if flags & END_HEADERS:
                self._header_block_done()
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise ProtocolViolation(PROTOCOL_ERROR, "a malformed PING")
            if not flags & ACK:
                self._write(self._frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ProtocolViolation(PROTOCOL_ERROR, "a malformed RST_STREAM")
            self._stream_reset(stream_id, int.from_bytes(payload))
        elif kind == GOAWAY:
            if stream_id != 0 or len(payload) < 8:
                raise ProtocolViolation(PROTOCOL_ERROR, "a malformed GOAWAY")
            self._goaway(int.from_bytes(payload[:4]) & MAX_STREAM_ID, int.from_bytes(payload[4:8]))
        elif kind == PUSH_PROMISE:  # our client turns push off, and a client never sends one
            raise ProtocolViolation(PROTOCOL_ERROR, "PUSH_PROMISE")
        elif kind == PRIORITY and stream_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "PRIORITY on stream 0")
        # PRIORITY and unknown frame types are ignored (RFC 9113 4.1, 5.5).

    def _header_block_done(self) -> None:
        assert self.block is not None
        block, stream_id, end_stream = bytes(self.block), self.block_stream, self.block_end_stream
        self.block = None
        try:  # every block, in order: the decoder's table follows the peer's encoder
            decoded = self.decoder.decode(block)
        except HpackError as exc:
            raise ProtocolViolation(COMPRESSION_ERROR, f"undecodable header block: {exc}") from exc
        self._headers(stream_id, decoded, end_stream)

    @staticmethod
    def unpadded(flags: int, payload: bytes) -> bytes:
        """A DATA frame's data (RFC 9113 6.1); its padding still counts against the windows."""
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    # -- frames out ------------------------------------------------------------------------------------

    @staticmethod
    def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3) + bytes((kind, flags)) + stream_id.to_bytes(4) + payload

    def _write(self, data: bytes) -> None:
        self.outbox += data
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self.outbox))
        self.outbox.clear()

    def _send_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        """HEADERS, then CONTINUATION past the peer's frame size."""
        flags = END_STREAM if end_stream else 0
        if len(block) <= self.max_frame:
            self._write(self._frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        chunks = [block[i : i + self.max_frame] for i in range(0, len(block), self.max_frame)]
        self._write(self._frame(HEADERS, flags, stream_id, chunks[0]))
        for i, chunk in enumerate(chunks[1:], 2):
            self._write(self._frame(CONTINUATION, END_HEADERS if i == len(chunks) else 0, stream_id, chunk))


class _Connection(FramedConnection):
    """One HTTP/2 connection (the client side)."""

    def __init__(self, authority: bytes, scheme: bytes) -> None:
        super().__init__()
        self.request_head = _METHOD[b"POST"] + _SCHEME[scheme] + field(b":authority", authority)
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_streams = 100  # until the peer's SETTINGS say otherwise (we wait for them)
        self.initial_window = DEFAULT_WINDOW  # the peer's, for our new streams
        self.send_window = DEFAULT_WINDOW  # the connection's
        self.received = 0  # connection-level DATA bytes not yet given back
        self.ready: asyncio.Future[None] = self.loop.create_future()  # the peer's first SETTINGS
        self.failure: Exception | None = None  # set when the connection is gone
        self.draining = False  # takes no new stream (GOAWAY, or a stream timed out on it)
        self.changed = asyncio.Event()  # a stream slot, flow-control window or write buffer freed
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None  # at the earliest deadline of the open streams

    # -- state -------------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.failure is None and not self.draining and self.next_id <= MAX_STREAM_ID

    def _wake(self) -> None:
        self.changed.set()

    async def _changed(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self._fail(ConnectError("the server did not agree to HTTP/2 (ALPN)"))
            transport.close()
            return
        settings = ((ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, STREAM_WINDOW))
        self._write(
            PREFACE
            + self._frame(SETTINGS, 0, 0, b"".join(i.to_bytes(2) + v.to_bytes(4) for i, v in settings))
            + self._frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW).to_bytes(4))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionClosed(f"connection lost: {exc}" if exc else "connection closed by the server"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    # -- frames in -----------------------------------------------------------------------------------------

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)  # all of it counts against the windows, padding included
        data = self.unpadded(flags, payload)
        self.received += length
        if self.received >= CONNECTION_WINDOW // 2:
            self._write(self._frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we reset or gave up on: its bytes still counted for the connection
        stream.body += data
        if flags & END_STREAM:
            self._finish(stream_id, None)
            return
        stream.received += length
        if stream.received >= STREAM_WINDOW // 2:
            self._write(self._frame(WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4)))
            stream.received = 0

    def _headers(self, stream_id: int, decoded: list[tuple[str, str]], end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.status == 0:  # the response's headers (else trailers, ignored)
            headers = dict(decoded)
            status = headers.pop(":status", "")
            if not status.isdigit():
                self._reset(stream_id, PROTOCOL_ERROR, Http2Error("a response without :status"))
                return
            if 100 <= int(status) < 200:
                if end_stream:
                    self._reset(stream_id, PROTOCOL_ERROR, Http2Error("only an informational response"))
                return  # informational: the final response follows
            stream.status, stream.headers = int(status), headers
        if end_stream:
            self._finish(stream_id, None)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "SETTINGS on a stream")
        if len(payload) % 6 or (flags & ACK and payload):
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a malformed SETTINGS")
        if flags & ACK:
            return
        for at in range(0, len(payload), 6):
            setting, value = int.from_bytes(payload[at : at + 2]), int.from_bytes(payload[at + 2 : at + 6])
            if setting == MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif setting == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta, self.initial_window = value - self.initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolViolation(FLOW_CONTROL_ERROR, "a stream window too large")
            elif setting == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ProtocolViolation(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.max_frame = value
            elif setting == ENABLE_PUSH and value > 1:
                raise ProtocolViolation(PROTOCOL_ERROR, "ENABLE_PUSH out of range")
            # HEADER_TABLE_SIZE binds an encoder that indexes; ours never does. Others are advisory.
        self._write(self._frame(SETTINGS, ACK, 0, b""))
        if not self.ready.done():
            self.ready.set_result(None)
        self._wake()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        increment = int.from_bytes(payload) & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise ProtocolViolation(PROTOCOL_ERROR, "a zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "the connection window too large")
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.send_window += increment
            if increment == 0 or stream.send_window > MAX_WINDOW:
                self._reset(stream_id, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR,
                            Http2Error("a bad WINDOW_UPDATE from the server"))  # fmt: skip
        self._wake()

    def _goaway(self, last_stream_id: int, code: int) -> None:
        self.draining = True
        for stream_id in [s for s in self.streams if s > last_stream_id]:
            self._finish(stream_id, ConnectionClosed(f"GOAWAY (error code {code}): not processed"))
        if not self.streams:
            self._close_transport()
        self._wake()

    # -- streams ---------------------------------------------------------------------------------------

    def _finish(self, stream_id: int, error: Exception | None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.future.done():
            if error is not None:
                stream.future.set_exception(error)
            elif stream.status == 0:
                stream.future.set_exception(Http2Error("the stream ended without a response"))
            else:
                stream.future.set_result(Response(stream.status, stream.headers, bytes(stream.body)))
        if self.draining and not self.streams:
            self._close_transport()
        self._wake()

    def _stream_reset(self, stream_id: int, code: int) -> None:
        self._finish(stream_id, StreamReset(code))

    def _reset(self, stream_id: int, code: int, error: Exception) -> None:
        if stream_id in self.streams:
            self._write(self._frame(RST_STREAM, 0, stream_id, code.to_bytes(4)))
            self._finish(stream_id, error)

    def _expire(self) -> None:
        """Cancel the streams past their deadline (RST_STREAM), and wait for the next one. A connection
        that let one time out may be dead without knowing it (a dropped NAT mapping, a stuck peer): it
        takes no new stream, and closes when the ones on it are done."""
        self.timer = None
        now = self.loop.time()
        expired = [i for i, s in self.streams.items() if s.deadline <= now]
        for stream_id in expired:
            self._reset(stream_id, CANCEL, RequestTimeout("no answer in time"))
        if expired:
            self.draining = True  # new requests open a new connection
            if not self.streams:
                self._close_transport()
            self._wake()
        if self.streams and self.failure is None:
            self.timer = self.loop.call_at(min(s.deadline for s in self.streams.values()), self._expire)

    def _close_transport(self) -> None:
        """Close, after what is queued to go out (a last RST_STREAM, WINDOW_UPDATE or SETTINGS ACK)."""
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.failure is None:
            self.failure = error
        for stream_id in list(self.streams):
            self._finish(stream_id, error)
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody may be waiting for it
        self._wake()

    def _close_with(self, code: int, message: str) -> None:
        # The last stream id is the last one the server opened that we processed: none (push is off).
        self._write(self._frame(GOAWAY, 0, 0, bytes(4) + code.to_bytes(4) + message.encode()[:200]))
        self._flush()
        self._fail(ConnectionClosed(message))
        if self.transport is not None:
            self.transport.close()

    # -- requests --------------------------------------------------------------------------------------

    def start(self, path: bytes, header_fields: bytes, body: bytes, deadline: float) -> _Stream | None:
        """Open a stream and send the whole request now if nothing has to wait (a free stream slot, the
        body within the flow-control windows); else None, and nothing was sent."""
        if (
            len(self.streams) >= self.max_streams
            or len(body) > self.send_window
            or len(body) > self.initial_window
            or self.paused
            or not self.usable
        ):
            return None
        stream = self._open(path, header_fields, body, deadline)
        self._send_body(stream, body, 0)
        return stream

    def _open(self, path: bytes, header_fields: bytes, body: bytes, deadline: float) -> _Stream:
        """A new stream, and its HEADERS."""
        stream_id, self.next_id = self.next_id, self.next_id + 2
        stream = _Stream(stream_id, self.initial_window, self.loop.create_future(), deadline)
        self.streams[stream_id] = stream
        if self.timer is None or deadline < self.timer.when():
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._expire)
        block = (
            self.request_head
            + field(b":path", path)
            + header_fields
            + field(b"content-length", str(len(body)).encode())
        )
        self._send_headers(stream_id, block, end_stream=not body)
        return stream

    def _send_body(self, stream: _Stream, body: bytes, sent: int) -> int:
        """DATA frames for the body from `sent` on, as far as the windows allow now; how far it got."""
        while sent < len(body):
            size = min(len(body) - sent, stream.send_window, self.send_window, self.max_frame)
            if size <= 0:
                break
            stream.send_window -= size
            self.send_window -= size
            sent += size
            last = END_STREAM if sent == len(body) else 0
            self._write(
                self._frame(DATA, last, stream.id, body[sent - size : sent] if size < len(body) else body)
            )
        return sent

    async def exchange(self, path: bytes, header_fields: bytes, body: bytes, deadline: float) -> Response:
        """Send one request on a new stream, waiting for a slot and the windows as needed, and wait for its
        whole answer."""
        while self.usable and (len(self.streams) >= self.max_streams or self.paused):
            await self._changed()
        if not self.usable:
            raise _Unusable
        stream = self._open(path, header_fields, body, deadline)
        try:
            sent = self._send_body(stream, body, 0)
            while sent < len(body) and not stream.future.done():  # else answered before the whole body
                await self._changed()
                if not stream.future.done():
                    sent = self._send_body(stream, body, sent)
            return await stream.future
        except BaseException:  # cancelled or timed out: tell the server we no longer want it
            self.cancel(stream)
            raise

    def cancel(self, stream: _Stream) -> None:
        if stream.id in self.streams and self.failure is None:
            self._reset(stream.id, CANCEL, ConnectionClosed("cancelled"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._close_with(NO_ERROR, "client closing")
        self._fail(ConnectionClosed("client closed"))


class Http2Client:
    """Requests to one origin over one HTTP/2 connection at a time, opened when first needed and again
    after it is lost or the server sent GOAWAY (the streams still running on the old one finish)."""

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        default = 443 if url.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if self.port == default else f"{host}:{self.port}"
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        self.ssl_context = ssl_context
        if url.scheme == "https" and ssl_context is None:  # a context given must offer h2 by ALPN itself
            self.ssl_context = ssl.create_default_context()
            self.ssl_context.set_alpn_protocols(["h2"])
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    async def request(self, path: str, header_fields: bytes = b"", body: bytes = b"") -> Response:
        """POST `body` to `path` with these HPACK-encoded header fields (`field`, `fields`); the answer.

        Raises Http2Error when there is none (it may or may not have reached the server)."""
        [answer] = await self.request_many([(path, header_fields, body)])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def request_many(
        self, requests: Sequence[tuple[str, bytes, bytes]]
    ) -> list[Response | BaseException]:
        """Each (path, header fields, body) POSTed, concurrently; each one's answer, or the Http2Error
        that left it without one. The requests that need not wait are all sent in this turn of the event
        loop and cost no task each."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        connection = self._connection
        waits: list[asyncio.Future[Response]] = []
        started: list[tuple[_Connection, _Stream]] = []
        for path, header_fields, body in requests:
            raw_path = (self.prefix + path).encode()
            stream = connection.start(raw_path, header_fields, body, deadline) if connection else None
            if stream is not None:
                assert connection is not None
                started.append((connection, stream))
                waits.append(stream.future)
            else:  # connect, or wait for a stream slot or the windows
                waits.append(asyncio.ensure_future(self._request(raw_path, header_fields, body, deadline)))
        try:
            return await asyncio.gather(*waits, return_exceptions=True)
        except BaseException:  # cancelled: the server need not answer (the slow ones cancel their own)
            for on, stream in started:
                on.cancel(stream)
            raise

    async def _request(self, raw_path: bytes, header_fields: bytes, body: bytes, deadline: float) -> Response:
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    connection = self._connection
                    if connection is None or not connection.usable:
                        connection = await self._connect()
                    try:
                        return await connection.exchange(raw_path, header_fields, body, deadline)
                    except _Unusable:
                        continue  # nothing sent on it: take the next connection
        except TimeoutError as exc:
            raise RequestTimeout(f"no answer within {self.timeout} s") from exc

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ConnectionClosed("client closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, future: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not future.cancelled() and future.exception() is None:
            self._connection = future.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(self.authority.encode(), self.scheme.encode())
        try:
            async with asyncio.timeout(self.timeout):  # shared by every request waiting: its own deadline
                await loop.create_connection(
                    lambda: connection,
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context else None,
                )
                await connection.ready  # the server's SETTINGS: how many streams it takes
        except (OSError, ssl.SSLError) as exc:  # TimeoutError included
            connection.close()
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
