"""Open-loop load: every message is sent at its scheduled time whether or not earlier ones have answered.

Latency is measured from the *scheduled* time, not from when a request happened to leave, so a bank
that falls behind cannot hide it by slowing the generator down (coordinated omission). Latencies go
into HDR histograms (microseconds, 3 significant digits), overall per kind and per one-second window
for the over-time chart.

The network behaves as a card scheme does:

* an authorisation with no answer (timeout, a refused connection, 429/5xx) is reversed: the network
  sends a full 0400 and keeps sending it until acknowledged (store and forward);
* reversals, advices and presentments are sent again until acknowledged (91, `retry`, no answer);
* messages that depend on an approval (the clearing of a purchase, a hotel's partial reversal) are
  sent only if it was approved, waiting for its answer if it is still in flight.

HTTP goes over a small HTTP/1.1 keep-alive pool on asyncio streams: httpx costs about a millisecond of
CPU per request, which on a 2-core machine would be taken from the bank being measured.

The customers' app calls in a schedule (payments, pot moves) go through `simulator.app.App`, on the
customers' own tokens, resent with the same dedupe_id until answered.

The wire is JSON over HTTP (`JsonWire`, the gateway's /network routes) or ISO 8583 over persistent
links (`simulator.iso8583.LinkWire`, `--wire iso8583`). On the links, an authorisation left unanswered
by a cut link is first repeated (0101) on another link, as networks do, and reversed only if no
repeat is answered either; reversals and advices are resent as 0401 and 0121.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from hdrh.histogram import HdrHistogram

from simulator.books import Books
from simulator.merchants import Merchant, catalogue
from simulator.population import Customer
from simulator.scenarios import (
    ADVICE,
    APP_KINDS,
    AUTHORISATION,
    CLEARING,
    PAYMENT,
    POT_DEPOSIT,
    POT_WITHDRAWAL,
    REPEAT,
    REVERSAL,
    Message,
)

if TYPE_CHECKING:
    from simulator.app import App

MAX_LATENCY_US = 3_600_000_000
PATHS = {
    AUTHORISATION: "/network/authorisations",
    REPEAT: "/network/authorisations",
    ADVICE: "/network/advices",
    REVERSAL: "/network/reversals",
    CLEARING: "/network/clearing",
}
NO_ANSWER = "no_answer"


def histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_LATENCY_US, 3)


# -- HTTP ---------------------------------------------------------------------------------------------


class HttpError(Exception):
    pass


class _StaleConnection(Exception):
    """A reused keep-alive connection failed before any byte of an answer arrived."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Pool:
    """HTTP/1.1 keep-alive connections to one origin, opened on demand up to `size` at once."""

    def __init__(self, base_url: str, headers: dict[str, str], size: int = 512) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the load generator speaks plain http://host:port, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._host = f"Host: {self.host}:{self.port}\r\n{extra}"
        self._head = f"{self._host}Content-Type: application/json\r\n"
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(size)
        self.opened = 0
        self.stale = 0  # idle connections the server had closed, found on reuse

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """A JSON body POSTed with the pool's headers."""
        return await self._request(f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}", body, timeout)

    async def request(
        self, method: str, path: str, body: bytes, timeout: float, *, headers: dict[str, str],
        content_type: str = "application/x-www-form-urlencoded",
    ) -> tuple[int, bytes]:  # fmt: skip
        """Any request, with these headers beside the pool's (a customer's token, a form body)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        start = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._host}{extra}"
        return await self._request(f"{start}Content-Type: {content_type}\r\n", body, timeout)

    async def _request(self, head: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        async with self.slots, asyncio.timeout(timeout):
            conn = self.idle.pop() if self.idle else None
            try:
                return await self._exchange_on(conn, head, body)
            except _StaleConnection:
                # The server closed the idle connection as we reused it (its keep-alive timeout): it
                # saw nothing, so the message goes again on a fresh connection, as any HTTP client does.
                self.stale += 1
                return await self._exchange_on(None, head, body)

    async def _exchange_on(self, conn: _Conn | None, head: str, body: bytes) -> tuple[int, bytes]:
        reused = conn is not None
        try:
            if conn is None:
                conn = _Conn(*await asyncio.open_connection(self.host, self.port))
                self.opened += 1
            status, payload, keep = await self._exchange(conn, head, body)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            if conn is not None:
                conn.close()
            if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                raise _StaleConnection from exc
            raise
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if keep:
            self.idle.append(conn)
        else:
            conn.close()
        return status, payload

    async def _exchange(self, conn: _Conn, head: str, body: bytes) -> tuple[int, bytes, bool]:
        """`head`: the request line and headers but Content-Length."""
        conn.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await conn.reader.readuntil(b"\r\n")
        length, keep, chunked = 0, True, False
        while (line := await conn.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep = False
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while size := int((await conn.reader.readuntil(b"\r\n")).strip(), 16):
                parts.append(await conn.reader.readexactly(size + 2))
            await conn.reader.readuntil(b"\r\n")
            payload = b"".join(p[:-2] for p in parts)
        else:
            payload = await conn.reader.readexactly(length)
        return int(status_line.split()[1]), payload, keep

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class JsonWire:
    """The JSON messages over HTTP (`Pool`), to the /network routes."""

    name = "json"
    repeats_unanswered = False

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def send(
        self, kind: str, body: dict[str, Any], field_name: str, timeout: float, resend: bool = False
    ) -> tuple[str, dict[str, Any]]:
        status, payload = await self.pool.post(PATHS[kind], json.dumps(body).encode(), timeout)
        return _code_of(status, payload, field_name)

    async def aclose(self) -> None:
        self.pool.close()


class Wire(Protocol):
    name: str

    async def send(
        self, kind: str, body: dict[str, Any], field_name: str, timeout: float, resend: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """The answer's code and the answer; raises (OSError, TimeoutError, …) when none came."""
        ...

    async def aclose(self) -> None: ...


