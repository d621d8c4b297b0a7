"""Health checks, as Mondo had them: a Checker returns (error or None, details).

/healthz says the process is alive (no I/O). /readyz runs every Checker with a
timeout and answers 503 when any of them fails, with each one's details.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Checker = Callable[[], Awaitable[tuple[str | None, dict[str, str]]]]


async def run_checkers(checkers: dict[str, Checker], timeout: float = 2.0) -> tuple[bool, dict[str, Any]]:
    async def one(name: str, check: Checker) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        try:
            error, details = await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            error, details = f"timed out after {timeout}s", {}
        except Exception as exc:  # a checker that crashes is a failed check, not a 500
            error, details = f"{type(exc).__name__}: {exc}", {}
        report: dict[str, Any] = {
            "ok": error is None,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            **details,
        }
        if error is not None:
            report["error"] = error
        return name, report

    results = await asyncio.gather(*(one(n, c) for n, c in checkers.items()))
    report = dict(results)
    return all(r["ok"] for r in report.values()), report
