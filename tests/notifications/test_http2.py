"""The push providers' HTTP/2 client (providers/http2.py) against an independent server implementation:
the h2 library's server side, which validates what it receives, on a real socket, scripted per test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifications.providers import http2
from services.notifications.providers.http2 import (
    ConnectError,
    ConnectionClosed,
    HpackDecoder,
    HpackError,
    Http2Client,
    Http2Error,
    RequestTimeout,
    StreamReset,
    field,
    fields,
    huffman_decode,
)

Handler = Callable[["Peer", int, dict[bytes, bytes], bytes], Awaitable[None]]


class Peer(asyncio.Protocol):
    """One server-side connection: h2 does the protocol, the test's handler answers each request."""

    def __init__(self, server: Server) -> None:
        self.server = server
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, bytearray] = {}
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.window_opened = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.peers.append(self)
        self.conn.initiate_connection()
        if self.server.settings:
            self.conn.update_settings(self.server.settings)
        self.flush()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # what the client sent is wrong: the test fails on it
            self.server.errors.append(exc)
            self.flush()
            return
        for event in events:
            self.server.events.append(event)
            if isinstance(event, h2.events.RequestReceived):
                self.headers[event.stream_id] = dict(event.headers)  # type: ignore[arg-type]
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                if self.server.acknowledge:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                self.server.requests.append((self.headers[sid], bytes(self.bodies[sid])))
                task = asyncio.ensure_future(
                    self.server.handler(self, sid, self.headers[sid], bytes(self.bodies[sid]))
                )
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_opened.set()
        self.flush()

    async def respond(
        self, stream_id: int, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"", **kw: Any,
    ) -> None:  # fmt: skip
        self.conn.send_headers(stream_id, [(b":status", str(status).encode()), *(headers or [])],
                               end_stream=not body, **kw)  # fmt: skip
        self.flush()
        while body:  # within the client's windows
            size = min(
                len(body), self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if size <= 0:
                self.window_opened.clear()
                await self.window_opened.wait()
                continue
            chunk, body = body[:size], body[size:]
            self.conn.send_data(stream_id, chunk, end_stream=not body)
            self.flush()


class Server:
    def __init__(
        self, handler: Handler | None = None, *, settings: dict[int, int] | None = None,
        acknowledge: bool = True, tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.handler = handler or ok
        self.settings = settings
        self.acknowledge = acknowledge
        self.tls = tls
        self.peers: list[Peer] = []
        self.events: list[h2.events.Event] = []
        self.errors: list[Exception] = []
        self.requests: list[tuple[dict[bytes, bytes], bytes]] = []
        self.tasks: set[asyncio.Future[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Peer(self), "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            if peer.transport is not None:
                peer.transport.close()
        await self._server.wait_closed()

    def count(self, kind: type[h2.events.Event]) -> int:
        return sum(isinstance(e, kind) for e in self.events)


async def ok(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
    await peer.respond(stream_id, 200, [(b"x-echo", str(len(body)).encode())], b'{"ok":true}')


@pytest_asyncio.fixture(loop_scope="session")
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(*args: Any, **kw: Any) -> Server:
        server = Server(*args, **kw)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def clients() -> AsyncIterator[Callable[..., Http2Client]]:
    made: list[Http2Client] = []

    def make(url: str, **kw: Any) -> Http2Client:
        client = Http2Client(url, **{"timeout": 10.0, **kw})
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


# -- HPACK ------------------------------------------------------------------------------------------------


HEADER_NAMES = st.sampled_from(
    [b":status", b"apns-id", b"retry-after", b"content-type", b"date", b"x-a", b"x-long-name"]
)
HEADER_LISTS = st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=300)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    blocks=st.lists(
        st.tuples(HEADER_LISTS, st.booleans(), st.sampled_from([None, 0, 100, 256, 4096])), max_size=12
    )
)
def test_the_decoder_follows_an_independent_encoder(
    blocks: list[tuple[list[tuple[bytes, bytes]], bool, int | None]],
) -> None:
    """hpack's encoder indexes and evicts, Huffman-codes or not, and changes its table size."""
    encoder, decoder = hpack.Encoder(), HpackDecoder()
    for headers, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size  # signalled at the start of the next block
        block = encoder.encode(headers, huffman=huffman)
        assert decoder.decode(block) == [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


@given(st.binary(max_size=200))
def test_huffman_strings_decode_to_what_was_encoded(data: bytes) -> None:
    assert huffman_decode(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)) == data


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x81\x1f", None),  # 'a' (00011) padded with ones: fine
        (b"\x81\x18", "padding"),  # padded with zeros
        (b"\x82\x1f\xff", "padding"),  # more than 7 bits of padding
        (b"\x84\xff\xff\xff\xfc", "EOS"),  # the EOS code itself
    ],
)
def test_huffman_padding_and_eos(block: bytes, error: str | None) -> None:
    literal = b"\x00\x01x" + block  # literal without indexing, name "x", the Huffman value under test
    if error is None:
        assert HpackDecoder().decode(literal) == [("x", "a")]
    else:
        with pytest.raises(HpackError, match=error):
            HpackDecoder().decode(literal)


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x88\x3f\xe1\x1f", "size update after a field"),
        (b"\x3f\xe2\x1f", "over our 4096"),  # 4097
        (b"\x80", "no table entry 0"),
        (b"\xbe", "no table entry 62"),  # the dynamic table is empty
        (b"\x04\x05/ab", "truncated"),
        (b"\x04", "truncated"),
        (b"\xff\xff\xff\xff\xff\xff\x01", "too large"),
    ],
)
def test_malformed_blocks_are_hpack_errors(block: bytes, error: str) -> None:
    with pytest.raises(HpackError, match=error):
        HpackDecoder().decode(block)