# -- what happened ------------------------------------------------------------------------------------


@dataclass
class Window:
    """One second of the run (by scheduled time)."""

    offered: int = 0
    answered: int = 0
    auth: HdrHistogram = field(default_factory=histogram)


class Stats:
    """Everything the live view and the report show. Latencies in microseconds."""

    def __init__(self) -> None:
        self.started = time.time()
        self.latency: dict[str, HdrHistogram] = defaultdict(histogram)
        self.codes: dict[str, Counter[str]] = defaultdict(Counter)
        self.errors: Counter[str] = Counter()
        self.windows: dict[int, Window] = defaultdict(Window)
        self.lag = histogram()  # how late the generator dispatched (its own health)
        self.offered = 0
        self.answered = 0
        self.skipped = 0  # dependents of declined authorisations, not sent
        self.resent = 0  # store-and-forward repeats
        self.in_flight = 0
        self.elapsed = 0.0

    def offer(self, second: int) -> None:
        self.offered += 1
        self.windows[second].offered += 1

    def record(self, kind: str, second: int, latency_s: float, code: str) -> None:
        us = max(1, int(latency_s * 1e6))
        self.latency[kind].record_value(min(us, MAX_LATENCY_US))
        self.codes[kind][code] += 1
        self.answered += 1
        window = self.windows[second]
        window.answered += 1
        if kind == AUTHORISATION:
            window.auth.record_value(min(us, MAX_LATENCY_US))

    def percentiles(self, kind: str = AUTHORISATION) -> dict[str, float]:
        h = self.latency.get(kind)
        if h is None or h.get_total_count() == 0:
            return {"count": 0}
        return {
            "count": h.get_total_count(),
            "p50_ms": h.get_value_at_percentile(50) / 1000,
            "p90_ms": h.get_value_at_percentile(90) / 1000,
            "p99_ms": h.get_value_at_percentile(99) / 1000,
            "p99_9_ms": h.get_value_at_percentile(99.9) / 1000,
            "max_ms": h.get_max_value() / 1000,
            "mean_ms": h.get_mean_value() / 1000,
        }

    def recent_rates(self, now_second: int, span: int = 3) -> tuple[float, float]:
        """Offered and answered per second over the last `span` whole seconds."""
        seconds = [s for s in range(now_second - span, now_second) if s >= 0]
        if not seconds:
            return 0.0, 0.0
        offered = sum(self.windows[s].offered for s in seconds if s in self.windows)
        answered = sum(self.windows[s].answered for s in seconds if s in self.windows)
        return offered / len(seconds), answered / len(seconds)


