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

It is also the webhooks' client to the customers' receivers (services/webhooks/delivery.py), which
sets what an untrusted peer needs: `addresses` (where a name may connect, vetted against SSRF
before every new connection; TLS still names the host), `over_limit="truncate"` (keep the first
`max_body_bytes` of an answer and drop the connection instead of failing), and `retry_stale` (a
kept-alive connection the peer closed before answering is replaced once by a fresh one). It never
follows a redirect: a 3xx is an answer like any other.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

_NO_BODY_STATUSES = frozenset({204, 304})
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# Controls, space and DEL would break or smuggle a request line; a proxy passes the rest as sent.
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: bytes
    host: bytes
    port: int

    @staticmethod
    def of(url: httpx.URL) -> Origin:
        return Origin(url.raw_scheme, url.raw_host, url.port or (443 if url.raw_scheme == b"https" else 80))

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == b"https" else 80
        host = b"[%s]" % self.host if b":" in self.host else self.host  # an IPv6 literal
        return host if self.port == default else b"%s:%d" % (host, self.port)


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's whole answer, as `LeanTransport.exchange` read it."""

    status_code: int
    headers: list[tuple[bytes, bytes]]  # as received, in order
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def _head(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], request: httpx.Request | None
) -> bytes:
    """The request line and header block, refusing a line break smuggled into a name or value."""
    head = [method, b" ", target, b" HTTP/1.1\r\n"]
    lines = 2  # the request line and the blank line
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
        lines += 1
    head.append(b"\r\n")
    data = b"".join(head)
    if data.count(b"\n") != lines or data.count(b"\r") != lines:
        raise httpx.LocalProtocolError("a header name or value holds a line break", request=request)
    return data


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    answered: bool = False  # the current exchange has read an answer's status line

    def usable(self, now: float, expiry: float) -> bool:
        return now - self.idle_since < expiry and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class _Pool:
    slots: asyncio.Semaphore
    idle: list[_Connection] = field(default_factory=list)  # most recently used last
    busy: int = 0  # exchanges in flight


class _Stale(Exception):
    """A kept-alive connection was closed by the peer before it answered anything."""


