"""The live terminal view of a run (rich): offered vs achieved rate, answers by code, latency, errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simulator.loadgen import Stats
from simulator.scenarios import AUTHORISATION, KINDS

CODE_NAMES = {
    "00": "approved", "05": "do not honour", "14": "invalid card", "51": "insufficient funds",
    "54": "expired", "57": "not permitted", "61": "exceeds limit", "91": "issuer unavailable",
    "94": "duplicate", "settled": "settled", "rejected": "rejected", "retry": "retry", "ok": "done",
}  # fmt: skip


def render(stats: Stats, title: str, elapsed: float, planned: int) -> Group:
    second = int(elapsed)
    offered, achieved = stats.recent_rates(second)
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(title, style="bold"),
        f"t={elapsed:5.1f}s",
        f"offered {offered:7.1f}/s",
        f"answered {achieved:7.1f}/s",
        f"sent {stats.offered}/{planned}",
        f"in flight {stats.in_flight}",
        f"resent {stats.resent}",
        f"skipped {stats.skipped}",
    )
    lat = Table(title="latency from scheduled time (ms)", expand=False)
    for col in ("kind", "count", "p50", "p99", "p99.9", "max"):
        lat.add_column(col, justify="right")
    for kind in KINDS:
        p = stats.percentiles(kind)
        if p.get("count"):
            lat.add_row(
                kind, str(p["count"]), f"{p['p50_ms']:.1f}", f"{p['p99_ms']:.1f}",
                f"{p['p99_9_ms']:.1f}", f"{p['max_ms']:.1f}",
            )  # fmt: skip
    codes = Table(title="answers by code", expand=False)
    for col in ("kind", "code", "meaning", "count"):
        codes.add_column(col)
    for kind in KINDS:
        for code, n in sorted(stats.codes.get(kind, {}).items()):
            codes.add_row(kind, code, CODE_NAMES.get(code, ""), str(n))
    errors = ", ".join(f"{k} {v}" for k, v in stats.errors.most_common()) or "none"
    style = "red" if stats.errors else "green"
    lag = stats.lag.get_value_at_percentile(99) / 1000 if stats.lag.get_total_count() else 0.0
    foot = Text(f"errors: {errors}    generator lag p99 {lag:.1f} ms", style=style)
    return Group(head, lat, codes, foot)


@contextlib.asynccontextmanager
async def live_view(
    stats: Stats, title: str, planned: int, *, enabled: bool = True, refresh: float = 0.5
) -> AsyncIterator[None]:
    """Shows the view while the body runs (nothing when disabled or not on a terminal)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield
        return
    loop = asyncio.get_running_loop()
    began = loop.time()
    first = render(stats, title, 0, planned)
    with Live(first, console=console, refresh_per_second=4, transient=False) as live:

        async def refresh_loop() -> None:
            while True:
                await asyncio.sleep(refresh)
                live.update(render(stats, title, loop.time() - began, planned))

        task = loop.create_task(refresh_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            live.update(render(stats, title, loop.time() - began, planned))


__all__ = ["AUTHORISATION", "live_view", "render"]