# -- the network --------------------------------------------------------------------------------------


def _code_of(status: int, payload: bytes, field_name: str = "response_code") -> tuple[str, dict[str, Any]]:
    """The answer's code (`response_code`, or a presentment result's `status`) and the answer."""
    if status != 200:
        return f"http_{status}", {}
    try:
        doc = _first_result(json.loads(payload))
    except ValueError:
        return "bad_json", {}
    return str(doc.get(field_name, "missing")), doc


class Network:
    """Plays a schedule against the bank, keeping `books` from its answers (the app's calls through
    `app`)."""

    def __init__(
        self,
        pool: Pool | Wire,
        customers: Sequence[Customer],
        books: Books,
        stats: Stats,
        *,
        timeout: float = 10.0,
        forward_seconds: float = 90.0,
        merchants: Sequence[Merchant] | None = None,
        app: App | None = None,
    ) -> None:
        self.wire: Wire = JsonWire(pool) if isinstance(pool, Pool) else pool
        self.app = app
        self.customers, self.books, self.stats = customers, books, stats
        # ISO 8583 links: an authorisation a cut left unanswered is repeated (0101), see _authorise.
        self.repeats = getattr(self.wire, "repeats_unanswered", False)
        self.timeout, self.forward_seconds = timeout, forward_seconds
        self.merchants = {m.id: m for m in (merchants or catalogue())}
        self.bodies: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        self.awaiting: Counter[str] = Counter()  # answers still to come per authorisation network id
        self.decided: dict[str, asyncio.Future[bool]] = {}
        self.start = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    def _decided(self, nid: str) -> asyncio.Future[bool]:
        if nid not in self.decided:
            self.decided[nid] = asyncio.get_running_loop().create_future()
        return self.decided[nid]

    async def run(
        self, schedule: Sequence[Message], *, on_start: Callable[[float], None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        for m in schedule:
            if m.kind in (AUTHORISATION, REPEAT):
                self.awaiting[m.nid or ""] += 1
        self.start = loop.time() + 0.1
        if on_start is not None:
            on_start(self.start)
        for m in schedule:
            due = self.start + m.at
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            self.stats.lag.record_value(max(1, min(int((loop.time() - due) * 1e6), MAX_LATENCY_US)))
            self.stats.offer(int(m.at))
            task = loop.create_task(self._send(m, due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        while self.tasks:
            await asyncio.gather(*list(self.tasks))
        self.stats.elapsed = loop.time() - self.start

    # -- one message --------------------------------------------------------------------------------

    async def _attempt(
        self, m: Message, due: float, body: dict[str, Any], field_name: str, resend: bool = False,
        record: bool = True,
    ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        """One try, recorded in the statistics (latency from `due`) unless `record` is false (a try
        that is repeated when it gets no answer: only the last one counts)."""
        self.stats.in_flight += 1
        try:
            code, doc = await self.wire.send(m.kind, body, field_name, self.timeout, resend)
        except (OSError, asyncio.IncompleteReadError, ValueError, HttpError, TimeoutError) as exc:
            code, doc = NO_ANSWER, {}
            self.stats.errors[type(exc).__name__ if record else f"repeated:{type(exc).__name__}"] += 1
        finally:
            self.stats.in_flight -= 1
        if code.startswith("http_") or code == "bad_json":
            self.stats.errors[code] += 1
        if record or code != NO_ANSWER:
            self.stats.record(m.kind, int(m.at), asyncio.get_running_loop().time() - due, code)
        return code, doc

    async def _send(self, m: Message, due: float) -> None:
        try:
            if m.kind in (AUTHORISATION, REPEAT):
                await self._authorise(m, due)
            elif m.kind == ADVICE:
                await self._advise(m, due)
            elif m.kind == REVERSAL:
                await self._reverse(m, due)
            elif m.kind in APP_KINDS:
                await self._app_call(m, due)
            else:
                await self._clear(m, due)
        except Exception as exc:  # a bug here must not stop the run; it is a problem in the report
            name = m.nid or m.presentment_id or m.dedupe_id
            self.books.problem(f"{m.kind} {name}: the simulator failed: {exc!r}")
            waited_for = (
                m.dedupe_id if m.kind == POT_DEPOSIT else m.nid if m.kind in (AUTHORISATION, ADVICE) else None
            )
            if waited_for and not self._decided(waited_for).done():
                self._decided(waited_for).set_result(False)

    async def _authorise(self, m: Message, due: float) -> None:
        nid = m.nid or ""
        if m.kind == AUTHORISATION:
            body = self._financial(m)
            body["mti"] = "0100"
            self.bodies[nid] = body
        else:
            body = {**self.bodies[nid], "mti": "0101"}
        # On the ISO 8583 links, an 0100 a cut (or a restart of cards) left unanswered is repeated
        # (0101) on another link, backing off, until answered or the network's timeout has passed.
        loop = asyncio.get_running_loop()
        give_up, pause = loop.time() + self.timeout, 0.1
        code, doc = await self._attempt(m, due, body, "response_code", record=not self.repeats)
        while code == NO_ANSWER and self.repeats:
            last = loop.time() + pause >= give_up
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            self.stats.resent += 1
            code, doc = await self._attempt(m, due, body, "response_code", resend=True, record=last)
            if last:
                break
        if code.isdigit() and len(code) == 2:
            self.answers[nid].append((code, doc.get("authorisation_id") or doc.get("approval_code")))
        self.awaiting[nid] -= 1
        if self.awaiting[nid] == 0:
            await self._decide(m, nid)

    async def _decide(self, m: Message, nid: str) -> None:
        answers = self.answers.get(nid, [])
        future = self._decided(nid)
        if not answers:
            self.books.unanswered(nid, m.card, m.amount)
            future.set_result(False)
            body = self.bodies[nid]
            reversal = {
                "mti": "0400", "network_transaction_id": nid, "pan": body["pan"], "amount": body["amount"],
                "currency": "GBP", "stan": body["stan"], "rrn": body["rrn"], "transmission_time": _now(),
            }  # fmt: skip
            if body["amount"] > 0:
                await self._forward(REVERSAL, nid, reversal, "response_code", {"00"})
            return
        code, authorisation_id = answers[0]
        if any(a != answers[0] for a in answers[1:]):
            self.books.problem(
                f"authorisation {nid}: a repeat was answered {answers[1:]}, the original {answers[0]}"
            )
        self.books.authorised(nid, m.card, m.amount, code, authorisation_id)
        future.set_result(code == "00")

    async def _approved(self, nid: str | None) -> bool:
        if nid is None:
            return True
        approved = await self._decided(nid)
        if not approved:
            self.stats.skipped += 1
        return approved

    async def _advise(self, m: Message, due: float) -> None:
        nid = m.nid or ""
        body = {**self._financial(m), "mti": "0120", "response_code": "00"}
        code, _ = await self._first_then_forward(m, due, body, "response_code", {"00"})
        if code == "00":
            self.books.advised(nid, m.card, m.amount)
        else:
            self.books.problem(f"advice {nid}: never acknowledged (last answer {code})")
        self._decided(nid).set_result(code == "00")

    async def _reverse(self, m: Message, due: float) -> None:
        if not await self._approved(m.needs):
            return
        nid = m.nid or ""
        c = self.customers[m.card]
        body: dict[str, Any] = {
            "mti": "0400", "network_transaction_id": nid, "pan": c.pan,
            "amount": m.original_amount or m.amount, "currency": "GBP", "stan": _stan(m.seq),
            "rrn": _rrn(m.seq), "transmission_time": _now(),
        }  # fmt: skip
        if m.replacement:
            body["replacement_amount"] = m.replacement
        code, _ = await self._first_then_forward(m, due, body, "response_code", {"00", "57"})
        if code in ("00", "57"):
            self.books.reversed(nid, m.replacement or 0, code)
        else:
            self.books.problem(f"reversal {nid}: never acknowledged (last answer {code})")

    async def _clear(self, m: Message, due: float) -> None:
        if not await self._approved(m.needs):
            return
        c, merchant = self.customers[m.card], self.merchants[m.merchant]
        body: dict[str, Any] = {
            "mti": "1240", "presentment_id": m.presentment_id, "pan": c.pan,
            "processing_code": m.processing_code, "amount": m.amount, "currency": "GBP",
            "merchant": merchant.message_json(), "rrn": _rrn(m.seq),
        }  # fmt: skip
        if m.nid:
            body["network_transaction_id"] = m.nid
        status, doc = await self._first_then_forward(m, due, body, "status", {"settled", "rejected"})
        if status in ("settled", "rejected"):
            self.books.cleared(m.card, m.nid, m.amount, status, doc.get("outcome"))
        else:
            self.books.problem(f"presentment {m.presentment_id}: never settled (last answer {status})")

    async def _app_call(self, m: Message, due: float) -> None:
        """A customer's payment or pot move, from their app (a withdrawal once its deposit is done)."""
        if self.app is None:
            raise RuntimeError("an app call in the schedule, and no app to make it")
        if m.kind == POT_WITHDRAWAL and not await self._approved(m.needs):
            return
        code, _ = await self.app.call(m, self.stats)
        self.stats.record(m.kind, int(m.at), asyncio.get_running_loop().time() - due, code)
        done = code == self.app.OK
        if done and m.kind == PAYMENT:
            assert m.counterparty is not None
            self.books.paid(m.card, m.counterparty, m.amount)
        elif done:
            self.books.pot_moved(m.card, m.amount, deposit=m.kind == POT_DEPOSIT)
        elif self.app.unanswered(code):
            self.books.problem(f"{m.kind} {m.dedupe_id}: never answered (last answer {code})")
        if m.kind == POT_DEPOSIT:
            self._decided(m.dedupe_id or "").set_result(done)

    async def _first_then_forward(
        self, m: Message, due: float, body: dict[str, Any], field_name: str, final: set[str]
    ) -> tuple[str, dict[str, Any]]:
        code, doc = await self._attempt(m, due, body, field_name)
        if code in final or _hopeless(code):
            return code, doc
        return await self._forward(m.kind, m.nid or m.presentment_id or "", body, field_name, final, code)

    async def _forward(
        self, kind: str, ident: str, body: dict[str, Any], field_name: str, final: set[str], last: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """Store and forward: send again (backing off to 2 s) until acknowledged or out of time."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.forward_seconds, 0.2
        while loop.time() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
            self.stats.resent += 1
            try:
                last, doc = await self.wire.send(kind, body, field_name, self.timeout, True)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                last, doc = NO_ANSWER, {}
                self.stats.errors[f"resend:{type(exc).__name__}"] += 1
            if last in final or _hopeless(last):
                return last, doc
        return last, {}

    def _financial(self, m: Message) -> dict[str, Any]:
        c, merchant = self.customers[m.card], self.merchants[m.merchant]
        body: dict[str, Any] = {
            "pan": c.pan, "expiry": c.expiry, "processing_code": m.processing_code, "amount": m.amount,
            "currency": "GBP", "stan": _stan(m.seq), "rrn": _rrn(m.seq), "transmission_time": _now(),
            "network_transaction_id": m.nid, "merchant": merchant.message_json(),
        }  # fmt: skip
        if m.card_not_present:
            body["cvc"] = c.cvc
        return body


def _hopeless(code: str) -> bool:
    """A 4xx other than 429 will not change by sending the same message again."""
    return code.startswith("http_4") and code != "http_429"


def _first_result(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {}
    results = doc.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
        return results[0]
    return doc


def _stan(seq: int) -> str:
    return f"{seq % 1_000_000:06d}"


def _rrn(seq: int) -> str:
    return f"{seq % 10**12:012d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
