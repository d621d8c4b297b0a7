"""A load generator's HTTP/1.1 client: one keep-alive connection, a prebuilt request head.

httpx costs milliseconds of CPU per request; on 2 cores that would be taken from the services being
measured, so the benchmarks talk HTTP on plain asyncio streams.
"""

from __future__ import annotations

import asyncio


class Connection:
    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, url: str, headers: dict[str, str] | None = None) -> Connection:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        return cls(host, int(port), headers)

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        """Send one request and read its answer: (status, body)."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        try:
            status_line = await self.reader.readuntil(b"\r\n")
            length, close = 0, False
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"connection" and b"close" in value.lower():
                    close = True
            payload = await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            self.writer.close()
            raise
        if close:
            self.writer.close()
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