def test_a_table_size_update_evicts_and_an_oversized_entry_empties_the_table() -> None:
    decoder = HpackDecoder()
    decoder.decode(b"\x40\x01a\x01b" + b"\x40\x01c\x01d")  # two entries of 34 bytes: c (62), a (63)
    assert decoder.decode(b"\xbe\xbf") == [("c", "d"), ("a", "b")]
    decoder.decode(b"\x3f\x05")  # size 31 + 5 = 36: only the newest fits
    assert decoder.decode(b"\xbe") == [("c", "d")]
    with pytest.raises(HpackError):
        decoder.decode(b"\xbf")
    decoder.decode(b"\x40\x01e\x04" + b"f" * 4)  # 37 bytes > 36: the table is emptied, nothing added
    assert decoder.table == deque()


def test_fields_decode_with_an_independent_hpack_decoder() -> None:
    long = b"v" * 300  # a length past the 7-bit prefix
    headers = [(b":path", b"/3/device/ab"), (b"authorization", b"bearer " + long), (b"apns-id", b"x"),
               (b"content-type", b"application/json"), (b"x-" + b"n" * 200, b"")]  # fmt: skip
    assert hpack.Decoder().decode(fields(headers), raw=True) == headers
    assert field(b"content-type", b"a")[0] == 0x0F  # literal without indexing, name index 31 (4-bit prefix)


# -- requests and answers --------------------------------------------------------------------------------


async def test_a_request_as_the_server_sees_it(serve: Any, clients: Any) -> None:
    server = await serve()
    client = clients(server.url + "/base/")
    headers = fields([(b"authorization", b"bearer t"), (b"apns-id", b"id-1")])
    resp = await client.request("/3/device/ab", headers, b'{"aps":{}}')
    assert (resp.status_code, resp.headers["x-echo"], resp.json()) == (200, "10", {"ok": True})
    [(got, body)] = server.requests
    assert got[b":method"] == b"POST" and got[b":scheme"] == b"http"
    assert got[b":authority"] == f"127.0.0.1:{server.port}".encode()
    assert got[b":path"] == b"/base/3/device/ab"
    assert (got[b"authorization"], got[b"apns-id"], got[b"content-length"]) == (b"bearer t", b"id-1", b"10")
    assert body == b'{"aps":{}}' and not server.errors


