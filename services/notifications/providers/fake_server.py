"""The local push fake's socket: HTTP/2 (h2c, prior knowledge) and HTTP/1.1 on one port, for an ASGI app.

The fake stands in for Apple's and Google's servers, which never run on the bank's cores; here they do,
so the fake's CPU is taken from the bank in every whole-bank benchmark. Under Hypercorn (h2, its
stream tasks and ASGI plumbing, all in Python) it cost 0.4-0.7 ms per push, more than the bank's
notifications service spends sending it (decision 0049). This is the server side of the HTTP/2 that the
bank's push client speaks (providers/http2.py, whose frame constants and HPACK decoder it shares):

* a connection whose first bytes are the HTTP/2 preface is served as HTTP/2: SETTINGS (ours: 1,000
  concurrent streams, as APNs allows, and wide receive windows, replenished at half), PING answered,
  WINDOW_UPDATE and the peer's SETTINGS applied, RST_STREAM ends that stream's request, GOAWAY closes
  the connection once its streams are answered, PRIORITY and unknown frames ignored; a protocol
  violation closes the connection with GOAWAY. Each request runs as one ASGI call once its stream has
  ended; answers go out in the order they complete, within the peer's flow-control windows and frame
  size. Response header blocks are literals without indexing (as the client's requests are);
* any other connection is HTTP/1.1 (h11): the token endpoint, the inspection page, browsers.

It serves the fake, not the internet: no TLS, no trailers, no server push, a request body held whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import h11

from services.notifications.providers.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_BLOCK,
    MAX_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    OUR_MAX_FRAME,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    HpackDecoder,
    HpackError,
    field,
)

log = logging.getLogger("services.notifications.fake_server")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

STREAMS = 1000  # SETTINGS_MAX_CONCURRENT_STREAMS, as APNs
STREAM_WINDOW = 1 << 20  # what a client may send on one stream before it hears from us
CONNECTION_WINDOW = 1 << 24
REFUSED_STREAM, STREAM_CLOSED = 7, 5
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"))


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _Violation(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = ("answered", "body", "disconnected", "headers", "id", "pending", "received", "window")

    def __init__(self, stream_id: int, headers: list[tuple[str, str]], window: int) -> None:
        self.id = stream_id
        self.headers = headers
        self.body = bytearray()
        self.received = 0  # DATA bytes since our last WINDOW_UPDATE for this stream
        self.window = window  # what we may still send on it
        self.pending = b""  # response body waiting for window
        self.disconnected = asyncio.Event()
        self.answered = False


class _Http2:
    """One HTTP/2 connection, after the preface."""

    def __init__(self, server: FakeHttpServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self.inbox = bytearray()
        self.decoder = HpackDecoder()
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.block: bytearray | None = None
        self.block_stream = 0
        self.block_end_stream = False
        self.send_window = DEFAULT_WINDOW  # the connection's, for our DATA
        self.peer_stream_window = DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE of the peer
        self.peer_max_frame = OUR_MAX_FRAME
        self.received = 0  # DATA bytes on the connection since our last WINDOW_UPDATE
        self.closing = False
        self.out: list[bytes] = []
        self.flush_scheduled = False
        settings = b"".join(
            k.to_bytes(2) + v.to_bytes(4)
            for k, v in ((MAX_CONCURRENT_STREAMS, STREAMS), (INITIAL_WINDOW_SIZE, STREAM_WINDOW))
        )
        self._write(self._frame(SETTINGS, 0, 0, settings))
        self._write(self._frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW).to_bytes(4)))

    # -- frames in ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        inbox = self.inbox
        inbox += data
        at, end = 0, len(inbox)
        try:
            while end - at >= 9:
                length = int.from_bytes(inbox[at : at + 3])
                if length > OUR_MAX_FRAME:
                    raise _Violation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - at - 9 < length:
                    break
                kind, flags = inbox[at + 3], inbox[at + 4]
                stream_id = int.from_bytes(inbox[at + 5 : at + 9]) & MAX_STREAM_ID
                payload = bytes(inbox[at + 9 : at + 9 + length])
                at += 9 + length
                self._frame_received(kind, flags, stream_id, payload)
        except (_Violation, HpackError) as exc:
            code = exc.code if isinstance(exc, _Violation) else 9  # COMPRESSION_ERROR
            self.close_with(code, str(exc))
            return
        del inbox[:at]

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is not None and (kind != CONTINUATION or stream_id != self.block_stream):
            raise _Violation(PROTOCOL_ERROR, "a header block interrupted")
        if kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.block is None:
                raise _Violation(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self.block += payload
            if len(self.block) > MAX_HEADER_BLOCK:
                raise _Violation(PROTOCOL_ERROR, "a header block too large")
            if flags & END_HEADERS:
                self._header_block_done()
        elif kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise _Violation(PROTOCOL_ERROR, "a malformed PING")
            if not flags & ACK:
                self._write(self._frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise _Violation(PROTOCOL_ERROR, "a malformed RST_STREAM")
            if (stream := self.streams.pop(stream_id, None)) is not None:
                stream.disconnected.set()
        elif kind == GOAWAY:
            self.closing = True
            self._close_if_done()
        elif kind == PUSH_PROMISE:
            raise _Violation(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif kind == PRIORITY and stream_id == 0:
            raise _Violation(PROTOCOL_ERROR, "PRIORITY on stream 0")

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _Violation(PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        if stream_id <= self.last_stream_id:  # trailers, or a stream id reused
            raise _Violation(PROTOCOL_ERROR, "HEADERS on a stream already opened")
        start, stop = 0, len(payload)
        if flags & PADDED:
            start, stop = 1, stop - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            raise _Violation(PROTOCOL_ERROR, "padding longer than the frame")
        self.block, self.block_stream = bytearray(payload[start:stop]), stream_id
        self.block_end_stream = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._header_block_done()

    def _header_block_done(self) -> None:
        assert self.block is not None
        headers = self.decoder.decode(bytes(self.block))  # every block, in order: the table depends on it
        stream_id, end_stream, self.block = self.block_stream, self.block_end_stream, None
        self.last_stream_id = stream_id
        if self.closing or len(self.streams) >= STREAMS:
            self._write(self._frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4)))
            return
        stream = self.streams[stream_id] = _Stream(stream_id, headers, self.peer_stream_window)
        if end_stream:
            self._dispatch(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _Violation(PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)  # all of it counts against the windows, padding included
        self.received += length
        if self.received > CONNECTION_WINDOW:
            raise _Violation(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        if self.received >= CONNECTION_WINDOW // 2:
            self._write(self._frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.answered:
            if stream_id > self.last_stream_id:
                raise _Violation(PROTOCOL_ERROR, "DATA on an idle stream")
            self._write(self._frame(RST_STREAM, 0, stream_id, STREAM_CLOSED.to_bytes(4)))
            return
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise _Violation(PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : length - payload[0]]
        stream.body += payload
        stream.received += length
        if stream.received > STREAM_WINDOW:
            raise _Violation(FLOW_CONTROL_ERROR, "DATA beyond the stream's window")
        if flags & END_STREAM:
            self._dispatch(stream)
        elif stream.received >= STREAM_WINDOW // 2:
            self._write(self._frame(WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4)))
            stream.received = 0

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) % 6:
            raise _Violation(PROTOCOL_ERROR, "a malformed SETTINGS")
        if flags & ACK:
            return
        for at in range(0, len(payload), 6):
            key, value = int.from_bytes(payload[at : at + 2]), int.from_bytes(payload[at + 2 : at + 6])
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _Violation(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                for stream in self.streams.values():
                    stream.window += value - self.peer_stream_window
                self.peer_stream_window = value
            elif key == MAX_FRAME_SIZE:
                if not OUR_MAX_FRAME <= value <= 2**24 - 1:
                    raise _Violation(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
        self._write(self._frame(SETTINGS, ACK, 0, b""))
        self._send_pending()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _Violation(FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        increment = int.from_bytes(payload) & MAX_WINDOW
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _Violation(FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.window += increment
        self._send_pending()

    # -- requests and answers ----------------------------------------------------------------------------

    def _dispatch(self, stream: _Stream) -> None:
        pseudo = {name: value for name, value in stream.headers if name.startswith(":")}
        target = pseudo.get(":path", "/")
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "2",
            "method": pseudo.get(":method", "GET"),
            "scheme": pseudo.get(":scheme", "http"),
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in stream.headers if n[0] != ":"],
            "server": self.server.address,
            "client": self.transport.get_extra_info("peername"),
        }
        if authority := pseudo.get(":authority"):
            scope["headers"].append((b"host", authority.encode("latin-1")))
        self.server.spawn(self._serve(stream, scope))

    async def _serve(self, stream: _Stream, scope: dict[str, Any]) -> None:
        body_sent = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": bytes(stream.body), "more_body": False}
            await stream.disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.server.app(scope, receive, send)
        except Exception:
            log.exception("the fake's handler failed")
            status, headers, chunks = 500, [], []
        self._answer(stream, status, headers, b"".join(chunks))

    def _answer(self, stream: _Stream, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.streams.get(stream.id) is not stream or self.transport.is_closing():
            return  # reset by the client, or the connection is gone
        stream.answered = True
        block = b"\x88" if status == 200 else field(b":status", str(status).encode())
        block += b"".join(field(n.lower(), v) for n, v in headers if n.lower() not in _HOP_BY_HOP)
        first = True
        while first or block:  # HEADERS, then CONTINUATION past the peer's frame size
            piece, block = block[: self.peer_max_frame], block[self.peer_max_frame :]
            flags = (END_HEADERS if not block else 0) | (END_STREAM if first and not body else 0)
            self._write(self._frame(HEADERS if first else CONTINUATION, flags, stream.id, piece))
            first = False
        if not body:
            del self.streams[stream.id]
        else:
            stream.pending = body
            self._send_pending()
        self._close_if_done()

    def _send_pending(self) -> None:
        for stream in list(self.streams.values()):
            while stream.pending and self.send_window > 0 and stream.window > 0:
                size = min(len(stream.pending), self.send_window, stream.window, self.peer_max_frame)
                piece, stream.pending = stream.pending[:size], stream.pending[size:]
                self.send_window -= size
                stream.window -= size
                self._write(self._frame(DATA, 0 if stream.pending else END_STREAM, stream.id, piece))
            if stream.answered and not stream.pending:
                del self.streams[stream.id]
        self._close_if_done()

    # -- the connection ----------------------------------------------------------------------------------

    def _close_if_done(self) -> None:
        if self.closing and not self.streams:
            self.close_with(NO_ERROR, "")

    def close_with(self, code: int, message: str) -> None:
        if message:
            log.info("closing an HTTP/2 connection: %s", message)
        if not self.transport.is_closing():
            goaway = self.last_stream_id.to_bytes(4) + code.to_bytes(4) + message.encode()[:200]
            self._write(self._frame(GOAWAY, 0, 0, goaway))
            self._flush()
            self.transport.close()
        self.connection_lost()

    def connection_lost(self) -> None:
        for stream in self.streams.values():
            stream.disconnected.set()
        self.streams.clear()

    @staticmethod
    def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3) + bytes((kind, flags)) + stream_id.to_bytes(4) + payload

    def _write(self, data: bytes) -> None:
        """Frames written in one turn of the event loop go out in one write."""
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()


class _Http1:
    """One HTTP/1.1 connection (h11): requests in turn, each one ASGI call."""

    def __init__(self, server: FakeHttpServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self.conn = h11.Connection(h11.SERVER)
        self.busy = False
        self.request: h11.Request | None = None  # the one being read
        self.body = bytearray()
        self.disconnected = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        if not self.busy:
            self._next()

    def _next(self) -> None:
        try:
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.ConnectionClosed):
                    self.transport.close()
                    return
                if isinstance(event, h11.Request):
                    self.request, self.body = event, bytearray()
                elif isinstance(event, h11.Data):
                    self.body += event.data
                elif isinstance(event, h11.EndOfMessage) and self.request is not None:
                    self.busy = True
                    self.server.spawn(self._serve(self.request, bytes(self.body)))
                    return
        except h11.RemoteProtocolError as exc:
            self._write_whole(exc.error_status_hint, [], str(exc).encode())
            self.transport.close()

    async def _serve(self, request: h11.Request, body: bytes) -> None:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode(),
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [(n.lower(), v) for n, v in request.headers],
            "server": self.server.address,
            "client": self.transport.get_extra_info("peername"),
        }
        status, headers, chunks, body_sent = 500, [], [], False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.server.app(scope, receive, send)
        except Exception:
            log.exception("the fake's handler failed")
            status, headers, chunks = 500, [], []
        if self.transport.is_closing():
            return
        self._write_whole(status, headers, b"".join(chunks))
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        self.conn.start_next_cycle()
        self.busy = False
        self._next()

    def _write_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        kept = [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP and n.lower() != b"content-length"]
        kept.append((b"content-length", str(len(body)).encode()))
        try:
            data = self.conn.send(h11.Response(status_code=status, headers=kept, reason=_phrase(status)))
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(data)

    def connection_lost(self) -> None:
        self.disconnected.set()


class _Connection(asyncio.Protocol):
    """Reads the first bytes, then hands the connection to HTTP/2 or HTTP/1.1 for good."""

    def __init__(self, server: FakeHttpServer) -> None:
        self.server = server
        self.head = b""
        self.transport: asyncio.Transport | None = None
        self.protocol: _Http2 | _Http1 | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.data_received(data)
            return
        assert self.transport is not None
        self.head += data
        if PREFACE.startswith(self.head[: len(PREFACE)]) and len(self.head) < len(PREFACE):
            return  # could still be the preface
        head, self.head = self.head, b""
        if head.startswith(PREFACE):
            self.protocol = _Http2(self.server, self.transport)
            head = head[len(PREFACE) :]
        else:
            self.protocol = _Http1(self.server, self.transport)
        if head:
            self.protocol.data_received(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.protocol is not None:
            self.protocol.connection_lost()

    def close(self) -> None:
        if isinstance(self.protocol, _Http2):
            self.protocol.close_with(NO_ERROR, "")
        elif self.transport is not None:
            self.transport.close()


class FakeHttpServer:
    """Serves an ASGI app on host:port until `close`."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app = app
        self.address = (host, port)
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), *self.address, reuse_address=True)

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
