"""A webhook receiver as its own local process, for the whole-bank benchmark (bench/whole_bank.py).

    .venv/bin/python -m bench.receiver --port 8099 [--host 127.0.0.1]

HTTP/1.1 on plain asyncio streams, keep-alive: every POST (any path) is read whole and answered
`204 No Content` at once, and counted; so are the distinct `webhook-id` headers (a retried delivery
arrives twice with the same one). `GET /count` answers `{"posts": n, "distinct": m, "bytes": b}`;
any other GET answers 200 with the same JSON. SIGTERM or SIGINT stops it.

It does no verification of signatures: the figure it serves is how fast the bank delivers, and the
receiver should cost as little CPU as possible on a machine the bank shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class Receiver:
    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0
        self.ids: set[str] = set()

    def counts(self) -> dict[str, int]:
        return {"posts": self.posts, "distinct": len(self.ids), "bytes": self.bytes}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0].upper()
                length, webhook_id, close = 0, "", False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip() or 0)
                    elif name == "webhook-id":
                        webhook_id = value.strip()
                    elif name == "connection" and "close" in value.lower():
                        close = True
                if length:
                    await reader.readexactly(length)
                if method == "POST":
                    self.posts += 1
                    self.bytes += length
                    if webhook_id:
                        self.ids.add(webhook_id)
                    writer.write(NO_CONTENT)
                else:
                    body = json.dumps(self.counts()).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def run(host: str, port: int) -> None:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.serve, host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"webhook receiver on http://{host}:{port} (counts at /count)", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    print(f"webhook receiver stopped: {receiver.counts()}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.receiver", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(run(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
