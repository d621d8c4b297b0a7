"""Service-to-service HTTP: one pooled client per upstream, deadlines, retries and a circuit breaker.

A `ServiceClient` never lets a call outlive the caller's deadline (`shared.context`), sends the
remaining budget and the trace downstream, retries only what is safe to retry, and fails fast
while the upstream's circuit is open. Transport failures raise `BankError`; HTTP error responses
are returned, and `raise_for_upstream_error` turns them into the upstream's typed error.
"""

from __future__ import annotations

import asyncio
import json as _json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeVar

import httpx
from prometheus_client import Counter

from shared import tracing
from shared.context import DEADLINE_HEADER, TRACEPARENT_HEADER, TraceContext, current_trace, remaining_seconds
from shared.errors import BankError
from shared.lean_transport import Answer, LeanTransport, Origin

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
# Raised before the request was written, so retrying cannot apply it twice, whatever the method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _Answered(Protocol):
    @property
    def status_code(self) -> int: ...


R = TypeVar("R", bound=_Answered)


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures -> half-open after `reset_timeout`
    seconds, when exactly one trial call goes through: success closes, failure re-opens."""

    def __init__(
        self,
        name: str = "upstream",
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._trial_in_flight or self._clock() - self._opened_at >= self.reset_timeout:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Admit a call, or raise `service_unavailable.circuit_open` without touching the network."""
        if self._opened_at is None:
            return
        if self._trial_in_flight or self._clock() - self._opened_at < self.reset_timeout:
            raise BankError(
                "service_unavailable.circuit_open",
                f"circuit to {self.name} is open after repeated failures; failing fast",
                params={"upstream": self.name},
            )
        self._trial_in_flight = True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._trial_in_flight or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._trial_in_flight = False

    def release(self) -> None:
        """The admitted call ended without a verdict (e.g. cancelled): let another trial through."""
        self._trial_in_flight = False


