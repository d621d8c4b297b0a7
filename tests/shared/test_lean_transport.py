"""The lean HTTP/1.1 transport, under httpx and under `ServiceClient.exchange`, against real sockets:
framing, keep-alive, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from bank.infra.ports import free_port
from shared.errors import BankError
from shared.http import CircuitBreaker, ServiceClient
from shared.lean_transport import Answer, LeanTransport, Origin
from tests.support.raw_http import RawHttpServer, RawRequest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes = b"hello", extra: bytes = b"") -> Callable[[bytes], bytes]:
    return lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def client_for(server: RawHttpServer, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, transport=LeanTransport(**kw), timeout=2)  # type: ignore[arg-type]


@pytest.fixture
async def started() -> AsyncIterator[list[RawHttpServer]]:
    servers: list[RawHttpServer] = []
    yield servers
    for s in servers:
        await s.stop()


async def serve(
    started: list[RawHttpServer], answer: Callable[[bytes], bytes | None], **kw: bool
) -> RawHttpServer:
    """A server answering `answer(request bytes)`; None: it stays silent (10 s, then it hangs up)."""

    async def reply(request: RawRequest) -> bytes | None:
        out = answer(request.raw)
        if out is None:
            await asyncio.sleep(10)
        return out

    server = await RawHttpServer(reply, **kw).start()
    started.append(server)
    return server


async def test_keep_alive_reuses_one_connection(started: list[RawHttpServer]) -> None:
    server = await serve(started, ok(extra=b"X-Up: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"))
    async with await client_for(server) as client:
        for _ in range(5):
            r = await client.get("/x?q=1", headers={"x-custom": "yes"})
            assert r.status_code == 200 and r.content == b"hello"
            assert r.headers["x-up"] == "1" and r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"GET /x?q=1 HTTP/1.1\r\n")
    assert b"\r\nx-custom: yes\r\n" in first and b"\r\nHost: 127.0.0.1:" in first


async def test_chunked_and_close_delimited_answers(started: list[RawHttpServer]) -> None:
    chunked = await serve(
        started,
        lambda _: (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        ),
    )
    delimited = await serve(
        started, lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", close_after=True
    )
    async with await client_for(chunked) as client:
        assert (await client.get("/")).content == b"hello world"
        assert (await client.get("/")).content == b"hello world"
    assert chunked.connections == 1
    async with await client_for(delimited) as client:
        assert (await client.get("/")).content == b"until the end"
        assert (await client.get("/")).content == b"until the end"
    assert delimited.connections == 2  # Connection: close is honoured


async def test_interim_and_bodiless_answers(started: list[RawHttpServer]) -> None:
    def answer(request: bytes) -> bytes:
        if request.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
        if b"/none" in request:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"

    server = await serve(started, answer)
    async with await client_for(server) as client:
        r = await client.head("/")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "42"
        assert (await client.get("/none")).status_code == 204
        r = await client.post("/", content=b"data")
        assert r.status_code == 201 and r.content == b"ok"
    assert server.connections == 1


async def test_streamed_request_bodies_are_sent_chunked(started: list[RawHttpServer]) -> None:
    server = await serve(started, ok())

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defgh"

    async with await client_for(server) as client:
        assert (await client.post("/", content=parts())).status_code == 200
    assert server.requests[0].endswith(b"\r\n\r\nabcdefgh")
    assert b"Transfer-Encoding: chunked" in server.requests[0]


async def test_stale_idle_connections_are_not_reused(started: list[RawHttpServer]) -> None:
    server = await serve(started, ok(), close_after=True)  # the server closes after each answer
    async with await client_for(server) as client:
        assert (await client.get("/")).status_code == 200
        await asyncio.sleep(0.05)  # the close reaches us while the connection is idle
        assert (await client.get("/")).status_code == 200
    assert server.connections == 2
    expiring = await serve(started, ok())
    async with await client_for(expiring, keepalive_expiry=0.05) as client:
        await client.get("/")
        await asyncio.sleep(0.1)
        await client.get("/")
    assert expiring.connections == 2


async def test_failures_are_httpx_errors(started: list[RawHttpServer]) -> None:
    async with httpx.AsyncClient(transport=LeanTransport(), timeout=1) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{free_port()}/")
    silent = await serve(started, lambda _: None)
    async with await client_for(silent) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=0.2)
    hangup = await serve(
        started, lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", close_after=True
    )
    async with await client_for(hangup) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
    garbage = await serve(started, lambda _: b"SMTP ready\r\n\r\n")
    async with await client_for(garbage) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
    huge = await serve(started, lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n")
    async with await client_for(huge, max_body_bytes=1000) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
    fine = await serve(started, ok())
    async with await client_for(fine) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"x-evil": "a\r\nX-Injected: 1"})
    assert fine.requests == []


async def test_pool_bound_and_pool_timeout(started: list[RawHttpServer]) -> None:
    server = await serve(started, ok())
    async with await client_for(server, max_connections=1) as client:
        results = await asyncio.gather(*(client.get("/") for _ in range(10)))
        assert all(r.status_code == 200 for r in results)
    assert server.connections == 1
    slow = await serve(started, lambda _: None)
    transport = LeanTransport(max_connections=1)
    async with httpx.AsyncClient(base_url=slow.url, transport=transport) as client:
        first = asyncio.create_task(client.get("/", timeout=1))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await client.get("/", timeout=httpx.Timeout(1, pool=0.1))
        with pytest.raises(httpx.ReadTimeout):
            await first


# ServiceClient.exchange: the same wire, without httpx's models (decision 0026) -------------------


async def test_exchange_sends_a_minimal_request_and_reads_the_whole_answer(
    started: list[RawHttpServer],
) -> None:
    server = await serve(started, ok(b'{"hold": {"status": "active"}}', b"X-Up: 1\r\nSet-Cookie: a=1\r\n"))
    async with ServiceClient("accounts", server.url + "/base") as client:
        posted = await client.exchange(
            "post", "/internal/holds?x=1", json={"amount": 1915}, headers={"x-k": "v"}
        )
        fetched = await client.exchange("GET", "/internal/accounts/acc_1")
    assert isinstance(posted, Answer) and posted.status_code == 200
    assert posted.json() == {"hold": {"status": "active"}}
    assert (b"X-Up", b"1") in posted.headers and (b"Set-Cookie", b"a=1") in posted.headers
    assert fetched.content == b'{"hold": {"status": "active"}}'
    assert server.connections == 1  # kept alive between the two
    post, get = server.requests
    head, _, body = post.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /base/internal/holds?x=1 HTTP/1.1"
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    assert fields[b"host"] == server.url.removeprefix("http://").encode()
    assert fields[b"content-type"] == b"application/json" and fields[b"x-k"] == b"v"
    assert fields[b"content-length"] == str(len(body)).encode() and body == b'{"amount":1915}'
    assert fields[b"traceparent"].startswith(b"00-") and int(fields[b"x-deadline-ms"]) > 0
    assert get.startswith(b"GET /base/internal/accounts/acc_1 HTTP/1.1\r\n")
    assert b"content-length" not in get.lower()


async def test_exchange_retries_breaks_and_refuses_like_request(started: list[RawHttpServer]) -> None:
    answers = iter(
        [
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
        ]
    )
    flaky = await serve(started, lambda _: next(answers))
    async with ServiceClient("accounts", flaky.url, backoff=0.001) as client:
        assert (await client.exchange("POST", "/x", body=b"{}", idempotent=True)).status_code == 201
    assert len(flaky.requests) == 2  # the 503 was retried: the caller said the call is idempotent

    silent = await serve(started, lambda _: None)
    breaker = CircuitBreaker("accounts", failure_threshold=1, reset_timeout=60)
    async with ServiceClient("accounts", silent.url, timeout=0.2, retries=0, breaker=breaker) as client:
        with pytest.raises(BankError) as timed_out:
            await client.exchange("POST", "/x", body=b"{}")
        assert timed_out.value.code == "timeout.accounts"
        with pytest.raises(BankError) as fast:
            await client.exchange("POST", "/x", body=b"{}")
        assert fast.value.code == "service_unavailable.circuit_open"

    fine = await serve(started, ok())
    async with ServiceClient("accounts", fine.url) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.exchange("GET", "/x", headers={"x-evil": "a\r\nX-Injected: 1"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.exchange("GET", "/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /y")
    assert fine.requests == []


async def test_exchange_on_httpx_own_transport_answers_alike(started: list[RawHttpServer]) -> None:
    server = await serve(started, ok(b'{"ok": true}', b"X-Up: 1\r\n"))
    async with ServiceClient("up", server.url, transport=httpx.AsyncHTTPTransport()) as client:
        answer = await client.exchange("POST", "/x?y=1", body=b"hi")
    assert answer.status_code == 200 and answer.json() == {"ok": True} and (b"X-Up", b"1") in answer.headers
    assert server.requests[0].startswith(b"POST /x?y=1 HTTP/1.1\r\n") and server.requests[0].endswith(b"hi")


# What webhook delivery sets for an untrusted receiver (services/webhooks/delivery.py) ---------------


def test_an_ipv6_literal_is_bracketed_in_host() -> None:
    assert Origin(b"http", b"::1", 8080).host_header == b"[::1]:8080"
    assert Origin(b"https", b"::1", 443).host_header == b"[::1]"
    assert Origin(b"http", b"example.com", 80).host_header == b"example.com"


async def test_over_limit_answers_are_cut_to_the_limit_and_their_connection_dropped(
    started: list[RawHttpServer],
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"y" * 1024 + b"\r\n" * 2
    )
    answers = iter([ok(b"x" * 5000)(b""), chunked + b"0\r\n\r\n", ok(b"small")(b"")])
    server = await serve(started, lambda _: next(answers))
    transport = LeanTransport(max_body_bytes=100, over_limit="truncate")
    origin = Origin.of(httpx.URL(server.url))
    try:
        first = await transport.exchange("POST", origin, "/", {}, b"{}", 2)
        second = await transport.exchange("POST", origin, "/", {}, b"{}", 2)
        third = await transport.exchange("POST", origin, "/", {}, b"{}", 2)
    finally:
        await transport.aclose()
    assert (first.status_code, first.content) == (200, b"x" * 100)
    assert second.content == b"y" * 100
    assert third.content == b"small"
    assert server.connections == 3  # a cut answer's connection is not used again
    refusing = LeanTransport(max_body_bytes=100)
    with pytest.raises(httpx.RemoteProtocolError):
        await refusing.exchange("POST", origin, "/", {}, b"{}", 2)
    await refusing.aclose()


async def test_a_kept_alive_connection_closed_before_answering_is_replaced_once() -> None:
    connections = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers one request per connection, then reads the next and closes without a word."""
        nonlocal connections
        connections += 1
        for answered in (True, False):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            if answered:
                writer.write(ok()(b""))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    origin = Origin(b"http", b"127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        for retry_stale, expect in ((True, 200), (False, httpx.RemoteProtocolError)):
            transport = LeanTransport(retry_stale=retry_stale)
            await transport.exchange("POST", origin, "/", {}, b"{}", 2)
            if expect == 200:
                assert (await transport.exchange("POST", origin, "/", {}, b"{}", 2)).status_code == 200
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    await transport.exchange("POST", origin, "/", {}, b"{}", 2)
            await transport.aclose()
    finally:
        server.close()
    assert connections == 3


async def test_new_connections_go_to_the_addresses_given_and_name_the_host(
    started: list[RawHttpServer],
) -> None:
    server = await serve(started, ok())
    port = int(server.url.rsplit(":", 1)[1])
    asked: list[Origin] = []

    async def addresses(origin: Origin) -> list[str]:
        asked.append(origin)
        if origin.host == b"refused.example":
            raise LookupError("not there")
        return ["127.0.0.2", "127.0.0.1"] if origin.port == port else []

    transport = LeanTransport(addresses=addresses)
    try:
        named = Origin(b"http", b"receiver.example", port)
        assert (await transport.exchange("POST", named, "/hook", {}, b"{}", 2)).status_code == 200
        with pytest.raises(LookupError):
            await transport.exchange("POST", Origin(b"http", b"refused.example", port), "/", {}, b"{}", 2)
        with pytest.raises(httpx.ConnectError):
            await transport.exchange("POST", Origin(b"http", b"none.example", port + 1), "/", {}, b"{}", 2)
    finally:
        await transport.aclose()
    assert asked[0] == named
    assert b"\r\nhost: receiver.example:%d\r\n" % port in server.requests[0]
