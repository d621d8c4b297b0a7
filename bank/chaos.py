"""`bank sim chaos`: failure and degradation scenarios, each while the simulator's `day` runs against a
bank of our own (`bank.cluster.BankCluster`), each ending with the simulator's reconciliation and
`bank ledger verify`.

* `accounts-kill`: SIGKILL accounts for `fault_seconds` (10 by default), then start it again.
  Authorisations must be answered (91) rather than hang; no stray holds once it is back.
* `transactions-kill`, `webhooks-kill`, `notifications-kill`: SIGKILL that service, start it again;
  authorisations unaffected; reports how long its consumers took to catch up (pglog lag back to ~0).
* `accounts-slow`: every request to accounts delayed 300 ms by a TCP proxy for `fault_seconds`
  (cards' deadline and breaker: fast 91s, then recovery).
* `kafka-stop`: the bank on a Kafka broker; the broker stopped for `fault_seconds` (30 by default);
  authorisations unaffected; reports how long the outboxes took to drain afterwards.
* `cards-kill`: SIGKILL cards, start it again. On the ISO 8583 wire every link is cut with its
  messages in flight; the network reconnects and repeats (0101) what went unanswered.
* `link-cut` (the ISO 8583 wire, whatever `--wire` says): every link is cut by the network's side
  while messages are in flight on it, every 2 s for `fault_seconds`; the links are opened again,
  and what went unanswered is repeated (0101, 0121, 0401) and must get the recorded answer.
* `overload`: beside `day`, a flood of authorisations (1 penny each, open loop at `FLOOD_RATE`/s)
  for `fault_seconds`, far past what the bank can decide. Every message must still be answered
  within the network's timeout, refusals must be typed 429s (`rate_limited.*`), reversals never
  refused, and afterwards the flood's approvals are reversed so that the books still agree.

Each runs against its own bank, started in a temporary folder and stopped at the end. The simulator
(the card network) only talks to it through its wires; the faults on the bank's side, the reads of
its database (consumer lag, outboxes) and the ledger verification are this module's.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bank.cluster import BankCluster, ledger_problems
from shared.config import to_libpq
from simulator import report as reporting
from simulator.chaos import FLOOD_RATE, cut_links, flood
from simulator.loadgen import Wire
from simulator.runner import During, RunConfig, RunResult, open_wire, population_for, run_scenario
from simulator.scenarios import AUTHORISATION, CHAOS_SCENARIOS

SCENARIOS = CHAOS_SCENARIOS
CONSUMERS = ("transactions", "webhooks", "notifications")

LAG_SQL = """
SELECT coalesce(sum(greatest(p.next_offset - o.next_offset, 0)), 0)
FROM events.consumer_offsets o JOIN events.partitions p USING (topic, partition)
WHERE o.group_id LIKE $1
"""
OUTBOX_SQL = "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"


async def _scalar(database_url: str, sql: str, *args: object) -> int:
    import asyncpg

    conn = await asyncpg.connect(to_libpq(database_url))
    try:
        return int(await conn.fetchval(sql, *args) or 0)
    finally:
        await conn.close()


async def _lag(database_url: str, service: str) -> int | None:
    try:
        return await _scalar(database_url, LAG_SQL, f"%{service}%")
    except Exception:
        return None


async def _unpublished(database_url: str) -> int:
    total = 0
    for schema in ("accounts", "cards", "transactions", "webhooks", "notifications"):
        try:
            total += await _scalar(database_url, OUTBOX_SQL.format(schema=schema))
        except Exception:  # a service without an outbox yet
            continue
    return total


async def _wait_until(check: Callable[[], Any], limit: float) -> float | None:
    """Seconds until `await check()` is true, or None after `limit`."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if await check():
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(0.25)
    return None


