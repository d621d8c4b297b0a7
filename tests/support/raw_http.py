"""An HTTP/1.1 server on plain asyncio streams that answers with whatever bytes a test chooses: for
clients under test (the lean transport, the simulator's pools) that must meet malformed, slow, dropped
or held answers no real server would give.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True, slots=True)
class RawRequest:
    head: bytes  # the request line and the header block, through the blank line
    body: bytes  # de-chunked

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    @property
    def line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def headers(self) -> dict[str, str]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())

    def json(self) -> Any:
        return json.loads(self.body)


# What to send back: bytes (written as they are), or None to close the connection without a word.
Answer = Callable[[RawRequest], "bytes | Awaitable[bytes | None] | None"]


def answer(status: int = 200, body: bytes = b"", *headers: str) -> bytes:
    """A well-formed HTTP/1.1 answer with Content-Length."""
    head = [f"HTTP/1.1 {status} X", *headers, f"content-length: {len(body)}", "", ""]
    return "\r\n".join(head).encode() + body


class RawHttpServer:
    """`answer(request)` (plain or async) for every request, on kept-alive connections unless
    `close_after`. Counts `connections` and keeps every request's bytes in `requests`."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.url = ""

    async def start(self) -> RawHttpServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await _read(reader)
                self.requests.append(request.raw)
                out = self.answer(request)
                if inspect.isawaitable(out):
                    out = await out
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _read(reader: asyncio.StreamReader) -> RawRequest:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    body = b""
    if b"content-length:" in lower:
        at = lower.index(b"content-length:") + 15
        body = await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return RawRequest(head, body)
