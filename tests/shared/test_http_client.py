"""ServiceClient against a real uvicorn server over real sockets (plus unit tests of the breaker)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from bank.infra.ports import free_port
from shared.context import DEADLINE_HEADER, TRACEPARENT_HEADER, TraceContext, set_deadline, set_trace
from shared.errors import BankError
from shared.http import CircuitBreaker, ServiceClient, raise_for_upstream_error
from tests.support.serving import served_in_thread

# ---------------------------------------------------------------- the upstream under test

HITS: Counter[tuple[str, str]] = Counter()  # (path, key) -> requests that reached a handler
SEEN: dict[tuple[str, str], dict[str, str]] = {}  # (path, key) -> headers of the last such request

app = FastAPI()


@app.middleware("http")
async def count_hits(request: Request, call_next: Any) -> Response:
    key = (request.url.path, request.query_params.get("k", ""))
    HITS[key] += 1
    SEEN[key] = dict(request.headers)
    response: Response = await call_next(request)
    return response


@app.get("/ok")
@app.post("/ok")
async def ok() -> dict[str, bool]:
    return {"ok": True}


@app.api_route("/slow", methods=["GET", "POST"])
async def slow(ms: int = 0) -> dict[str, bool]:
    await asyncio.sleep(ms / 1000)
    return {"ok": True}


@app.get("/fail")
async def fail() -> Response:
    return Response("boom", status_code=500)


@app.api_route("/flaky", methods=["GET", "POST"])
async def flaky(k: str, fails: int = 2) -> Response:
    if HITS[("/flaky", k)] <= fails:
        return JSONResponse({"code": "service_unavailable.flaky", "message": "try again"}, status_code=503)
    return JSONResponse({"ok": True})


@app.get("/echo-headers")
async def echo_headers(request: Request) -> dict[str, str | None]:
    return {
        "traceparent": request.headers.get(TRACEPARENT_HEADER),
        "deadline_ms": request.headers.get(DEADLINE_HEADER),
    }


@app.get("/error")
async def error(code: str, status: int) -> JSONResponse:
    return JSONResponse({"code": code, "message": f"upstream says {code}"}, status_code=status)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with served_in_thread(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1) as url:
        yield url


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[ServiceClient]:
    async with ServiceClient("upstream", base_url) as c:
        yield c


@pytest.fixture(autouse=True)
async def _clean_context() -> AsyncIterator[None]:
    yield
    set_deadline(None)
    set_trace(None)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: refused


class CountingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.calls = 0
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- basics, trace, deadline


async def test_get_ok_sends_trace_and_budget(client: ServiceClient) -> None:
    resp = await client.get("/echo-headers")
    assert resp.status_code == 200
    body = resp.json()
    assert TraceContext.parse(body["traceparent"]) is not None  # a fresh trace when none is current
    assert body["deadline_ms"] == "2000"  # no caller deadline: the per-attempt timeout


async def test_traceparent_is_a_child_of_the_current_trace(client: ServiceClient) -> None:
    parent = TraceContext.new()
    set_trace(parent)
    sent = TraceContext.parse((await client.get("/echo-headers")).json()["traceparent"])
    assert sent is not None
    assert sent.trace_id == parent.trace_id
    assert sent.span_id != parent.span_id


async def test_deadline_is_propagated_in_the_header(client: ServiceClient) -> None:
    set_deadline(time.monotonic() + 0.5)
    sent = int((await client.get("/echo-headers")).json()["deadline_ms"])
    assert 0 < sent <= 500


async def test_per_call_timeout_caps_the_budget(client: ServiceClient) -> None:
    sent = int((await client.get("/echo-headers", timeout=0.3)).json()["deadline_ms"])
    assert sent == 300


async def test_slow_upstream_times_out_well_before_it_answers(base_url: str, key: str) -> None:
    async with ServiceClient("slowpoke", base_url, timeout=0.2) as c:
        started = time.monotonic()
        with pytest.raises(BankError) as err:
            await c.get("/slow", params={"ms": 5000, "k": key})
        elapsed = time.monotonic() - started
    assert err.value.code == "timeout.slowpoke"
    assert "slowpoke" in err.value.message
    assert elapsed < 5.0  # gave up (three times) before the upstream's one answer would have come
    assert HITS[("/slow", key)] == 3  # GET is idempotent: retried on timeout
    assert 0 < int(SEEN[("/slow", key)][DEADLINE_HEADER]) <= 200


async def test_caller_deadline_covers_all_retries(client: ServiceClient, key: str) -> None:
    set_deadline(time.monotonic() + 0.3)
    started = time.monotonic()
    with pytest.raises(BankError) as err:
        await client.get("/slow", params={"ms": 5000, "k": key})
    assert err.value.code == "timeout.upstream"
    assert time.monotonic() - started < 5.0  # gave up before the upstream answered
    assert HITS[("/slow", key)] == 1  # the first attempt used the whole budget: no retry past it
    assert int(SEEN[("/slow", key)][DEADLINE_HEADER]) <= 300


async def test_expired_deadline_makes_no_network_call(client: ServiceClient, key: str) -> None:
    set_deadline(time.monotonic() - 0.01)
    with pytest.raises(BankError) as err:
        await client.get("/ok", params={"k": key})
    assert err.value.code == "timeout.deadline_exceeded"
    assert err.value.status == 504
    assert HITS[("/ok", key)] == 0


async def test_post_that_may_have_arrived_is_not_retried_on_timeout(client: ServiceClient, key: str) -> None:
    with pytest.raises(BankError) as err:
        await client.post("/slow", params={"ms": 2000, "k": key}, timeout=0.2)
    assert err.value.code == "timeout.upstream"
    assert HITS[("/slow", key)] == 1


# ---------------------------------------------------------------- retries


async def test_get_is_retried_on_503(client: ServiceClient, key: str) -> None:
    resp = await client.get("/flaky", params={"k": key})
    assert resp.status_code == 200
    assert HITS[("/flaky", key)] == 3


async def test_exhausted_retries_return_the_last_response(client: ServiceClient, key: str) -> None:
    resp = await client.get("/flaky", params={"k": key, "fails": 10})
    assert resp.status_code == 503  # returned, not raised: the caller maps it
    assert HITS[("/flaky", key)] == 3


async def test_post_without_idempotency_key_is_not_retried(client: ServiceClient, key: str) -> None:
    resp = await client.post("/flaky", params={"k": key})
    assert resp.status_code == 503
    assert HITS[("/flaky", key)] == 1


async def test_post_with_idempotency_key_is_retried(client: ServiceClient, key: str) -> None:
    resp = await client.post(
        "/flaky", params={"k": key}, json={"amount": 1}, headers={"Idempotency-Key": key}
    )
    assert resp.status_code == 200
    assert HITS[("/flaky", key)] == 3


async def test_post_marked_idempotent_is_retried(client: ServiceClient, key: str) -> None:
    resp = await client.post("/flaky", params={"k": key}, idempotent=True)
    assert resp.status_code == 200
    assert HITS[("/flaky", key)] == 3


async def test_500_is_returned_and_not_retried(client: ServiceClient, key: str) -> None:
    resp = await client.get("/fail", params={"k": key})
    assert resp.status_code == 500
    assert HITS[("/fail", key)] == 1


async def test_connection_refused_is_retried_for_any_method_then_raises() -> None:
    transport = CountingTransport()
    async with ServiceClient("ledger", closed_port_url(), transport=transport) as c:
        with pytest.raises(BankError) as err:
            await c.post("/ok")
    assert err.value.code == "service_unavailable.ledger"
    assert err.value.status == 503
    assert "ledger" in err.value.message
    assert transport.calls == 3  # nothing was sent, so even a POST is safe to retry


async def test_concurrent_calls_share_one_pool(base_url: str) -> None:
    # A generous timeout: what is tested is sharing, not speed (the machine may be busy).
    async with ServiceClient("upstream", base_url, timeout=30) as client:
        responses = await asyncio.gather(*(client.get("/ok") for _ in range(50)))
    assert all(r.status_code == 200 for r in responses)


# ---------------------------------------------------------------- circuit breaker


async def test_breaker_opens_after_consecutive_failures_and_fails_fast(base_url: str, key: str) -> None:
    breaker = CircuitBreaker("flaky-upstream", failure_threshold=3, reset_timeout=60)
    async with ServiceClient("flaky-upstream", base_url, breaker=breaker) as c:
        for _ in range(3):
            assert (await c.get("/fail", params={"k": key})).status_code == 500
        assert breaker.state == "open"
        with pytest.raises(BankError) as err:
            await c.get("/fail", params={"k": key})
    assert err.value.code == "service_unavailable.circuit_open"
    assert HITS[("/fail", key)] == 3  # the fourth call never reached the server


async def test_breaker_half_open_trial_closes_or_reopens(base_url: str, key: str) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("up", failure_threshold=2, reset_timeout=5, clock=clock)
    async with ServiceClient("up", base_url, retries=0, breaker=breaker) as c:
        for _ in range(2):
            await c.get("/fail", params={"k": key})
        assert breaker.state == "open"

        clock.now += 5  # reset timeout elapsed: one trial, which fails -> open again at once
        assert breaker.state == "half_open"
        assert (await c.get("/fail", params={"k": key})).status_code == 500
        assert breaker.state == "open"
        with pytest.raises(BankError):
            await c.get("/ok", params={"k": key})
        assert HITS[("/fail", key)] == 3
        assert HITS[("/ok", key)] == 0

        clock.now += 5  # next trial succeeds -> closed
        assert (await c.get("/ok", params={"k": key})).status_code == 200
        assert breaker.state == "closed"
        assert (await c.get("/ok", params={"k": key})).status_code == 200
        assert HITS[("/ok", key)] == 2


async def test_breaker_half_open_with_real_time(base_url: str, key: str) -> None:
    breaker = CircuitBreaker("up", failure_threshold=1, reset_timeout=0.2)
    async with ServiceClient("up", base_url, retries=0, breaker=breaker) as c:
        await c.get("/fail", params={"k": key})
        with pytest.raises(BankError):
            await c.get("/ok", params={"k": key})
        await asyncio.sleep(0.25)  # past the 0.2 s reset timeout (monotonic): the next call is the trial
        assert breaker.state == "half_open"
        assert (await c.get("/ok", params={"k": key})).status_code == 200
    assert breaker.state == "closed"
    assert HITS[("/ok", key)] == 1


def test_breaker_lets_exactly_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("up", failure_threshold=1, reset_timeout=1, clock=clock)
    breaker.before_call()
    breaker.record_failure()
    clock.now += 1
    breaker.before_call()  # the trial
    with pytest.raises(BankError):
        breaker.before_call()  # a second caller while the trial is in flight
    breaker.release()  # the trial was cancelled: another may go
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"


def test_breaker_counts_only_consecutive_failures() -> None:
    breaker = CircuitBreaker("up", failure_threshold=3)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state == "closed"


async def test_timeouts_count_towards_the_breaker(base_url: str, key: str) -> None:
    breaker = CircuitBreaker("up", failure_threshold=3, reset_timeout=60)
    async with ServiceClient("up", base_url, timeout=0.1, retries=2, backoff=0.01, breaker=breaker) as c:
        with pytest.raises(BankError, match=r"timeout\.up"):
            await c.get("/slow", params={"ms": 1000, "k": key})
    assert breaker.state == "open"


# ---------------------------------------------------------------- error mapping


async def test_raise_for_upstream_error_keeps_the_typed_code(client: ServiceClient) -> None:
    resp = await client.get("/error", params={"code": "insufficient_funds.balance", "status": 422})
    with pytest.raises(BankError) as err:
        raise_for_upstream_error(resp)
    assert err.value.code == "insufficient_funds.balance"
    assert err.value.status == 422
    assert err.value.message == "upstream says insufficient_funds.balance"


async def test_raise_for_upstream_error_maps_untyped_failures_to_bad_gateway(client: ServiceClient) -> None:
    with pytest.raises(BankError) as err:
        raise_for_upstream_error(await client.get("/fail"))
    assert err.value.code == "bad_gateway.upstream"
    assert err.value.status == 502
    with pytest.raises(BankError) as err:
        raise_for_upstream_error(await client.get("/no-such-route"), upstream="accounts")
    assert err.value.code == "bad_gateway.accounts"  # FastAPI's {"detail": ...} is not a typed error


async def test_raise_for_upstream_error_passes_success_through(client: ServiceClient) -> None:
    resp = await client.get("/ok")
    assert raise_for_upstream_error(resp) is resp
