"""The card network's side of the ISO 8583 link (docs/iso8583.md): persistent, pipelined connections.

The simulator is an outside client: it does not import the bank's code. Messages are encoded and
decoded with pyiso8583 (`iso8583.specs.default_ascii`, a dev dependency), an implementation
independent of the bank's own codec.

* `Link`: one TCP connection. It signs on (0800, DE 70 001, the network key in DE 48 tag 01), then
  any number of messages may be in flight on it; an answer is matched to its request by DE 11 (the
  STAN, which the link assigns) with DE 7 and DE 63. A cut fails everything in flight with `LinkDown`.
* `Links`: a few links used in turn. A link that goes down is opened again in the background; every
  `echo_seconds` each link sends an 0800/301 echo, which keeps an idle link open.
* `LinkWire`: the simulator's messages (the JSON bodies `loadgen` builds) as ISO 8583 on `Links`.
  Clearing (1240) is not an authorisation-link message (schemes send it in files): it goes to the
  JSON wire it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import iso8583
from iso8583.specs import default_ascii

SPEC = default_ascii
MAX_FRAME = 8 * 1024
SIGN_ON, SIGN_OFF, ECHO = "001", "002", "301"
REPEAT_MTI = {"0100": "0101", "0120": "0121", "0400": "0401"}
NUMERIC_CURRENCY = {"GBP": "826", "EUR": "978", "USD": "840"}
Key = tuple[str, str, str]


class LinkDown(ConnectionError):
    """No answer will come on this link: it was cut (or never opened) with the message in flight."""


def frame(doc: dict[str, str]) -> bytes:
    raw, _ = iso8583.encode(dict(doc), SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


def transmission_time(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).strftime("%m%d%H%M%S")


def subelements(values: dict[str, str]) -> str:
    return "".join(f"{tag}{len(value):02d}{value}" for tag, value in values.items())


def key_of(doc: dict[str, Any]) -> Key:
    return str(doc.get("11", "")), str(doc.get("7", "")), str(doc.get("63", ""))


class Link:
    """One persistent, pipelined connection to the bank's ISO 8583 listener."""

    _ids = itertools.count(1)

    def __init__(self, host: str, port: int, network_key: str) -> None:
        self.host, self.port, self.network_key = host, port, network_key
        self.name = f"link{next(self._ids)}"
        self.pending: dict[Key, asyncio.Future[dict[str, str]]] = {}
        self.unmatched = 0
        self.closed = True
        self.lost_in_flight = 0  # messages in flight when the link went down
        self._stan = itertools.count(random.randrange(1, 900_000))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def next_stan(self) -> str:
        return f"{next(self._stan) % 999_999 + 1:06d}"

    async def open(self, timeout: float = 5.0, sign_on: bool = True) -> dict[str, str] | None:
        """Connect and (by default) sign on; the sign-on's answer, or LinkDown if refused."""
        async with asyncio.timeout(timeout):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read())
        if not sign_on:
            return None
        answer = await self.network_management(SIGN_ON, timeout, key=self.network_key)
        if answer.get("39") != "00":
            self.abort()
            raise LinkDown(f"sign-on refused ({answer.get('39')})")
        return answer

    async def network_management(
        self, code: str, timeout: float = 5.0, key: str | None = None
    ) -> dict[str, str]:
        doc = {"t": "0800", "7": transmission_time(), "11": self.next_stan(), "70": code}
        if key is not None:
            doc["48"] = subelements({"01": key})
        return await self.exchange(doc, timeout)

    async def exchange(self, doc: dict[str, str], timeout: float) -> dict[str, str]:
        """Send one request (DE 11 and DE 7 filled in when absent) and wait for its answer."""
        doc.setdefault("11", self.next_stan())
        doc.setdefault("7", transmission_time())
        if self.closed or self._writer is None:
            raise LinkDown(f"{self.name} is down")
        key = key_of(doc)
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            self._writer.write(frame(doc))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if self.pending.get(key) is future:
                del self.pending[key]

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are (tests: broken frames)."""
        if self._writer is None:
            raise LinkDown(f"{self.name} is down")
        self._writer.write(data)

    async def _read(self) -> None:
        assert self._reader is not None
        reason = "closed by the bank"
        try:
            while True:
                head = await self._reader.readexactly(2)
                body = await self._reader.readexactly(int.from_bytes(head, "big"))
                doc, _ = iso8583.decode(body, SPEC)
                future = self.pending.pop(key_of(doc), None)
                if future is None or future.done():
                    self.unmatched += 1
                else:
                    future.set_result(doc)
        except (asyncio.IncompleteReadError, OSError) as exc:
            reason = type(exc).__name__
        except iso8583.DecodeError as exc:
            reason = f"an answer that does not decode: {exc}"
        finally:
            self.closed = True
            self.lost_in_flight += len(self.pending)
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(LinkDown(f"{self.name} went down ({reason}) with this in flight"))
            self.pending.clear()
            if self._writer is not None:
                self._writer.close()

    def abort(self) -> None:
        """Cut the connection at once, whatever is in flight (chaos)."""
        self.closed = True
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self, sign_off: bool = True) -> None:
        if sign_off and not self.closed:
            with contextlib.suppress(Exception):
                await self.network_management(SIGN_OFF, 2.0)
        self.abort()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the bank closed the link within `timeout`."""
        if self._task is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            return False
        return True