def fault(
    cluster: BankCluster,
    scenario: str,
    fault_at: float,
    fault_seconds: float,
    wire: Wire | None = None,
    flooding: Callable[[float], Any] | None = None,
) -> During:
    """The coroutine function run alongside the load: inject at `fault_at`, heal after `fault_seconds`."""

    async def run(start: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start + fault_at - loop.time()))
        began = loop.time() - start
        info: dict[str, Any] = {
            "scenario": scenario, "fault_at_s": round(began, 2), "fault_seconds": fault_seconds,
        }  # fmt: skip
        if scenario == "accounts-slow":
            assert cluster.proxy is not None
            cluster.proxy.delay = 0.3
            await asyncio.sleep(fault_seconds)
            cluster.proxy.delay = 0.0
        elif scenario == "link-cut":
            info["in_flight_at_each_cut"] = await cut_links(wire, fault_seconds)
        elif scenario == "overload":
            assert flooding is not None
            info["flood"] = await flooding(fault_seconds)
        elif scenario == "kafka-stop":
            assert cluster.broker is not None
            await asyncio.to_thread(cluster.broker.stop)
            await asyncio.sleep(fault_seconds)
            await asyncio.to_thread(cluster.broker.start)
            info["outbox_backlog_after"] = await _unpublished(cluster.database_url)
            info["outbox_drained_after_s"] = await _wait_until(
                lambda: _is_zero(_unpublished(cluster.database_url)), 120
            )
        else:
            service = scenario.removesuffix("-kill")
            cluster.kill(service)
            await asyncio.sleep(fault_seconds)
            cluster.start_service(service)
            info["ready_after_restart_s"] = round(await cluster.ready(service), 2)
            if service in CONSUMERS:
                info["lag_after_restart"] = await _lag(cluster.database_url, service)
                info["caught_up_after_s"] = await _wait_until(
                    lambda: _small(_lag(cluster.database_url, service)), 120
                )
        info["healed_at_s"] = round(loop.time() - start, 2)
        return info

    return run


async def _is_zero(value: Any) -> bool:
    return (await value) == 0


async def _small(value: Any) -> bool:
    lag = await value
    return lag is None or lag <= 5


def fault_window(result: RunResult, info: dict[str, Any]) -> dict[str, Any]:
    """Authorisation answers and latency in the seconds the fault lasted (by scheduled time)."""
    lo, hi = int(info["fault_at_s"]), int(info["healed_at_s"]) + 1
    windows = [result.stats.windows[s] for s in range(lo, hi) if s in result.stats.windows]
    p99 = max((w.auth.get_value_at_percentile(99) for w in windows if w.auth.get_total_count()), default=0)
    worst = max((w.auth.get_max_value() for w in windows if w.auth.get_total_count()), default=0)
    return {"seconds": [lo, hi], "worst_second_p99_ms": p99 / 1000, "max_ms": worst / 1000,
            "authorisations": sum(w.auth.get_total_count() for w in windows)}  # fmt: skip


async def run_chaos(
    scenario: str,
    cfg: RunConfig,
    *,
    fault_at: float = 3.0,
    fault_seconds: float | None = None,
    folder: Path | None = None,
    say: Callable[[str], None] = print,
    flood_rate: float = FLOOD_RATE,
) -> RunResult:
    """Start a bank, run `cfg` (normally `day`) with the fault injected, reconcile, verify the ledger."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown chaos scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    seconds = fault_seconds if fault_seconds is not None else (30.0 if scenario == "kafka-stop" else 10.0)
    with tempfile.TemporaryDirectory(prefix="bank-chaos-", dir=folder) as tmp:
        cluster = BankCluster.for_load(
            Path(tmp), kafka=scenario == "kafka-stop", proxy_accounts=scenario == "accounts-slow"
        )
        say(f"chaos {scenario}: starting a bank in {tmp}")
        async with cluster:
            run_cfg = replace(cfg, base_url=cluster.base_url, iso8583_address=cluster.iso8583_address)
            if scenario == "link-cut":
                run_cfg = replace(run_cfg, wire="iso8583")
            wire = await open_wire(run_cfg)
            population = await population_for(run_cfg, say)

            async def flooding(seconds: float) -> dict[str, Any]:
                return await flood(run_cfg, population.customers, seconds, flood_rate)

            async def ledger() -> list[str]:
                return await ledger_problems(cluster.database_url)

            during = fault(cluster, scenario, fault_at, seconds, wire, flooding)
            result = await run_scenario(
                run_cfg, population, during=during, say=say, wire=wire, bank_checks=ledger
            )
            info = result.report.get("chaos", {})
            if info:
                info["authorisations_during_fault"] = fault_window(result, info)
                codes = result.report["codes"].get(AUTHORISATION, {})
                info["authorisation_codes"] = codes
                if result.folder is not None:
                    reporting.write(result.report, result.folder)
            return result
