"""The local push fake's socket: HTTP/2 (h2c, prior knowledge) and HTTP/1.1 on one port, for an ASGI app.

The fake stands in for Apple's and Google's servers, which never run on the bank's cores; here they do,
so the fake's CPU is taken from the bank in every whole-bank benchmark. Under Hypercorn (h2, its
stream tasks and ASGI plumbing, all in Python) it cost 0.4-0.7 ms per push, more than the bank's
notifications service spends sending it (decision 0049). This is the server side of the HTTP/2 that the
bank's push client speaks, on the frame handling it shares with that client (`FramedConnection`,
providers/http2.py):

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
    DATA,
    DEFAULT_WINDOW,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    NO_ERROR,
    OUR_MAX_FRAME,
    PREFACE,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    FramedConnection,
    ProtocolViolation,
    field,
)

log = logging.getLogger("services.notifications.fake_server")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

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


def _scope(
    method: str, target: str, http_version: str, headers: Headers, server: Any, client: Any
) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "server": server,
        "client": client,
    }


async def _call(
    app: ASGIApp, scope: dict[str, Any], body: bytes, gone: asyncio.Event
) -> tuple[int, Headers, bytes]:
    """One request through the app, its answer held whole: (status, headers, body). A handler that fails
    answers 500."""
    status, headers, chunks, body_given = 500, [], [], False

    async def receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception:
        log.exception("the fake's handler failed")
        return 500, [], b""
    return status, headers, b"".join(chunks)


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


class _Http2(FramedConnection):
    """One HTTP/2 connection, after the preface: the frames are read and written by FramedConnection."""

    def __init__(self, server: FakeHttpServer, transport: asyncio.Transport) -> None:
        super().__init__()
        self.server = server
        self.transport = transport
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.send_window = DEFAULT_WINDOW  # the connection's, for our DATA
        self.peer_stream_window = DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE of the peer
        self.received = 0  # DATA bytes on the connection since our last WINDOW_UPDATE
        self.closing = False
        settings = ((MAX_CONCURRENT_STREAMS, STREAMS), (INITIAL_WINDOW_SIZE, STREAM_WINDOW))
        self._write(self._frame(SETTINGS, 0, 0, b"".join(k.to_bytes(2) + v.to_bytes(4) for k, v in settings)))
        self._write(self._frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW).to_bytes(4)))

    # -- frames in ---------------------------------------------------------------------------------------

    def _headers(self, stream_id: int, decoded: list[tuple[str, str]], end_stream: bool) -> None:
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id:  # trailers, or a stream id reused
            raise ProtocolViolation(PROTOCOL_ERROR, "HEADERS on an even or an already opened stream")
        self.last_stream_id = stream_id
        if self.closing or len(self.streams) >= STREAMS:
            self._write(self._frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4)))
            return
        stream = self.streams[stream_id] = _Stream(stream_id, decoded, self.peer_stream_window)
        if end_stream:
            self._dispatch(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)  # all of it counts against the windows, padding included
        self.received += length
        if self.received > CONNECTION_WINDOW:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        if self.received >= CONNECTION_WINDOW // 2:
            self._write(self._frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4)))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.answered:
            if stream_id > self.last_stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "DATA on an idle stream")
            self._write(self._frame(RST_STREAM, 0, stream_id, STREAM_CLOSED.to_bytes(4)))
            return
        stream.body += self.unpadded(flags, payload)
        stream.received += length
        if stream.received > STREAM_WINDOW:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "DATA beyond the stream's window")
        if flags & END_STREAM:
            self._dispatch(stream)
        elif stream.received >= STREAM_WINDOW // 2:
            self._write(self._frame(WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4)))
            stream.received = 0

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) % 6:
            raise ProtocolViolation(PROTOCOL_ERROR, "a malformed SETTINGS")
        if flags & ACK:
            return
        for at in range(0, len(payload), 6):
            key, value = int.from_bytes(payload[at : at + 2]), int.from_bytes(payload[at + 2 : at + 6])
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                for stream in self.streams.values():
                    stream.window += value - self.peer_stream_window
                self.peer_stream_window = value
            elif key == MAX_FRAME_SIZE:
                if not OUR_MAX_FRAME <= value <= 2**24 - 1:
                    raise ProtocolViolation(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.max_frame = value
        self._write(self._frame(SETTINGS, ACK, 0, b""))
        self._send_pending()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        increment = int.from_bytes(payload) & MAX_WINDOW
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.window += increment
        self._send_pending()

    def _stream_reset(self, stream_id: int, code: int) -> None:
        if (stream := self.streams.pop(stream_id, None)) is not None:
            stream.disconnected.set()

    def _goaway(self, last_stream_id: int, code: int) -> None:
        self.closing = True
        self._close_if_done()

    # -- requests and answers ----------------------------------------------------------------------------

    def _dispatch(self, stream: _Stream) -> None:
        pseudo = {name: value for name, value in stream.headers if name.startswith(":")}
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in stream.headers if n[0] != ":"]
        if authority := pseudo.get(":authority"):
            headers.append((b"host", authority.encode("latin-1")))
        peer = self.transport.get_extra_info("peername") if self.transport else None
        scope = _scope(
            pseudo.get(":method", "GET"), pseudo.get(":path", "/"), "2", headers, self.server.address, peer
        )
        self.server.spawn(self._serve(stream, scope))

    async def _serve(self, stream: _Stream, scope: dict[str, Any]) -> None:
        status, headers, body = await _call(self.server.app, scope, bytes(stream.body), stream.disconnected)
        if self.streams.get(stream.id) is not stream or self.transport is None or self.transport.is_closing():
            return  # reset by the client, or the connection is gone
        stream.answered = True
        block = b"\x88" if status == 200 else field(b":status", str(status).encode())
        block += b"".join(field(n.lower(), v) for n, v in headers if n.lower() not in _HOP_BY_HOP)
        self._send_headers(stream.id, block, end_stream=not body)
        if not body:
            del self.streams[stream.id]
        else:
            stream.pending = body
            self._send_pending()
        self._close_if_done()

    def _send_pending(self) -> None:
        """Answer bodies, as far as the client's windows allow."""
        for stream in list(self.streams.values()):
            while stream.pending and self.send_window > 0 and stream.window > 0:
                size = min(len(stream.pending), self.send_window, stream.window, self.max_frame)
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
            self._close_with(NO_ERROR, "")

    def _close_with(self, code: int, message: str) -> None:
        if message:
            log.info("closing an HTTP/2 connection: %s", message)
        if self.transport is not None and not self.transport.is_closing():
            goaway = self.last_stream_id.to_bytes(4) + code.to_bytes(4) + message.encode()[:200]
            self._write(self._frame(GOAWAY, 0, 0, goaway))
            self._flush()
            self.transport.close()
        self.gone()

    def close(self) -> None:
        self._close_with(NO_ERROR, "")

    def gone(self) -> None:
        for stream in self.streams.values():
            stream.disconnected.set()
        self.streams.clear()


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
        headers = [(n.lower(), v) for n, v in request.headers]
        peer = self.transport.get_extra_info("peername")
        scope = _scope(request.method.decode(), request.target.decode("latin-1"),
                       request.http_version.decode(), headers, self.server.address, peer)  # fmt: skip
        status, answer_headers, answer = await _call(self.server.app, scope, body, self.disconnected)
        if self.transport.is_closing():
            return
        self._write_whole(status, answer_headers, answer)
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        self.conn.start_next_cycle()
        self.busy = False
        self._next()

    def _write_whole(self, status: int, headers: Headers, body: bytes) -> None:
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

    def gone(self) -> None:
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
            self.protocol.gone()

    def close(self) -> None:
        if isinstance(self.protocol, _Http2):
            self.protocol.close()
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
