"""The fake's HTTP/2 and HTTP/1.1 server (providers/fake_server.py), spoken to over real sockets by an
independent implementation: the `h2` library frame by frame, and httpx."""

from __future__ import annotations

import asyncio
import json

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx

from services.notifications.providers.fake import FakeServer
from tests.notifications.test_fake_provider import TOKEN, apns_headers


class H2Client:
    """A client connection driven frame by frame with the h2 library."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **settings: int) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings({h2.settings.SettingCodes[k.upper()]: v for k, v in settings.items()})
        self.events: list[h2.events.Event] = []
        self.flush()

    @classmethod
    async def connect(cls, fake: FakeServer, **settings: int) -> H2Client:
        reader, writer = await asyncio.open_connection(fake.host, fake.port)
        return cls(reader, writer, **settings)

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        request = [(":method", "POST"), (":scheme", "http"), (":authority", "fake"), (":path", path)]
        self.conn.send_headers(stream_id, request + list((headers or {}).items()))
        size = self.conn.max_outbound_frame_size
        for at in range(0, len(body), size):  # within the windows the server opened (1 MiB a stream)
            self.conn.send_data(stream_id, body[at : at + size], end_stream=at + size >= len(body))
        self.flush()
        return stream_id

    def get(self, path: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        request = [(":method", "GET"), (":scheme", "http"), (":authority", "fake"), (":path", path)]
        self.conn.send_headers(stream_id, request, end_stream=True)
        self.flush()
        return stream_id

    async def read_until(self, done: type[h2.events.Event], count: int = 1, timeout: float = 10) -> None:
        """Read (acknowledging DATA, so the server's windows reopen) until `count` events of type `done`."""
        async with asyncio.timeout(timeout):
            while sum(isinstance(e, done) for e in self.events) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    self.events.append(event)
                self.flush()

    def answers(self) -> dict[int, tuple[int, bytes]]:
        status: dict[int, int] = {}
        bodies: dict[int, bytes] = {}
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived):
                status[e.stream_id] = int(dict(e.headers)[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
        ended = [e.stream_id for e in self.events if isinstance(e, h2.events.StreamEnded)]
        return {s: (status[s], bodies.get(s, b"")) for s in ended}

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_answers_come_as_they_complete_not_in_order(fake: FakeServer) -> None:
    slow = "cd" * 32
    async with httpx.AsyncClient(base_url=fake.url, http1=False, http2=True) as h2c:
        await h2c.post("/_fake/script", json={"token": slow, "responses": [{"status": 200, "delay": 1}]})
    client = await H2Client.connect(fake)
    first = client.post(f"/3/device/{slow}", b'{"aps":{}}', apns_headers())
    rest = [client.post(f"/3/device/{TOKEN}", b'{"aps":{}}', apns_headers()) for _ in range(50)]
    await client.read_until(h2.events.StreamEnded, count=51)
    ended = [e.stream_id for e in client.events if isinstance(e, h2.events.StreamEnded)]
    assert ended[-1] == first and sorted(ended[:-1]) == rest
    assert all(status == 200 for status, _ in client.answers().values())
    await client.close()


async def test_flow_control_both_ways(fake: FakeServer) -> None:
    # A request body past the default 65,535-byte window, and an answer past a client's 100-byte window:
    # the server waits for WINDOW_UPDATE instead of overrunning it.
    client = await H2Client.connect(fake, initial_window_size=100)
    await client.read_until(h2.events.SettingsAcknowledged)
    big = client.post(f"/3/device/{TOKEN}", b"{" + b" " * 200_000 + b"}", apns_headers())
    await client.read_until(h2.events.StreamEnded)
    status, body = client.answers()[big]
    assert (status, json.loads(body)["reason"]) == (413, "PayloadTooLarge")
    page = client.get("/")
    await client.read_until(h2.events.StreamEnded, count=2)
    status, body = client.answers()[page]
    assert status == 200 and len(body) > 500 and body.endswith(b"</html>")
    await client.close()


async def test_ping_reset_and_goaway(fake: FakeServer) -> None:
    slow = "ef" * 32
    async with httpx.AsyncClient(base_url=fake.url, http1=False, http2=True) as h2c:
        await h2c.post("/_fake/script", json={"token": slow, "responses": [{"status": 200, "delay": 0.5}]})
    client = await H2Client.connect(fake)
    client.conn.ping(b"12345678")
    client.flush()
    await client.read_until(h2.events.PingAckReceived)
    reset = client.post(f"/3/device/{slow}", b'{"aps":{}}', apns_headers())
    client.conn.reset_stream(reset)
    client.flush()
    kept = client.post(f"/3/device/{TOKEN}", b'{"aps":{}}', apns_headers())
    # GOAWAY (written raw: the h2 library would stop reading): the open stream is still answered, then
    # the server closes.
    client.writer.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))
    await client.read_until(h2.events.StreamEnded)
    assert list(client.answers()) == [kept]
    # Then the end of the connection, with nothing for the reset stream on the way: a server still
    # holding it would answer it when its scripted delay ends, and only then close.
    rest = await asyncio.wait_for(client.reader.read(), 5)
    client.events += client.conn.receive_data(rest) if rest else []
    assert list(client.answers()) == [kept]
    await client.close()


async def test_a_protocol_violation_closes_that_connection_only(fake: FakeServer) -> None:
    healthy = await H2Client.connect(fake)
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9) + b"\x00\x00\x10\x00\x01\x00\x00\x00\x00junk")
    data = await asyncio.wait_for(reader.read(), 5)  # our SETTINGS, then GOAWAY, then closed
    assert b"\x07\x00\x00\x00\x00\x00" in data  # a GOAWAY frame header (type 7) on stream 0
    writer.close()
    answered = healthy.post(f"/3/device/{TOKEN}", b'{"aps":{}}', apns_headers())
    await healthy.read_until(h2.events.StreamEnded)
    assert healthy.answers()[answered][0] == 200
    await healthy.close()


async def test_http1_keeps_the_connection_and_refuses_garbage(fake: FakeServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http1:
        for _ in range(3):
            r = await http1.get("/healthz")
            assert (r.status_code, r.http_version, r.reason_phrase) == (200, "HTTP/1.1", "OK")
        assert len(http1._transport._pool.connections) == 1  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
    writer.close()
