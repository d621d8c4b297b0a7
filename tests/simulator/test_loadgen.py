"""The open-loop generator does not coordinate with the system under test.

A real local HTTP server holds every answer until it has received every request of the schedule. A
closed-loop generator (next request after the last answer) would never get there; an open-loop one
sends each request on its schedule, so the server sees them all in flight at once, and each latency
counts from the request's scheduled time, including the time the server sat on it.
"""

from __future__ import annotations

import asyncio
import json

from simulator.books import Books
from simulator.loadgen import Network, Pool, Stats
from simulator.population import Customer
from simulator.scenarios import AUTHORISATION, generate
from tests.support.raw_http import RawHttpServer, RawRequest, answer

REQUESTS = 20


class HoldingServer(RawHttpServer):
    """Holds every answer until all `expected` requests are in."""

    def __init__(self, expected: int) -> None:
        super().__init__(self.reply)
        self.expected = expected
        self.received = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.all_in = asyncio.Event()

    async def reply(self, request: RawRequest) -> bytes:
        self.received += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.received >= self.expected:
            self.all_in.set()
        await self.all_in.wait()
        self.in_flight -= 1
        nid = request.json()["network_transaction_id"]
        body = json.dumps({"mti": "0110", "response_code": "00", "authorisation_id": "auth_x",
                           "network_transaction_id": nid}).encode()  # fmt: skip
        return answer(200, body, "content-type: application/json")


async def test_requests_leave_on_schedule_whatever_the_answers() -> None:
    server = HoldingServer(REQUESTS)
    port = (await server.start()).port
    customers = [Customer(i, f"c{i}@x", "pw", "C", 10_000, pan=f"535522{i:010d}", cvc="123", expiry="2911")
                 for i in range(4)]  # fmt: skip
    schedule = generate("steady", rate=20, duration=REQUESTS / 20, seed=1, budgets=[100_000] * 4, prefix="T")
    assert len(schedule) == REQUESTS
    stats, books = Stats(), Books(start=[100_000] * 4)
    pool = Pool(f"http://127.0.0.1:{port}", {"x-network-key": "k"})
    try:
        await asyncio.wait_for(Network(pool, customers, books, stats, timeout=60).run(schedule), 120)
    finally:
        pool.close()
        await server.stop()

    assert server.max_in_flight == REQUESTS, "every request was out before any answer came back"
    assert stats.codes[AUTHORISATION] == {"00": REQUESTS}
    assert books.problems == []
    # Latency counts from the scheduled time: the first request waited for the last to be sent.
    span_us = (schedule[-1].at - schedule[0].at) * 1e6
    assert stats.latency[AUTHORISATION].get_max_value() >= span_us * 0.99
    assert stats.latency[AUTHORISATION].get_total_count() == REQUESTS


async def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced_not_a_lost_answer() -> None:
    """Servers close idle keep-alive connections (uvicorn after 5 s). A message sent on one of those
    reaches nobody; the pool sends it again on a fresh connection instead of calling it unanswered."""
    closed = asyncio.Event()
    answered = 0

    async def answer_once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()  # the keep-alive timeout, at once: the client still holds the connection as idle
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(answer_once_then_hang_up, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    pool = Pool(f"http://127.0.0.1:{port}", {})
    try:
        assert await pool.post("/network/authorisations", b"{}", timeout=10) == (200, b"{}")
        await closed.wait()
        assert len(pool.idle) == 1  # the client did not hear the close: it reuses the connection
        assert await pool.post("/network/authorisations", b"{}", timeout=10) == (200, b"{}")
        assert (pool.stale, pool.opened, answered) == (1, 2, 2)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