class RetryBudget:
    """Retries at most `ratio` of the calls made (plus `floor` a second, so a quiet client can still
    retry): when an upstream is failing, it sees at most 1.1x its traffic rather than 1 + retries
    times it, so an overload is not turned into a retry storm (decision 0036). A token bucket: each
    call adds `ratio` of a token, each retry takes one."""

    def __init__(
        self,
        ratio: float = 0.1,
        floor: float = 2.0,
        most: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio, self.floor, self.most = ratio, floor, most
        self.tokens = most
        self._clock = clock
        self._at = clock()

    def called(self) -> None:
        self.tokens = min(self.most, self.tokens + self.ratio)

    def may_retry(self) -> bool:
        now = self._clock()
        self.tokens = min(self.most, self.tokens + (now - self._at) * self.floor)
        self._at = now
        if self.tokens < 1:
            RETRIES_REFUSED.inc()
            return False
        self.tokens -= 1
        return True


RETRIES_REFUSED = Counter(
    "service_client_retries_refused_total", "Retries not made because the client's retry budget was spent"
)


class ServiceClient:
    """Calls one upstream service over a single pooled `httpx.AsyncClient`.

    `timeout` bounds each attempt; the caller's deadline (if set) bounds the whole call, retries
    and backoff included.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.05,
        breaker: CircuitBreaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.breaker = breaker or CircuitBreaker(name)
        self.retry_budget = RetryBudget()
        transport = transport or LeanTransport()
        # trust_env=False: in-cluster calls go direct, never via an HTTP(S)_PROXY from the environment.
        self._client = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=timeout, trust_env=False
        )
        self._lean = transport if isinstance(transport, LeanTransport) else None
        self._origin = Origin.of(self._client.base_url)
        self._prefix = self._client.base_url.path.rstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | bytes | str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        method = method.upper()
        body: dict[str, Any] = {"content": data} if isinstance(data, bytes | str) else {"data": data}

        async def attempt(hdrs: dict[str, str], attempt_timeout: float) -> httpx.Response:
            return await self._client.request(
                method, path, params=params, json=json, headers=hdrs, timeout=attempt_timeout,
                extensions={"upstream": self.name}, **body,
            )  # fmt: skip

        return await self._traced(method, path, headers, timeout, idempotent, attempt)

    async def exchange(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> Answer:
        """`request` for the hot paths (the gateway's proxy, cards' calls to accounts): the same
        deadlines, retries, breaker and trace, without httpx's request and response models, which
        cost about 0.2 ms of CPU a call (decision 0026). `target` is the path and query as sent; the
        answer is buffered. On a transport other than the lean one it goes through httpx."""
        method = method.upper()
        if json is not None:
            body = _json.dumps(json, separators=(",", ":")).encode()
            headers = {**(headers or {}), "content-type": "application/json"}
        lean, origin, url = self._lean, self._origin, self._prefix + target

        async def attempt(hdrs: dict[str, str], attempt_timeout: float) -> Answer:
            if lean is None:
                resp = await self._client.request(
                    method, target, content=body, headers=hdrs, timeout=attempt_timeout,
                    extensions={"upstream": self.name},
                )  # fmt: skip
                return Answer(resp.status_code, resp.headers.raw, resp.content)
            return await lean.exchange(method, origin, url, hdrs, body, attempt_timeout)

        return await self._traced(method, target, headers, timeout, idempotent, attempt)

    async def _traced(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        idempotent: bool | None,
        attempt: Callable[[dict[str, str], float], Awaitable[R]],
    ) -> R:
        """One call, its client span around every attempt."""
        hdrs = dict(headers or {})
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS or any(k.lower() == IDEMPOTENCY_HEADER for k in hdrs)
        span = tracing.child(
            f"{method} {self.name}", kind=tracing.CLIENT, attributes={"peer.service": self.name}
        )
        if span is not None:
            hdrs[TRACEPARENT_HEADER] = span.trace.header
            try:
                resp = await self._attempts(method, path, hdrs, timeout, idempotent, attempt)
            except BaseException as exc:
                span.end(exc)
                raise
            span.set("http.response.status_code", resp.status_code)
            span.end()
            return resp
        trace = current_trace()
        hdrs[TRACEPARENT_HEADER] = (trace.child() if trace else TraceContext.new()).header
        return await self._attempts(method, path, hdrs, timeout, idempotent, attempt)

    async def _attempts(
        self,
        method: str,
        path: str,
        hdrs: dict[str, str],
        timeout: float | None,
        idempotent: bool,
        attempt: Callable[[dict[str, str], float], Awaitable[R]],
    ) -> R:
        """Attempts within the deadline, retrying what is safe to retry, through the breaker."""
        per_attempt = self.timeout if timeout is None else timeout
        resp: R | None = None
        last_exc: Exception | None = None
        attempts = 0
        self.retry_budget.called()
        for n in range(self.retries + 1):
            if n and not self.retry_budget.may_retry():
                break
            if n:  # exponential backoff with jitter, never sleeping past the deadline
                delay = self.backoff * 2 ** (n - 1)
                delay = delay / 2 + random.uniform(0, delay / 2)
                budget = remaining_seconds()
                if budget is not None and delay >= budget:
                    break
                await asyncio.sleep(delay)
            budget = remaining_seconds()
            if budget is not None and budget <= 0:
                if n == 0:
                    raise BankError(
                        "timeout.deadline_exceeded",
                        f"deadline already passed before calling {self.name} {method} {path}",
                    )
                break
            attempt_timeout = per_attempt if budget is None else min(per_attempt, budget)
            hdrs[DEADLINE_HEADER] = str(max(int(attempt_timeout * 1000), 1))

            self.breaker.before_call()
            attempts += 1
            try:
                async with asyncio.timeout(attempt_timeout):  # hard bound: httpx timeouts are per I/O op
                    resp = await attempt(hdrs, attempt_timeout)
            except httpx.LocalProtocolError:
                self.breaker.release()  # our request cannot be written: not the upstream's failure
                raise
            except (httpx.TransportError, TimeoutError) as exc:
                self.breaker.record_failure()
                resp, last_exc = None, exc
                if idempotent or isinstance(exc, _NOT_SENT):
                    continue
                break
            except BaseException:
                self.breaker.release()
                raise
            if resp.status_code >= 500:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            if not (idempotent and resp.status_code in RETRY_STATUSES):
                break

        if resp is not None:
            return resp
        assert last_exc is not None
        raise self._error(last_exc, method, path, attempts)

    def _error(self, exc: Exception, method: str, path: str, attempts: int) -> BankError:
        kind = "timeout" if isinstance(exc, httpx.TimeoutException | TimeoutError) else "service_unavailable"
        what = "timed out" if kind == "timeout" else f"failed ({type(exc).__name__}: {exc})"
        return BankError(
            f"{kind}.{self.name}",
            f"call to {self.name} {method} {path} {what} after {attempts} attempt(s)",
            params={"upstream": self.name},
        )

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PUT", path, **kw)

    async def patch(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def raise_for_upstream_error(resp: httpx.Response, upstream: str | None = None) -> httpx.Response:
    """Return a 2xx response; otherwise raise the upstream's typed error (`{"code", "message"}` body)
    as the same BankError, or `bad_gateway.<upstream>` for any other failure."""
    if resp.is_success:
        return resp
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str) and body["code"]:
        code: str = body["code"]
        message, params = body.get("message"), body.get("params")
        raise BankError(
            code,
            message if isinstance(message, str) else code,
            params=params if isinstance(params, dict) else None,
        )
    name = upstream or resp.request.extensions.get("upstream") or resp.request.url.host
    raise BankError(
        f"bad_gateway.{name}",
        f"{name} answered {resp.request.method} {resp.request.url.path} with HTTP {resp.status_code}",
        params={"upstream": name, "status": resp.status_code},
    )