Addresses = Callable[[Origin], Awaitable[Sequence[str]]]


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 4.0,
        max_header_bytes: int = 64 * 1024,
        max_body_bytes: int = 64 * 1024 * 1024,
        over_limit: Literal["refuse", "truncate"] = "refuse",
        addresses: Addresses | None = None,
        tls: ssl.SSLContext | None = None,
        retry_stale: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`over_limit`: an answer longer than `max_body_bytes` fails (refuse) or is cut to it
        (truncate, and its connection is dropped). `addresses`: the addresses to try, in order, for a
        new connection to an origin (default: its host, resolved by the system); TLS is verified
        against the origin's host whichever address is used. `tls`: the context for https
        (default: the system's trust store). `retry_stale`: see the module's docstring."""
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.truncate = over_limit == "truncate"
        self.retry_stale = retry_stale
        self._addresses = addresses
        self._clock = clock
        self._pools: dict[Origin, _Pool] = {}
        self._tls: ssl.SSLContext | None = tls
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        head = _head(request.method.encode("ascii"), url.raw_path, request.headers.raw, request)
        try:
            body: bytes | AsyncIterable[bytes] = request.content
        except httpx.RequestNotRead:  # a streamed body: httpx has set Transfer-Encoding: chunked
            body = request.stream  # type: ignore[assignment]
        status, reason, headers, content = await self._round_trip(
            Origin.of(url), request.method, head, body,
            timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read"), request,
        )  # fmt: skip
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
            request=request,
        )

    async def exchange(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | None,
    ) -> Answer:
        """One request without httpx's models: what `ServiceClient.exchange` sends (decision 0026).
        Host and Content-Length are set here; failures raise the same httpx exceptions."""
        raw_target = target.encode("latin-1", "replace")
        if _UNSAFE_TARGET.search(raw_target):
            raise httpx.LocalProtocolError(f"the request target {target[:80]!r} is not a valid URL path")
        fields = [(b"host", origin.host_header)]
        fields += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if body is not None or method not in _BODYLESS_METHODS:
            fields.append((b"content-length", b"%d" % len(body or b"")))
        head = _head(method.encode("ascii"), raw_target, fields, None)
        status, _, answer_headers, content = await self._round_trip(
            origin, method, head, body or b"", timeout, timeout, timeout, None
        )
        return Answer(status, answer_headers, content)

    async def _round_trip(
        self,
        origin: Origin,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes],
        pool_timeout: float | None,
        connect_timeout: float | None,
        read_timeout: float | None,
        request: httpx.Request | None,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(asyncio.Semaphore(self.max_connections))
        if pool.slots.locked():
            try:
                async with asyncio.timeout(pool_timeout):
                    await pool.slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to the upstream", request=request) from None
        else:
            await pool.slots.acquire()
        pool.busy += 1
        try:
            conn = self._checkout(pool)
            if conn is not None:
                if not (self.retry_stale and isinstance(body, bytes)):
                    return await self._on(pool, conn, method, head, body, read_timeout, request)
                try:
                    return await self._on(pool, conn, method, head, body, read_timeout, request, stale=True)
                except _Stale:
                    pass  # the peer closed it while idle: once more, on a fresh connection
            conn = await self._connect(origin, connect_timeout, request)
            return await self._on(pool, conn, method, head, body, read_timeout, request)
        finally:
            pool.busy -= 1
            pool.slots.release()

    async def _on(
        self,
        pool: _Pool,
        conn: _Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes],
        read_timeout: float | None,
        request: httpx.Request | None,
        *,
        stale: bool = False,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
        """One exchange on `conn`; with `stale`, a peer's close before any answer raises _Stale."""
        reusable = False
        conn.answered = False
        try:
            try:
                async with asyncio.timeout(read_timeout):
                    await self._send(conn, head, body)
                    status, reason, headers, content, reusable = await self._receive(conn, method)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                if stale and not conn.answered and not partial:
                    raise _Stale from exc
                raise
        except _Stale:
            raise
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
        return status, reason, headers, content

    def _checkout(self, pool: _Pool) -> _Connection | None:
        now = self._clock()
        while pool.idle:
            conn = pool.idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
        return None

    async def _connect(
        self, origin: Origin, timeout: float | None, request: httpx.Request | None
    ) -> _Connection:
        context = None
        host = origin.host.decode("ascii")
        if origin.scheme == b"https":
            context = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                if self._addresses is None:
                    reader, writer = await asyncio.open_connection(
                        host, origin.port, ssl=context, limit=self.max_header_bytes
                    )
                    return _Connection(reader, writer)
                failure: OSError = OSError(f"{host} has no address to connect to")
                for address in await self._addresses(origin):
                    try:
                        reader, writer = await asyncio.open_connection(
                            address, origin.port, ssl=context, limit=self.max_header_bytes,
                            server_hostname=host if context else None,
                        )  # fmt: skip
                    except OSError as exc:
                        failure = exc
                        continue
                    return _Connection(reader, writer)
                raise failure
        except TimeoutError:
            raise httpx.ConnectTimeout("connecting to the upstream timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None

    async def _send(self, conn: _Connection, head: bytes, body: bytes | AsyncIterable[bytes]) -> None:
        writer = conn.writer
        if isinstance(body, bytes):
            writer.write(head + body)
        else:
            writer.write(head)
            async for chunk in body:
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _receive(
        self, conn: _Connection, method: str
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        reader = conn.reader
        while True:
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            conn.answered = True
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
        if method == "HEAD" or status in _NO_BODY_STATUSES or status < 200:
            return status, reason, headers, b"", keep_alive
        if chunked:
            content, whole = await self._chunked(reader)
            return status, reason, headers, content, keep_alive and whole
        if length is not None:
            if length > self.max_body_bytes:
                if not self.truncate:
                    raise ValueError(f"a {length}-byte answer is over the limit")
                return status, reason, headers, await reader.readexactly(self.max_body_bytes), False
            return status, reason, headers, await reader.readexactly(length), keep_alive
        body = await reader.read(self.max_body_bytes + 1)  # neither: the body ends with the connection
        while len(body) <= self.max_body_bytes and not reader.at_eof():
            more = await reader.read(self.max_body_bytes + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > self.max_body_bytes:
            if not self.truncate:
                raise ValueError("the answer is over the limit")
            body = body[: self.max_body_bytes]
        return status, reason, headers, body, False

    async def _chunked(self, reader: asyncio.StreamReader) -> tuple[bytes, bool]:
        """The body, and whether it was read whole (not cut at the limit)."""
        parts: list[bytes] = []
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, ignored
                    pass
                return b"".join(parts), True
            if total + size > self.max_body_bytes:
                if not self.truncate:
                    raise ValueError("the answer is over the limit")
                parts.append(await reader.readexactly(self.max_body_bytes - total))
                return b"".join(parts), False
            total += size
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise ValueError("bad chunk framing")
            parts.append(chunk[:-2])

    def prune(self) -> None:
        """Close the idle connections past their keep-alive expiry; forget origins with none left."""
        now = self._clock()
        for origin, pool in list(self._pools.items()):
            keep = [conn for conn in pool.idle if conn.usable(now, self.keepalive_expiry)]
            for conn in pool.idle:
                if conn not in keep:
                    conn.close()
            pool.idle[:] = keep
            if not keep and not pool.busy:
                del self._pools[origin]

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().close()