async def test_many_requests_share_one_connection_within_the_servers_stream_limit(
    serve: Any, clients: Any
) -> None:
    open_now, most = 0, 0

    async def slow(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.01)
        open_now -= 1
        await peer.respond(stream_id, 200, body=body)

    server = await serve(slow, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    client = clients(server.url)
    answers = await asyncio.gather(*(client.request("/p", b"", b"%d" % i) for i in range(40)))
    assert [a.content for a in answers] == [b"%d" % i for i in range(40)]
    assert len(server.peers) == 1 and most <= 3 and not server.errors


async def test_a_batch_sends_what_it_can_at_once_and_the_rest_as_slots_free(serve: Any, clients: Any) -> None:
    async def echo(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        await asyncio.sleep(0.01)
        await peer.respond(stream_id, 200, body=body)

    server = await serve(echo, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    client = clients(server.url)
    await client.request("/p")  # connected: the batch starts on the open connection
    answers = await client.request_many([("/p", b"", b"%d" % i) for i in range(20)])
    assert [a.content for a in answers if isinstance(a, http2.Response)] == [b"%d" % i for i in range(20)]
    assert len(server.peers) == 1 and not server.errors


async def test_a_cancelled_batch_resets_its_streams(serve: Any, clients: Any) -> None:
    async def never(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        pass

    server = await serve(never)
    client = clients(server.url)
    first = asyncio.ensure_future(client.request("/p"))  # connects (the slow path)
    await asyncio.sleep(0.1)
    batch = asyncio.ensure_future(client.request_many([("/p", b"", b"x")] * 3))  # started at once
    await asyncio.sleep(0.1)
    first.cancel()
    batch.cancel()
    await asyncio.gather(first, batch, return_exceptions=True)
    await asyncio.sleep(0.1)
    resets = sorted(e.stream_id for e in server.events if isinstance(e, h2.events.StreamReset))
    assert resets == [1, 3, 5, 7] and not server.errors


async def test_each_stream_of_a_batch_has_the_deadline(serve: Any, clients: Any) -> None:
    async def odd_only(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if body != b"silent":
            await ok(peer, stream_id, headers, body)

    server = await serve(odd_only)
    client = clients(server.url, timeout=0.5)
    await client.request("/p")
    answers = await client.request_many([("/p", b"", b"a"), ("/p", b"", b"silent"), ("/p", b"", b"b")])
    assert [type(a).__name__ for a in answers] == ["Response", "RequestTimeout", "Response"]
    await asyncio.sleep(0.1)
    assert [e.stream_id for e in server.events if isinstance(e, h2.events.StreamReset)] == [5]
    assert (await client.request("/p")).status_code == 200
    assert len(server.peers) == 2  # on a new connection: one that let a stream time out is retired


async def test_request_bodies_wait_for_the_servers_flow_control_window(serve: Any, clients: Any) -> None:
    window = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
    server = await serve(settings={window: 100, h2.settings.SettingCodes.MAX_FRAME_SIZE: 16_384})
    client = clients(server.url)
    bodies = [bytes([65 + i]) * 5000 for i in range(20)]  # 100 KB > the 64 KiB connection window
    answers = await asyncio.gather(*(client.request("/p", b"", b) for b in bodies))
    assert [a.headers["x-echo"] for a in answers] == ["5000"] * 20
    assert sorted(body for _, body in server.requests) == sorted(bodies) and not server.errors


async def test_a_long_answer_is_read_with_window_updates(serve: Any, clients: Any) -> None:
    big = b"z" * (3 * http2.STREAM_WINDOW)  # more than a stream window, and than half the connection's

    async def long(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        await peer.respond(stream_id, 200, body=big)

    server = await serve(long)
    client = clients(server.url, timeout=30)
    for _ in range(4):
        assert (await client.request("/p")).content == big
    assert server.count(h2.events.WindowUpdated) > 0 and not server.errors


def raw(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3) + bytes((kind, flags)) + stream_id.to_bytes(4) + payload


async def test_padding_priority_continuation_informational_answers_and_trailers(
    serve: Any, clients: Any
) -> None:
    async def fancy(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        peer.conn.send_headers(stream_id, [(b":status", b"100")])
        peer.flush()
        # h2 will not send these as a server: written by hand, encoded with its encoder (one HPACK state).
        block = peer.conn.encoder.encode([(b":status", b"410"), (b"retry-after", b"7")])
        pad, priority = bytes((5,)), bytes(4) + bytes((15,))
        frames = [
            raw(http2.HEADERS, http2.PADDED | http2.PRIORITY_FLAG, stream_id,
                pad + priority + block[:2] + bytes(5)),
            raw(http2.CONTINUATION, http2.END_HEADERS, stream_id, block[2:]),
            raw(http2.DATA, http2.PADDED, stream_id, bytes((30,)) + b'{"reason":' + bytes(30)),
            raw(http2.DATA, 0, stream_id, b'"Unregistered"}'),
            raw(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, stream_id,
                peer.conn.encoder.encode([(b"x-trailer", b"1")])),
        ]  # fmt: skip
        assert peer.transport is not None
        peer.transport.write(b"".join(frames))

    server = await serve(fancy)
    resp = await clients(server.url).request("/p")
    assert (resp.status_code, resp.headers, resp.json()) == (
        410,
        {"retry-after": "7"},
        {"reason": "Unregistered"},
    )


async def test_answer_headers_past_one_frame_come_in_continuation_frames(serve: Any, clients: Any) -> None:
    huge = b"h" * 40_000  # h2 splits the block at the client's 16 KiB frame size

    async def wide(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        await peer.respond(stream_id, 200, [(b"x-huge", huge)], b"ok")

    server = await serve(wide)
    client = clients(server.url)
    first, second = await asyncio.gather(client.request("/p"), client.request("/p"))
    assert first.headers["x-huge"] == second.headers["x-huge"] == huge.decode()


async def test_the_servers_ping_is_answered_and_settings_acknowledged(serve: Any, clients: Any) -> None:
    async def ping_first(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        peer.conn.ping(b"12345678")
        peer.flush()
        await asyncio.sleep(0.05)
        await peer.respond(stream_id, 200)

    server = await serve(ping_first)
    await clients(server.url).request("/p")
    assert server.count(h2.events.PingAckReceived) == 1
    assert server.count(h2.events.SettingsAcknowledged) == 1 and not server.errors


# -- failures ----------------------------------------------------------------------------------------------


async def test_a_reset_stream_fails_that_request_only(serve: Any, clients: Any) -> None:
    async def reset_odd(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if body == b"reset":
            peer.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            peer.flush()
        else:
            await ok(peer, stream_id, headers, body)

    server = await serve(reset_odd)
    client = clients(server.url)
    good, bad = await asyncio.gather(client.request("/p", b"", b"x"), client.request("/p", b"", b"reset"),
                                     return_exceptions=True)  # fmt: skip
    assert isinstance(good, http2.Response) and good.status_code == 200
    assert isinstance(bad, StreamReset) and bad.code == 7
    assert (await client.request("/p")).status_code == 200 and len(server.peers) == 1


async def test_goaway_lets_lower_streams_finish_and_moves_new_ones_to_a_new_connection(
    serve: Any, clients: Any
) -> None:
    held: list[tuple[Peer, int]] = []

    async def goaway_at_three(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if len(server.peers) > 1:
            await ok(peer, stream_id, headers, body)
            return
        held.append((peer, stream_id))
        if len(held) == 3:  # streams 1, 3, 5 arrived: only 1 and 3 will be processed
            assert peer.transport is not None  # by hand: h2 sends nothing after its own GOAWAY
            peer.transport.write(raw(http2.GOAWAY, 0, 0, (3).to_bytes(4) + bytes(4)))
            await asyncio.sleep(0.05)
            for p, sid in held[:2]:
                await ok(p, sid, headers, body)

    server = await serve(goaway_at_three)
    client = clients(server.url)
    answers = await asyncio.gather(*(client.request("/p", b"", b"%d" % i) for i in range(3)),
                                   return_exceptions=True)  # fmt: skip
    assert [type(a).__name__ for a in answers] == ["Response", "Response", "ConnectionClosed"]
    assert "not processed" in str(answers[2])
    assert (await client.request("/p")).status_code == 200
    assert len(server.peers) == 2


async def test_a_lost_connection_fails_what_is_in_flight_and_the_next_request_reconnects(
    serve: Any, clients: Any
) -> None:
    async def hang_up(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if len(server.peers) == 1:
            assert peer.transport is not None
            peer.transport.close()
        else:
            await ok(peer, stream_id, headers, body)

    server = await serve(hang_up)
    client = clients(server.url)
    with pytest.raises(ConnectionClosed):
        await client.request("/p")
    assert (await client.request("/p")).status_code == 200 and len(server.peers) == 2


async def test_no_answer_in_time_is_a_timeout_the_stream_is_cancelled_and_the_connection_retired(
    serve: Any, clients: Any
) -> None:
    async def never(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        pass

    server = await serve(never)
    client = clients(server.url, timeout=0.3)
    with pytest.raises(RequestTimeout):
        await client.request("/p")
    task = asyncio.ensure_future(client.request("/p"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    resets = [e for e in server.events if isinstance(e, h2.events.StreamReset)]
    # A connection that let a stream time out may be dead: the next request opened another one.
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, h2.errors.ErrorCodes.CANCEL), (1, 8)]
    assert len(server.peers) == 2 and not server.errors


async def test_a_server_breaking_the_protocol_gets_goaway_and_the_request_fails(
    serve: Any, clients: Any
) -> None:
    async def garbage(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        assert peer.transport is not None
        peer.transport.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0

    server = await serve(garbage)
    with pytest.raises(ConnectionClosed, match="DATA on stream 0"):
        await clients(server.url).request("/p")
    await asyncio.sleep(0.1)
    [goaway] = [e for e in server.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


async def test_nobody_listening_is_a_connect_error(clients: Any) -> None:
    from bank.infra.ports import free_port

    with pytest.raises(ConnectError):
        await clients(f"http://127.0.0.1:{free_port()}").request("/p")


async def test_errors_are_http2_errors() -> None:
    for error in (ConnectError, ConnectionClosed, RequestTimeout, StreamReset):
        assert issubclass(error, Http2Error)


# -- TLS ---------------------------------------------------------------------------------------------------


def tls_pair(tmp: Path, alpn: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    server.set_alpn_protocols(alpn)
    client = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    client.set_alpn_protocols(["h2"])
    return server, client


async def test_over_tls_h2_is_negotiated_by_alpn(serve: Any, clients: Any, tmp_path: Path) -> None:
    server_tls, client_tls = tls_pair(tmp_path, ["h2"])
    server = await serve(tls=server_tls)
    resp = await clients(server.url, ssl_context=client_tls).request("/p", b"", b"x")
    assert resp.status_code == 200
    assert server.requests[0][0][b":scheme"] == b"https"


async def test_a_tls_server_without_h2_is_refused(serve: Any, clients: Any, tmp_path: Path) -> None:
    server_tls, client_tls = tls_pair(tmp_path, ["http/1.1"])
    server = await serve(tls=server_tls)
    with pytest.raises(Http2Error, match="ALPN"):
        await clients(server.url, ssl_context=client_tls).request("/p")
