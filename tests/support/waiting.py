"""Waiting for a condition in a test: generously, and never asserting on how long it took."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Call `check()` (a function or a coroutine function) until it returns something true; return
    that. Fails the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