class Links:
    """`count` links to one listener, used in turn, kept open (reopened after a cut) and echoed."""

    def __init__(
        self, host: str, port: int, network_key: str, *, count: int = 4, echo_seconds: float = 30.0
    ) -> None:
        self.host, self.port, self.network_key = host, port, network_key
        self.count, self.echo_seconds = count, echo_seconds
        self.links: list[Link] = []
        self.reopened = 0
        self.cuts = 0
        self._turn = itertools.count()
        self._keeper: asyncio.Task[None] | None = None
        self._reopening: dict[int, asyncio.Task[None]] = {}
        self._echoes: set[asyncio.Task[None]] = set()

    async def start(self, timeout: float = 30.0) -> None:
        self.links = [Link(self.host, self.port, self.network_key) for _ in range(self.count)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for link in self.links:
            while True:
                try:
                    await link.open()
                    break
                except (OSError, TimeoutError):
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        self._keeper = loop.create_task(self._keep())

    def _live(self) -> Link | None:
        for _ in range(len(self.links)):
            link = self.links[next(self._turn) % len(self.links)]
            if not link.closed:
                return link
        return None

    async def exchange(self, doc: dict[str, str], timeout: float) -> dict[str, str]:
        link = self._live()
        if link is None:
            self._reopen_all()
            await asyncio.sleep(0.05)
            if (link := self._live()) is None:
                raise LinkDown("no link is up")
        return await link.exchange(doc, timeout)

    @property
    def in_flight(self) -> int:
        return sum(link.in_flight for link in self.links)

    @property
    def lost_in_flight(self) -> int:
        return sum(link.lost_in_flight for link in self.links)

    def cut(self) -> int:
        """Cut every link with whatever is in flight on it (chaos); they are reopened. Returns how
        many messages were in flight."""
        in_flight = self.in_flight
        for link in self.links:
            link.abort()
        self.cuts += 1
        return in_flight

    def _reopen_all(self) -> None:
        for i, link in enumerate(self.links):
            if link.closed and (i not in self._reopening or self._reopening[i].done()):
                self._reopening[i] = asyncio.get_running_loop().create_task(self._reopen(i))

    async def _reopen(self, i: int) -> None:
        pause = 0.1
        while True:
            fresh = Link(self.host, self.port, self.network_key)
            try:
                await fresh.open()
            except (OSError, TimeoutError):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            old, self.links[i] = self.links[i], fresh
            fresh.lost_in_flight += old.lost_in_flight
            self.reopened += 1
            return

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        next_echo = loop.time() + self.echo_seconds
        while True:
            await asyncio.sleep(0.1)
            self._reopen_all()
            if loop.time() >= next_echo:
                next_echo = loop.time() + self.echo_seconds
                for link in self.links:
                    if not link.closed:
                        echo = loop.create_task(_quietly(link.network_management(ECHO, 5.0)))
                        self._echoes.add(echo)
                        echo.add_done_callback(self._echoes.discard)

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        for task in self._reopening.values():
            task.cancel()
        await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)


