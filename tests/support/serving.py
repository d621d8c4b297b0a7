"""An ASGI app on uvicorn on a loopback port, as the tests serve their apps, stubs and receivers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from bank.infra.ports import free_port

# What every test server gets unless it says otherwise: uvicorn leaves the process's logging alone
# (tests capture it), runs the app's lifespan, and a connection a test left open cannot hold the
# shutdown for ever.
DEFAULTS: dict[str, Any] = {"log_config": None, "lifespan": "on", "timeout_graceful_shutdown": 5}


class Served:
    """`app` on uvicorn on 127.0.0.1:`port` (a free one by default), in this event loop.

    `start()` returns once the server listens (or raises what stopped it); `stop()` asks it to exit,
    and cuts it after `stop_timeout` seconds if something (a connection, a task) holds the shutdown.
    A stopped server can be started again on the same port. `config` goes to `uvicorn.Config`
    (`proxy_headers=False`, `access_log=True`, `lifespan="off"`, `timeout_keep_alive=600`…).
    """

    def __init__(
        self, app: Any, port: int | None = None, *, stop_timeout: float = 15.0, **config: Any
    ) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop_timeout = stop_timeout
        self.config = {**DEFAULTS, **config}
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Served:
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, **self.config)
        )
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError(f"the server on port {self.port} stopped during start-up")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        server, task = self.server, self.task
        if server is None or task is None:
            return
        self.server = self.task = None
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), self.stop_timeout)
        except TimeoutError:  # something holds the shutdown: cut it
            server.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Served:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextmanager
def served_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """`app` on uvicorn in a thread of its own (its own event loop): for a synchronous fixture, or a
    server that must not share the test's loop. Yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{**DEFAULTS, **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    give_up = time.monotonic() + 10
    while not server.started:  # no event loop here: a blocking sleep is fine
        assert thread.is_alive() and time.monotonic() < give_up, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
