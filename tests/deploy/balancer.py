"""A tiny round-robin TCP load balancer: what a Kubernetes Service (kube-proxy) does for replicas.

    python -m tests.deploy.balancer 18001=127.0.0.1:18101,127.0.0.1:18102 18002=...

Each argument is one listener on 127.0.0.1 and its backends. Every new connection goes to the next
backend in turn; a backend that refuses the connection is skipped (as a Service drops a pod that fails
its readiness probe), so killing a replica moves new connections to the others. Bytes are piped as they
come: HTTP keep-alive connections stay on the backend they were opened to, as with kube-proxy.
Prints "ready" once every listener is bound. Test tooling only; never used by the bank itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys


class Listener:
    def __init__(self, port: int, backends: list[tuple[str, int]]) -> None:
        self.port = port
        self.backends = backends
        self._turn = itertools.cycle(range(len(backends)))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            host, port = self.backends[next(self._turn)]
            with contextlib.suppress(OSError):
                return await asyncio.open_connection(host, port)
        return None

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            client_w.close()
            return
        up_r, up_w = upstream
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))


def parse(arg: str) -> Listener:
    listen, _, targets = arg.partition("=")
    backends = []
    for target in targets.split(","):
        host, _, port = target.rpartition(":")
        backends.append((host, int(port)))
    return Listener(int(listen), backends)


async def main(args: list[str]) -> None:
    servers = [
        await asyncio.start_server(listener.handle, "127.0.0.1", listener.port)
        for listener in map(parse, args)
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