async def _quietly(call: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):
        await call


# -- the simulator's messages as ISO 8583 ---------------------------------------------------------------


def _amount(value: int) -> str:
    return f"{value:012d}"


def financial_doc(body: dict[str, Any], mti: str) -> dict[str, str]:
    """An 0100/0101 or 0120/0121 from the simulator's JSON body (docs/iso8583.md's profile)."""
    merchant = body["merchant"]
    now = datetime.now(UTC)
    doc = {
        "t": mti, "2": body["pan"], "3": body["processing_code"], "4": _amount(body["amount"]),
        "12": now.strftime("%H%M%S"), "13": now.strftime("%m%d"), "14": body["expiry"],
        "18": merchant["mcc"], "22": "810" if body.get("cvc") else "051", "32": "00000123456",
        "37": body["rrn"], "41": "TERM0001", "42": merchant["id"][:15].ljust(15),
        "43": merchant["name"][:25].ljust(25) + merchant.get("city", "")[:13].ljust(13) + merchant["country"],
        "49": NUMERIC_CURRENCY[body["currency"]], "63": body["network_transaction_id"],
    }  # fmt: skip
    if body.get("cvc"):
        doc["48"] = subelements({"92": body["cvc"]})
    if mti in ("0120", "0121"):
        doc["39"] = body["response_code"]
    return doc


def reversal_doc(body: dict[str, Any], mti: str) -> dict[str, str]:
    """An 0400/0401; DE 90 names the original 0100 (its STAN; its time and institutions unknown here)."""
    doc = {
        "t": mti, "4": _amount(body["amount"]), "49": NUMERIC_CURRENCY[body["currency"]],
        "63": body["network_transaction_id"], "90": "0100" + body["stan"] + "0" * 32,
    }  # fmt: skip
    if body.get("pan"):
        doc["2"] = body["pan"]
    if body.get("rrn"):
        doc["37"] = body["rrn"]
    if body.get("replacement_amount"):
        doc["95"] = _amount(body["replacement_amount"]) + "0" * 30
    return doc


def to_iso(body: dict[str, Any], resend: bool = False) -> dict[str, str]:
    mti = body["mti"]
    if resend:
        mti = REPEAT_MTI.get(mti, mti)
    if mti[:2] == "04":
        return reversal_doc(body, mti)
    return financial_doc(body, mti)


def answer_of(doc: dict[str, str]) -> dict[str, Any]:
    """The answer as the JSON wire's dict (what `loadgen` reads from it)."""
    return {"mti": doc.get("t"), "response_code": doc.get("39", "missing"), "approval_code": doc.get("38"),
            "network_transaction_id": doc.get("63")}  # fmt: skip


JsonSend = Callable[[str, dict[str, Any], str, float, bool], Awaitable[tuple[str, dict[str, Any]]]]


class LinkWire:
    """`loadgen.Network`'s wire over ISO 8583 links; clearing goes to `json_send` (the JSON wire)."""

    name = "iso8583"
    repeats_unanswered = True  # an 0100 left unanswered by a cut is repeated (0101) before reversing

    def __init__(self, links: Links, json_send: JsonSend, close_json: Callable[[], None]) -> None:
        self.links = links
        self._json_send = json_send
        self._close_json = close_json

    async def send(
        self, kind: str, body: dict[str, Any], field_name: str, timeout: float, resend: bool = False
    ) -> tuple[str, dict[str, Any]]:
        if body.get("mti") == "1240":
            return await self._json_send(kind, body, field_name, timeout, resend)
        doc = await self.links.exchange(to_iso(body, resend), timeout)
        answer = answer_of(doc)
        return str(answer["response_code"]), answer

    async def aclose(self) -> None:
        await self.links.close()
        self._close_json()


