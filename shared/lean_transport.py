"""A lean HTTP/1.1 transport for httpx: pooled keep-alive connections on asyncio streams.

Every service-to-service call goes through `shared.http.ServiceClient` (deadlines, trace
propagation, retries, circuit breaker), which sits on an httpx client. httpx's default
transport (httpcore + h11 + anyio) costs about 2 ms of CPU per call on the bank's small
hosts, ten times what the same exchange costs on plain asyncio streams, and its pool checks
every idle connection with a syscall on each request (decision 0008). This transport
replaces only that bottom layer: HTTP/1.1 with Content-Length or chunked bodies, keep-alive
with a bounded pool per origin, and failures raised as the httpx exceptions ServiceClient
expects. It is ServiceClient's default; the gateway's `GATEWAY_UPSTREAM_TRANSPORT=httpx`
switches its upstreams back to httpx's own.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return now - self.idle_since < expiry and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class _Pool:
    slots: asyncio.Semaphore
    idle: list[_Connection] = field(default_factory=list)  # most recently used last


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 4.0,
        max_header_bytes: int = 64 * 1024,
        max_body_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._pools: dict[tuple[bytes, bytes, int], _Pool] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port or (443 if url.raw_scheme == b"https" else 80))
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(asyncio.Semaphore(self.max_connections))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        if pool.slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await pool.slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to the upstream", request=request) from None
        else:
            await pool.slots.acquire()
        try:
            conn = self._checkout(pool) or await self._connect(request, origin, timeouts.get("connect"))
            reusable = False
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    await self._send(conn, request)
                    status, reason, headers, body, reusable = await self._receive(conn, request)
            except TimeoutError:
                raise httpx.ReadTimeout("the upstream did not answer in time", request=request) from None
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise httpx.RemoteProtocolError(
                    f"the upstream closed the connection mid-exchange ({type(exc).__name__})", request=request
                ) from None
            except (asyncio.LimitOverrunError, ValueError) as exc:
                raise httpx.RemoteProtocolError(
                    f"malformed answer from the upstream: {exc}", request=request
                ) from None
            except OSError as exc:
                raise httpx.ReadError(str(exc), request=request) from None
            finally:
                if reusable and not self._closed:
                    conn.idle_since = self._clock()
                    pool.idle.append(conn)
                else:
                    conn.close()
        finally:
            pool.slots.release()
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
            request=request,
        )

    def _checkout(self, pool: _Pool) -> _Connection | None:
        now = self._clock()
        while pool.idle:
            conn = pool.idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
        return None

    async def _connect(
        self, request: httpx.Request, origin: tuple[bytes, bytes, int], timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == b"https":
            context = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host.decode("ascii"), port, ssl=context, limit=self.max_header_bytes
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("connecting to the upstream timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        return _Connection(reader, writer)

    async def _send(self, conn: _Connection, request: httpx.Request) -> None:
        head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head)
        lines = len(request.headers.raw) + 2  # the request line, the headers, the blank line
        if data.count(b"\n") != lines or data.count(b"\r") != lines:
            raise httpx.LocalProtocolError("a header name or value holds a line break", request=request)
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        writer = conn.writer
        if body is not None:
            writer.write(data + body)
        else:  # a streamed body: httpx has set Transfer-Encoding: chunked
            writer.write(data)
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _receive(
        self, conn: _Connection, request: httpx.Request
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        reader = conn.reader
        while True:
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            code, _, reason = rest.partition(b" ")
            status = int(code)
            if not version.startswith(b"HTTP/1.") or not 100 <= status <= 999:
                raise ValueError(f"bad status line {lines[0][:80]!r}")
            if status >= 200 or status == 101:
                break  # 1xx interim answers (100 Continue, 103 Early Hints) are skipped
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        connection = b""
        for line in lines[1:-2]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"bad header line {line[:80]!r}")
            value = value.strip()
            lower = name.lower()
            if lower == b"content-length":
                if length is not None and int(value) != length:
                    raise ValueError("conflicting Content-Length headers")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif lower == b"connection":
                connection += b"," + value.lower()
            headers.append((name, value))
        keep_alive = (version == b"HTTP/1.1" and b"close" not in connection) or b"keep-alive" in connection
        if request.method == "HEAD" or status in _NO_BODY_STATUSES or status < 200:
            return status, reason, headers, b"", keep_alive
        if chunked:
            return status, reason, headers, await self._chunked(reader), keep_alive
        if length is not None:
            if length > self.max_body_bytes:
                raise ValueError(f"a {length}-byte answer is over the limit")
            return status, reason, headers, await reader.readexactly(length), keep_alive
        body = await reader.read(self.max_body_bytes + 1)  # neither: the body ends with the connection
        while len(body) <= self.max_body_bytes and not reader.at_eof():
            more = await reader.read(self.max_body_bytes + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > self.max_body_bytes:
            raise ValueError("the answer is over the limit")
        return status, reason, headers, body, False

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, ignored
                    pass
                return b"".join(parts)
            total += size
            if total > self.max_body_bytes:
                raise ValueError("the answer is over the limit")
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise ValueError("bad chunk framing")
            parts.append(chunk[:-2])

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()
