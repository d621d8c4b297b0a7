"""Delivery: claim due deliveries, POST them signed, record each attempt, schedule the retries.

The worker claims with `SELECT … FOR UPDATE SKIP LOCKED` (repository.CLAIM_SQL) and marks each claimed
row with a lease (`lease_until`, the attempt's timeout plus a grace): replicas share the work, and what
a killed process was sending is claimed again once its lease runs out. Attempts run as tasks, at most
`workers` per process and `per_endpoint_concurrency` per webhook; their outcomes are written by one
recorder task in batches (the attempt rows, the deliveries' next state, the webhooks' health), which
then wakes the worker for the next due delivery.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.webhooks import repository as repo
from services.webhooks import signing, ssrf
from services.webhooks.config import WebhooksSettings
from services.webhooks.events import TOPIC, WebhookEndpointDisabled
from services.webhooks.ssrf import UrlRefused, parse_networks, parse_url
from shared.db import Database
from shared.events.outbox import Outbox
from shared.lean_transport import Answer, LeanTransport, Origin
from shared.observability import WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS_DISABLED
from shared.retry_after import retry_after_seconds

log = logging.getLogger("services.webhooks.delivery")

USER_AGENT = "mondo-bank-webhooks/1.0"
BODY_KEPT = 1024  # of the response, in the attempt's history
OPENED_KEPT = 10_000  # decrypted signing secrets kept in memory
KEEPALIVE_EXPIRY = 4.0  # seconds idle; below the 5 s many servers (uvicorn, Node) keep a connection


# -- pure rules -------------------------------------------------------------------


def scheduled_delay(schedule: list[float], jitter: float, attempts_in_schedule: int) -> float | None:
    """Seconds until the next attempt after `attempts_in_schedule` failed ones, or None: exhausted."""
    if attempts_in_schedule > len(schedule):
        return None
    base = schedule[attempts_in_schedule - 1]
    return base * random.uniform(1 - jitter, 1 + jitter) if jitter else base


@dataclass(frozen=True, slots=True)
class Outcome:
    started_at: datetime
    latency_ms: int
    status_code: int | None = None
    error: str | None = None
    body: str | None = None
    retry_after: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # succeeded | pending | failed
    delay: float  # until the next attempt (pending only)
    disable: bool  # the receiver answered 410 Gone


def judge(outcome: Outcome, attempts_in_schedule: int, settings: WebhooksSettings) -> Verdict:
    if outcome.succeeded:
        return Verdict("succeeded", 0.0, False)
    if outcome.status_code == 410:
        return Verdict("failed", 0.0, True)
    delay = scheduled_delay(settings.retry_schedule_seconds, settings.jitter, attempts_in_schedule)
    if delay is None:
        return Verdict("failed", 0.0, False)
    if outcome.status_code in (429, 503):
        asked = retry_after_seconds(outcome.retry_after, now=outcome.started_at)
        if asked is not None:
            delay = min(asked, settings.max_retry_after_seconds)
    return Verdict("pending", delay, False)


# -- sending -------------------------------------------------------------------


class Sender:
    """Signed POSTs to the receivers, on the bank's one HTTP/1.1 client (shared/lean_transport.py).

    Idle connections are pooled per (scheme, host, port). Every new TCP connection resolves the host,
    vets every address (ssrf.vetted_addresses) and connects to a vetted address; TLS SNI and `Host`
    carry the name. No redirects, no proxies, at most `max_response_bytes` of an answer read (raw: we
    ask for `identity`), one timeout for the whole attempt, DNS included. A kept-alive connection that
    the receiver closed before answering (it timed out idle) is replaced once by a fresh one.
    """

    def __init__(self, settings: WebhooksSettings) -> None:
        self.settings = settings
        self.allow = parse_networks(settings.allow_networks)
        self.transport = LeanTransport(
            max_connections=settings.workers,
            keepalive_expiry=KEEPALIVE_EXPIRY,
            max_body_bytes=settings.max_response_bytes,
            over_limit="truncate",
            addresses=self._vetted,
            tls=httpx.create_ssl_context(),
            retry_stale=True,
        )

    async def _vetted(self, origin: Origin) -> list[str]:
        """Where a new connection to `origin` may go: every address its name resolves to, if all pass."""
        return [str(ip) for ip in await ssrf.vetted_addresses(origin.host.decode(), origin.port, self.allow)]

    async def aclose(self) -> None:
        await self.transport.aclose()

    def prune(self) -> None:
        """Close idle connections past their keep-alive expiry."""
        self.transport.prune()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        started_at = datetime.now(UTC)
        started = time.perf_counter()

        def took() -> int:
            return round((time.perf_counter() - started) * 1000)

        try:
            target = parse_url(url, allow_http=self.settings.allow_http)
            try:
                host = target.host.encode("idna") if not target.host.isascii() else target.host.encode()
            except UnicodeError as exc:
                raise UrlRefused("bad_url", f"the host is not a valid name: {exc}") from None
            parts = urlsplit(url.strip())
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            fields = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "accept-encoding": "identity",
                **headers,
            }
            origin = Origin(target.scheme.encode(), host, target.port)
            async with asyncio.timeout(self.settings.timeout_seconds):
                answer = await self.transport.exchange("POST", origin, path, fields, body, None)
        except UrlRefused as exc:
            return Outcome(started_at, took(), error=f"refused.{exc.reason}: {exc.message}")
        except TimeoutError:
            return Outcome(
                started_at, took(), error=f"timeout: no answer within {self.settings.timeout_seconds:g}s"
            )
        except (OSError, httpx.HTTPError) as exc:
            return Outcome(started_at, took(), error=f"connection: {type(exc).__name__}: {exc}"[:500])
        return Outcome(
            started_at,
            took(),
            status_code=answer.status_code,
            body=answer.content[:BODY_KEPT].decode("utf-8", "replace"),
            retry_after=_header(answer, b"retry-after"),
        )


def _header(answer: Answer, name: bytes) -> str | None:
    for key, value in answer.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


# -- the worker and the recorder -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    claimed: repo.Claimed
    outcome: Outcome | None  # None: not sent, the webhook is no longer active


class Deliverer:
    def __init__(
        self, db: Database, outbox: Outbox, box: signing.SecretBox, settings: WebhooksSettings
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.box = box
        self.settings = settings
        self.sender = Sender(settings)
        self.wake = asyncio.Event()
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._results: asyncio.Queue[Result] = asyncio.Queue()
        self._abandoned: list[repo.Claimed] = []
        # Every attempt this process holds (claimed, until its outcome is recorded): delivery id -> attempt.
        # Their leases are renewed, so a slow send or a slow recorder never lets another worker send the
        # same delivery again while this one may still record it.
        self._held: dict[str, int] = {}
        self._leases_kept_at = 0.0
        self._opened: dict[tuple[str, bytes], str] = {}  # (webhook id, sealed secret) -> secret

    # The worker ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Background task: claim due deliveries while there is room, send each in its own task."""
        try:
            while True:
                self.wake.clear()
                if time.monotonic() - self._leases_kept_at >= self.lease_check_seconds:
                    await self.keep_leases()
                room = min(self.settings.workers - len(self._sending), self.settings.claim_batch)
                claimed: list[repo.Claimed] = []
                if room > 0:
                    try:
                        claimed = await self.claim(room)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("cannot claim deliveries; retrying")
                for c in claimed:
                    self._sending[c.id] = asyncio.create_task(self._send(c), name=f"webhook {c.id}")
                if claimed and len(claimed) == room:
                    continue  # more may be due
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_seconds)
                except TimeoutError:
                    pass
        finally:
            await self._abandon()

    @property
    def lease_check_seconds(self) -> float:
        """How often leases are renewed and expired ones reaped: well within a lease."""
        return max(0.05, min(1.0, self.settings.lease_seconds / 4))

    async def keep_leases(self) -> None:
        self._leases_kept_at = time.monotonic()
        try:
            async with self.db.transaction() as session:
                await repo.keep_leases(
                    session, list(self._held.items()), lease_seconds=self.settings.lease_seconds
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cannot renew leases; retrying")
        self.sender.prune()

    async def claim(self, limit: int) -> list[repo.Claimed]:
        async with self.db.transaction() as session:
            claimed = await repo.claim(
                session,
                limit=limit,
                cap=self.settings.per_endpoint_concurrency,
                lease_seconds=self.settings.lease_seconds,
            )
        for c in claimed:
            self._held[c.id] = c.attempt
        return claimed

    async def _abandon(self) -> None:
        """Shutting down: stop the attempts in flight and give their deliveries back at once (a process
        that is killed instead leaves them to their leases)."""
        tasks = list(self._sending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if abandoned := list(self._abandoned):
            try:
                async with self.db.transaction() as session:
                    await repo.release(session, [(c.id, c.attempt) for c in abandoned])
                for c in abandoned:
                    self._held.pop(c.id, None)
            except Exception:
                log.warning("could not release %d deliveries; their leases will run out", len(abandoned))

    def _open(self, webhook_id: str, sealed: bytes) -> str:
        """Decrypt once per (webhook, sealed secret): a rotation seals a new one, so no invalidation."""
        key = (webhook_id, sealed)
        secret = self._opened.get(key)
        if secret is None:
            if len(self._opened) >= OPENED_KEPT:
                self._opened.clear()
            secret = self._opened[key] = self.box.open(webhook_id, sealed)
        return secret

    def secrets_of(self, c: repo.Claimed) -> list[str]:
        secrets = [self._open(c.webhook_id, c.secret)]
        if c.previous_secret is not None and c.previous_secret_expires_at is not None:
            if c.previous_secret_expires_at > c.now:
                secrets.append(self._open(c.webhook_id, c.previous_secret))
        return secrets

    async def _send(self, c: repo.Claimed) -> None:
        try:
            if c.webhook_status != "active":
                self._results.put_nowait(Result(c, None))
                return
            body = c.payload.encode()
            headers = signing.headers(self.secrets_of(c), c.id, int(time.time()), body)
            outcome = await self.sender.post(c.url, body, headers)
            self._results.put_nowait(Result(c, outcome))
        except asyncio.CancelledError:
            self._abandoned.append(c)
            raise
        except Exception as exc:  # a bug must not leave the delivery leased forever without a trace
            log.exception("delivery %s failed unexpectedly", c.id)
            outcome = Outcome(datetime.now(UTC), 0, error=f"internal: {type(exc).__name__}")
            self._results.put_nowait(Result(c, outcome))
        finally:
            self._sending.pop(c.id, None)

    # The recorder -------------------------------------------------------------------------------------------

    async def record(self) -> None:
        """Background task: write outcomes in batches, then wake the worker."""
        pending: list[Result] = []
        try:
            while True:
                if not pending:
                    pending.append(await self._results.get())
                while not self._results.empty() and len(pending) < 500:
                    pending.append(self._results.get_nowait())
                try:
                    await self.write(pending)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("cannot record %d delivery outcomes; retrying", len(pending))
                    await asyncio.sleep(self.settings.poll_seconds)
                    continue
                for r in pending:
                    self._held.pop(r.claimed.id, None)
                pending = []
                self.wake.set()
        finally:
            while not self._results.empty():
                pending.append(self._results.get_nowait())
            if pending:
                try:
                    await self.write(pending)
                except Exception:
                    log.warning(
                        "could not record %d outcomes at shutdown; they will be re-sent", len(pending)
                    )

    async def write(self, results: list[Result]) -> None:
        finished: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        last_ok: dict[str, bool] = {}
        first_failure: dict[str, datetime] = {}
        gone: list[str] = []
        for r in results:
            c, outcome = r.claimed, r.outcome
            if outcome is None:
                finished.append(_finish(c, "failed", 0.0, None, "the webhook is not active", None))
                continue
            verdict = judge(outcome, c.attempt - c.retry_base, self.settings)
            error = outcome.error or (None if outcome.succeeded else f"HTTP {outcome.status_code}")
            finished.append(
                _finish(c, verdict.status, verdict.delay, outcome.status_code, error, outcome.started_at)
            )
            attempts.append(
                {
                    "delivery_id": c.id,
                    "webhook_id": c.webhook_id,
                    "attempt": c.attempt,
                    "started_at": outcome.started_at,
                    "latency_ms": outcome.latency_ms,
                    "status_code": outcome.status_code,
                    "error": error,
                    "succeeded": outcome.succeeded,
                    "response_body": outcome.body,
                }
            )
            last_ok[c.webhook_id] = outcome.succeeded
            if not outcome.succeeded:
                first_failure.setdefault(c.webhook_id, outcome.started_at)
            if verdict.disable:
                gone.append(c.webhook_id)
        async with self.db.transaction() as session:
            await repo.finish(session, finished, attempts)
            if healthy := [w for w, ok in last_ok.items() if ok]:
                await repo.healthy(session, healthy)
            unhealthy = {w: first_failure[w] for w, ok in last_ok.items() if not ok}
            if unhealthy:
                await repo.failing(session, unhealthy)
            disabled = await repo.disable(session, gone, "gone") if gone else []
            if unhealthy:
                disabled += await repo.disable(
                    session, list(unhealthy), "failing", failing_for=self.settings.disable_after_seconds
                )
            for webhook in disabled:
                await repo.fail_pending(
                    session, webhook.id, f"the webhook was disabled ({webhook.disabled_reason})"
                )
                await self.outbox.emit(session, TOPIC, webhook.account_id, disabled_event(webhook))
                log.warning("webhook %s disabled: %s", webhook.id, webhook.disabled_reason)
        # Counted once the outcomes are committed (a rolled-back write is retried, not counted twice).
        for row in finished:
            WEBHOOK_DELIVERIES.labels(_OUTCOME_LABELS.get(row["status"], row["status"])).inc()
        WEBHOOK_ENDPOINTS_DISABLED.inc(len(disabled))

    async def aclose(self) -> None:
        await self.sender.aclose()


_OUTCOME_LABELS = {"succeeded": "delivered", "pending": "retry", "failed": "failed"}


def _finish(
    c: repo.Claimed, status: str, delay: float, code: int | None, error: str | None, at: datetime | None
) -> dict[str, Any]:
    return {
        "id": c.id,
        "attempt": c.attempt,
        "status": status,
        "delay": delay,
        "status_code": code,
        "error": error,
        "started_at": at or c.now,
    }


def disabled_event(webhook: Any) -> WebhookEndpointDisabled:
    return WebhookEndpointDisabled(
        webhook_id=webhook.id,
        account_id=webhook.account_id,
        user_id=webhook.user_id,
        url=webhook.url,
        reason=webhook.disabled_reason or "failing",
        failing_since=webhook.failing_since.isoformat() if webhook.failing_since else None,
        disabled_at=datetime.now(UTC).isoformat(),
    )