# -- load: the card path over the link, as fast as it answers or at a rate ----------------------------

_LENGTHS: list[tuple[int, int]] = [(0, 0)] + [
    (int(str(SPEC[str(f)]["len_type"])), int(str(SPEC[str(f)]["max_len"]))) for f in range(1, 129)
]


def lean_answer(raw: bytes) -> tuple[bytes, str]:
    """(DE 11 + DE 63, DE 39) of an answer, walking the primary bitmap with pyiso8583's field table:
    a load generator cannot afford a whole decode per answer on the machine it is measuring."""
    primary = int(raw[4:20], 16)
    idx = 36 if primary >> 63 else 20
    stan = nid = b""
    code = "missing"
    for f in range(2, 65):
        if not (primary >> (64 - f)) & 1:
            continue
        digits, size = _LENGTHS[f]
        if digits:
            size = int(raw[idx : idx + digits])
            idx += digits
        if f == 11:
            stan = raw[idx : idx + size]
        elif f == 39:
            code = raw[idx : idx + size].decode()
        elif f == 63:
            nid = raw[idx : idx + size]
        idx += size
    return stan + nid, code


class _LoadLink(asyncio.Protocol):
    def __init__(self, pending: dict[bytes, asyncio.Future[str]]) -> None:
        self.pending = pending
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        offset = 0
        while len(buf) - offset >= 2:
            end = offset + 2 + (buf[offset] << 8 | buf[offset + 1])
            if end > len(buf):
                break
            key, code = lean_answer(bytes(buf[offset + 2 : end]))
            future = self.pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(code)
            offset = end
        del buf[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class LoadResult:
    """Latencies (seconds) and answer codes; `figures` as bench.cards' Recorder gives them."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.codes: dict[str, int] = {}

    def record(self, latency: float, code: str) -> None:
        self.latencies.append(latency)
        self.codes[code] = self.codes.get(code, 0) + 1

    def figures(self, elapsed: float) -> dict[str, Any]:
        lat, n = sorted(self.latencies), len(self.latencies)

        def pct(q: float) -> float:
            return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

        return {
            "authorisations": n, "seconds": round(elapsed, 2), "per_second": n / elapsed if elapsed else 0.0,
            "approved_per_second": self.codes.get("00", 0) / elapsed if elapsed else 0.0,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "p99_9_ms": pct(0.999),
            "max_ms": lat[-1] * 1000 if n else 0.0, "codes": dict(self.codes),
        }  # fmt: skip


class LinkLoad:
    """0100 authorisations over `links` links: closed loop (`window` in flight per link, each sent as
    the last answered) or open loop (one due every 1/rate s, latency from its due time). Frames are
    pyiso8583-encoded once per card and patched per message (amount, DE 7, STAN, RRN, DE 63)."""

    def __init__(
        self, host: str, port: int, network_key: str, cards: list[tuple[str, str, str]], *, links: int = 4
    ) -> None:
        if not cards:
            raise ValueError("no cards to authorise on")
        self.host, self.port, self.network_key, self.count = host, port, network_key, links
        self.pending: dict[bytes, asyncio.Future[str]] = {}
        self.links: list[_LoadLink] = []
        self._seq = itertools.count(1)
        self._prefix = f"LL{random.randrange(10**6):06d}"
        self._templates = [self._template(pan, expiry, cvc) for pan, expiry, cvc in cards]
        self._keeper: asyncio.Task[None] | None = None

    def _template(self, pan: str, expiry: str, cvc: str) -> tuple[bytes, dict[str, int]]:
        doc = financial_doc({
            "pan": pan, "expiry": expiry, "cvc": cvc, "processing_code": "000000", "amount": 0,
            "currency": "GBP", "rrn": "D" * 12, "network_transaction_id": "E" * 20,
            "merchant": {"id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London",
                         "country": "GB"},
        }, "0100")  # fmt: skip
        doc.update({"4": "A" * 12, "7": "B" * 10, "11": "C" * 6})
        raw = frame(doc)
        offsets = {mark: raw.index(mark.encode() * size) for mark, size in
                   (("A", 12), ("B", 10), ("C", 6), ("D", 12), ("E", 20))}  # fmt: skip
        return raw, offsets

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.count):
            _, link = await loop.create_connection(lambda: _LoadLink(self.pending), self.host, self.port)
            assert link.transport is not None
            stan = f"{next(self._seq) % 999_999 + 1:06d}"
            future: asyncio.Future[str] = loop.create_future()
            self.pending[stan.encode()] = future
            sign_on = {"t": "0800", "7": transmission_time(), "11": stan, "70": SIGN_ON,
                       "48": subelements({"01": self.network_key})}  # fmt: skip
            link.transport.write(frame(sign_on))
            if (code := await asyncio.wait_for(future, 10)) != "00":
                raise LinkDown(f"sign-on refused ({code})")
            self.links.append(link)
        self._keeper = loop.create_task(self._echoes())

    async def _echoes(self, every: float = 20.0) -> None:
        """An 0800/301 on each link every `every` s: a link quiet between runs is not idle."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            for link in self.links:
                if link.transport is not None and not link.transport.is_closing():
                    stan = f"{next(self._seq) % 999_999 + 1:06d}"
                    self.pending[stan.encode()] = loop.create_future()
                    echo = {"t": "0800", "7": transmission_time(), "11": stan, "70": ECHO}
                    link.transport.write(frame(echo))

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        for link in self.links:
            if link.transport is not None:
                link.transport.close()

    def _send(self, link: _LoadLink) -> asyncio.Future[str]:
        seq = next(self._seq)
        raw, at = self._templates[seq % len(self._templates)]
        message = bytearray(raw)
        stan, nid = b"%06d" % (seq % 999_999 + 1), b"%s%012d" % (self._prefix.encode(), seq)
        message[at["A"] : at["A"] + 12] = b"%012d" % (100 + seq % 400)
        message[at["B"] : at["B"] + 10] = transmission_time().encode()
        message[at["C"] : at["C"] + 6] = stan
        message[at["D"] : at["D"] + 12] = b"%012d" % seq
        message[at["E"] : at["E"] + 20] = nid
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if link.transport is None or link.transport.is_closing():
            future.set_result("link_closed")
            return future
        self.pending[stan + nid] = future
        link.transport.write(message)
        return future

    async def closed_loop(self, seconds: float, window: int = 64) -> LoadResult:
        result, loop = LoadResult(), asyncio.get_running_loop()
        end = loop.time() + seconds

        async def worker(link: _LoadLink) -> None:
            while loop.time() < end:
                sent = loop.time()
                try:
                    code = await asyncio.wait_for(self._send(link), 10)
                except TimeoutError:
                    code = "no_answer"
                result.record(loop.time() - sent, code)

        await asyncio.gather(*(worker(link) for link in self.links for _ in range(window)))
        return result

    @staticmethod
    def _recorder(result: LoadResult, due: float) -> Callable[[asyncio.Future[str]], None]:
        def record(future: asyncio.Future[str]) -> None:
            if not future.cancelled():  # a cancelled one had no answer in time: counted apart
                result.record(asyncio.get_running_loop().time() - due, future.result())

        return record

    async def open_loop(self, rate: float, seconds: float) -> LoadResult:
        result, loop = LoadResult(), asyncio.get_running_loop()
        start, total = loop.time() + 0.05, int(rate * seconds)
        waiting: list[asyncio.Future[str]] = []
        for k in range(total):
            due = start + k / rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            future = self._send(self.links[k % len(self.links)])
            future.add_done_callback(self._recorder(result, due))
            waiting.append(future)
        _, late = await asyncio.wait(waiting, timeout=10)
        for future in late:
            future.cancel()
            result.codes["no_answer"] = result.codes.get("no_answer", 0) + 1
        return result
