"""The ISO 8583 listener: persistent TCP links from the card network, many messages in flight on each.

One `Link` per connection (an asyncio Protocol). Every frame that has arrived is decoded as soon as it
is read; a financial message becomes a task that calls the same service as its JSON route
(`Authoriser.authorise`, `Advices.advise`, `Reverser.reverse`) and writes its answer when that
completes, whatever the order: the network matches answers by DE 11 with DE 7 and DE 63. Every
message read in one go is submitted before the authoriser's batcher runs, so the frames that were
readable while a batch was in flight form the next batch together (decision 0030).

The link's rules (docs/iso8583.md):

* only addresses in CARDS_ISO8583_ALLOW_NETWORKS may connect; a connection must sign on (0800, DE 70
  001, the network key in DE 48 tag 01) within CARDS_ISO8583_SIGN_ON_SECONDS, and a financial
  message before that is answered 91 and not decided; a wrong key is answered 63 and the link closed;
* a message that does not decode but whose MTI and STAN were read is answered (MTI + 10) with
  DE 39 = 30; anything worse (no MTI or STAN, a length prefix over 8 KiB) is logged and the link
  closed, as is a link silent for CARDS_ISO8583_IDLE_SECONDS (the network keeps it open with echoes);
* a link with CARDS_ISO8583_MAX_IN_FLIGHT messages in flight, or whose peer does not read its
  answers, is not read from until that eases;
* a message the service cannot answer (the authoriser shed it, an unexpected error) is answered 91,
  nothing recorded, as the JSON route would answer 429 or 5xx.

No log line carries a field's value: only MTIs, STANs, the peer's address and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import Counter, Gauge

from services.cards.iso8583 import codec, profile
from services.cards.iso8583.codec import DecodeError, Message
from services.cards.iso8583.profile import FormatError
from services.cards.network import AdviceRequest, AuthorisationRequest, ReversalRequest
from services.cards.observability import Throttled
from shared.errors import BankError
from shared.observability import log_fields

log = logging.getLogger("services.cards.iso8583")

MESSAGES = Counter(
    "card_iso8583_messages_total", "Messages answered on the ISO 8583 link", ["mti", "response_code"]
)
LINKS = Gauge("card_iso8583_links", "Open ISO 8583 links (connections from the card network)")
CLOSED = Counter("card_iso8583_closed_total", "ISO 8583 links closed, by why", ["reason"])
LOST = Counter(
    "card_iso8583_answers_lost_total", "Answers decided after their link had closed (the network repeats)"
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Services:
    """The one authorisation service the JSON routes also call."""

    authorise: Callable[[AuthorisationRequest], Awaitable[dict[str, Any]]]
    advise: Callable[[AdviceRequest], Awaitable[dict[str, Any]]]
    reverse: Callable[[ReversalRequest], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    network_key: str
    allow: tuple[Network, ...]
    sign_on_seconds: float = 10.0
    idle_seconds: float = 120.0
    max_in_flight: int = 2_000
    shutdown_grace_seconds: float = 5.0
    rebind_seconds: float = 2.0


def allowed(host: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


class LinkServer:
    """The listener, run as one of the cards app's background jobs (`run`), closed when it is cancelled."""

    def __init__(self, services: Services, settings: LinkSettings) -> None:
        self.services = services
        self.settings = settings
        self.port: int | None = None  # once listening (the real one when settings.port is 0)
        self.bind_error: str | None = None
        self.links: set[Link] = set()
        self.listening = asyncio.Event()
        self.format_errors = Throttled(log)
        self._server: asyncio.Server | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        complained = 0.0
        while self._server is None:
            try:
                self._server = await loop.create_server(lambda: Link(self), s.host, s.port)
            except OSError as exc:
                # Another process holds the port (a cards being replaced, a second bank): keep trying,
                # the JSON path serves meanwhile, and /readyz says so.
                self.bind_error = f"{type(exc).__name__}: {exc.strerror or exc}"
                if time.monotonic() - complained > 30:
                    complained = time.monotonic()
                    log.error("the ISO 8583 link cannot listen; trying again",
                              extra=log_fields(host=s.host, port=s.port, error=self.bind_error))  # fmt: skip
                await asyncio.sleep(s.rebind_seconds)
        self.bind_error = None
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.listening.set()
        log.info("ISO 8583 link listening", extra=log_fields(host=s.host, port=self.port))
        try:
            await asyncio.Future()  # until cancelled
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop accepting, stop reading, let the answers in flight go out (a few seconds at most),
        then close every link."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for link in list(self.links):
            link.stop_reading()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        while any(link.tasks for link in self.links) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for link in list(self.links):
            for task in list(link.tasks):
                task.cancel()
            link.close("shutdown")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        self.listening.clear()

    async def checker(self) -> tuple[str | None, dict[str, str]]:
        """For /readyz: informative only, never failing (the JSON path serves without the link)."""
        if self.port is not None and self._server is not None:
            return None, {"listening": f"{self.settings.host}:{self.port}", "links": str(len(self.links))}
        return None, {"listening": "no", **({"error": self.bind_error} if self.bind_error else {})}


class Link(asyncio.Protocol):
    """One connection from the network: a stream of length-prefixed messages, answered as they complete."""

    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.settings = server.settings
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buffer = bytearray()
        self.tasks: set[asyncio.Task[None]] = set()
        self.signed_on = False
        self.ever_signed_on = False
        self.closing = False
        self.lost = False
        self.heard = 0.0
        self._write_paused = False
        self._reading_paused = False
        self._stopped = False
        self._sign_on_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, asyncio's or uvloop's (which does not subclass asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("?", 0)
        host = str(peer[0])
        self.peer = f"{host}:{peer[1]}"
        if not allowed(host, self.settings.allow):
            log.warning("ISO 8583 connection refused: address not allowed", extra=log_fields(peer=self.peer))
            CLOSED.labels("address_not_allowed").inc()
            self.closing = True
            self.transport.abort()
            return
        self.server.links.add(self)
        LINKS.inc()
        loop = asyncio.get_running_loop()
        self.heard = loop.time()
        self._sign_on_timer = loop.call_later(self.settings.sign_on_seconds, self._sign_on_due)
        self._idle_timer = loop.call_later(self.settings.idle_seconds, self._idle_check)
        log.info("ISO 8583 link connected", extra=log_fields(peer=self.peer))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for timer in (self._sign_on_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        if self in self.server.links:
            self.server.links.discard(self)
            LINKS.dec()
        if not self.closing:
            CLOSED.labels("closed_by_network").inc()
            log.info("ISO 8583 link closed by the network",
                     extra=log_fields(peer=self.peer, in_flight=len(self.tasks)))  # fmt: skip
        self.closing = True

    def close(self, reason: str, detail: str | None = None) -> None:
        """Close after the answers already written (`detail` never holds a field's value)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        CLOSED.labels(reason).inc()
        fields = {"peer": self.peer, "reason": reason, "in_flight": len(self.tasks)}
        if detail:
            fields["detail"] = detail
        level = logging.INFO if reason == "shutdown" else logging.WARNING
        log.log(level, "ISO 8583 link closed by cards", extra=log_fields(**fields))
        self.transport.close()

    def stop_reading(self) -> None:
        self._stopped = True
        self._flow()

    # -- flow control ----------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flow()

    def _flow(self) -> None:
        if self.transport is None or self.closing:
            return
        pause = self._stopped or self._write_paused or len(self.tasks) >= self.settings.max_in_flight
        if pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- timers ----------------------------------------------------------------------------------------

    def _sign_on_due(self) -> None:
        if not self.ever_signed_on:
            self.close("no_sign_on", f"not signed on within {self.settings.sign_on_seconds:g} s")

    def _idle_check(self) -> None:
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self.heard
        if silent >= self.settings.idle_seconds and not self._reading_paused:
            self.close("idle", f"silent for {silent:.0f} s")
            return
        wait = max(self.settings.idle_seconds - silent, 0.05)
        self._idle_timer = loop.call_later(wait, self._idle_check)

    # -- reading ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.heard = asyncio.get_running_loop().time()
        self.buffer += data
        self._drain()

    def _drain(self) -> None:
        """Handle every whole message in the buffer, up to the in-flight limit (the rest waits there)."""
        buf, limit = self.buffer, self.settings.max_in_flight
        offset, size_of = 0, len(buf)
        while size_of - offset >= codec.LENGTH_PREFIX and len(self.tasks) < limit:
            size = buf[offset] << 8 | buf[offset + 1]
            if size > codec.MAX_FRAME:
                self.close("frame_too_long", f"a length prefix of {size} bytes (at most {codec.MAX_FRAME})")
                return
            end = offset + codec.LENGTH_PREFIX + size
            if end > size_of:
                break
            self._message(bytes(buf[offset + codec.LENGTH_PREFIX : end]))
            offset = end
            if self.closing:
                return
        if offset:
            del buf[:offset]
        self._flow()

    def _message(self, raw: bytes) -> None:
        try:
            message = codec.decode(raw)
        except DecodeError as exc:
            if exc.mti is not None and codec.is_request(exc.mti) and 11 in exc.fields:
                self._format_error(exc.mti, exc.fields, str(exc))
            else:
                self.close("undecodable", str(exc))
            return
        mti = message.mti
        if not codec.is_request(mti):
            self.server.format_errors.warning("ISO 8583 answer to nothing we asked: dropped", peer=self.peer,
                                              mti=mti)  # fmt: skip
            return
        if mti == profile.NETWORK_MANAGEMENT_MTI:
            self._network_management(message)
            return
        if mti not in profile.FINANCIAL_MTIS:
            if 11 in message.fields:
                self._format_error(mti, message.fields, "a message type this link does not take")
            else:
                self.close("undecodable", f"message type {mti} without a STAN")
            return
        if not self.signed_on:
            self._answer(message, profile.ISSUER_UNAVAILABLE)
            return
        try:
            handle = self._request(message)
        except FormatError as exc:
            self._format_error(mti, message.fields, str(exc))
            return
        task = asyncio.get_running_loop().create_task(self._financial(message, handle))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _request(self, message: Message) -> Awaitable[dict[str, Any]]:
        """The service call for a financial message (a coroutine not yet started)."""
        s, mti = self.server.services, message.mti
        if mti in profile.AUTHORISATION_MTIS:
            return s.authorise(profile.authorisation(message))
        if mti in profile.ADVICE_MTIS:
            return s.advise(profile.advice(message))
        return s.reverse(profile.reversal(message))

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.closing:
            return
        if len(self.buffer) >= codec.LENGTH_PREFIX and not self._stopped:
            self._drain()  # messages left waiting by the in-flight limit
        elif self._reading_paused:
            self._flow()

    async def _financial(self, message: Message, call: Awaitable[dict[str, Any]]) -> None:
        answer: dict[str, Any] | None = None
        try:
            answer = await call
            code = str(answer["response_code"])
        except BankError as exc:  # shed (it waited too long for a batch): not decided, not recorded
            code = profile.ISSUER_UNAVAILABLE
            self.server.format_errors.warning("ISO 8583 message not decided: answered 91", mti=message.mti,
                                              stan=message.fields.get(11), code=exc.code)  # fmt: skip
        except Exception as exc:  # its text may hold a statement's parameters: only its type is logged
            code = profile.ISSUER_UNAVAILABLE
            fields = {"peer": self.peer, "mti": message.mti, "stan": message.fields.get(11)}
            log.error("ISO 8583 message failed: answered 91",
                      extra=log_fields(**fields, error=type(exc).__name__))  # fmt: skip
        self._answer(message, code, answer)

    # -- network management ----------------------------------------------------------------------------

    def _network_management(self, message: Message) -> None:
        f = message.fields
        try:
            profile.require(message)
        except FormatError as exc:
            self._format_error(message.mti, f, str(exc))
            return
        function = f[70]
        if function == profile.SIGN_ON:
            try:
                key = profile.subelements(f.get(48, "")).get(profile.NETWORK_KEY_TAG, "")
            except FormatError:
                key = ""
            if key and hmac.compare_digest(key.encode(), self.settings.network_key.encode()):
                self.signed_on = self.ever_signed_on = True
                log.info("ISO 8583 link signed on", extra=log_fields(peer=self.peer))
                self._answer(message, profile.APPROVED)
            else:
                self._answer(message, profile.SECURITY_VIOLATION)
                self.close("sign_on_refused", "a sign-on without the network key")
        elif function == profile.SIGN_OFF:
            self.signed_on = False
            log.info("ISO 8583 link signed off", extra=log_fields(peer=self.peer))
            self._answer(message, profile.APPROVED)
        elif function == profile.ECHO:
            self._answer(message, profile.APPROVED)
        else:
            self._format_error(message.mti, f, "a network management code this link does not take")

    # -- writing ---------------------------------------------------------------------------------------

    def _format_error(self, mti: str, decoded: dict[int, str], reason: str) -> None:
        answer_mti = codec.response_mti(mti)
        self.server.format_errors.warning("ISO 8583 format error: answered 30", peer=self.peer, mti=mti,
                                          stan=decoded.get(11), reason=reason)  # fmt: skip
        MESSAGES.labels(mti, profile.FORMAT_ERROR).inc()
        self._send(answer_mti, profile.format_error_fields(decoded, answer_mti))

    def _answer(self, message: Message, code: str, answer: dict[str, Any] | None = None) -> None:
        answer_mti = codec.response_mti(message.mti)
        MESSAGES.labels(message.mti, code).inc()
        self._send(answer_mti, profile.answer_fields(message.fields, answer_mti, code, answer))

    def _send(self, mti: str, fields: dict[int, str]) -> None:
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            LOST.inc()
            return
        try:
            transport.write(codec.frame(codec.encode(mti, fields)))
        except codec.EncodeError as exc:  # a bug of ours; the text names the field, not its value
            log.error("ISO 8583 answer could not be encoded", extra=log_fields(peer=self.peer, mti=mti,
                                                                              error=str(exc)))  # fmt: skip


def link_settings(
    host: str, port: int, network_key: str, allow: Iterable[Any], **timing: Any
) -> LinkSettings:
    return LinkSettings(host, port, network_key, tuple(ipaddress.ip_network(str(n)) for n in allow), **timing)
