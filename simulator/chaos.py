"""What the card network itself can do to the bank during a run: cut its own ISO 8583 links with
messages in flight, and flood the bank with authorisations far past what it can decide.

The failures on the bank's side (a service killed, accounts slowed, the Kafka broker stopped) are
the bank's tooling's to inject: `bank.chaos` starts a bank of its own, runs a scenario through this
package, and calls these two for the `link-cut` and `overload` scenarios.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from simulator.loadgen import NO_ANSWER, Pool, Wire
from simulator.population import Customer
from simulator.runner import RunConfig


async def cut_links(wire: Wire | None, seconds: float) -> list[int]:
    """Cut every link of `wire` with messages in flight, every 2 s for `seconds`: how many were in
    flight at each cut."""
    links = getattr(wire, "links", None)
    if links is None:
        raise ValueError("link-cut needs the ISO 8583 wire")
    loop = asyncio.get_running_loop()
    end, cuts = loop.time() + seconds, []
    while True:
        waited = loop.time()
        while links.in_flight == 0 and loop.time() - waited < 2.0:  # a cut with something in flight
            await asyncio.sleep(0.001)
        cuts.append(links.cut())
        if loop.time() + 2.0 > end:
            return cuts
        await asyncio.sleep(2.0)


FLOOD_RATE = 1500.0  # authorisations/s the `overload` flood offers by default
FLOOD_TIMEOUT = 2.0  # the network's: an answer later than this is no answer


async def flood(
    cfg: RunConfig, customers: Sequence[Customer], seconds: float, rate: float = FLOOD_RATE
) -> dict[str, Any]:
    """Authorisations of one penny, open loop at `rate` for `seconds`, each sent once; then a full
    reversal of each one approved. Answers counted by code (a refusal by its typed code)."""
    pool = Pool(cfg.base_url, {"x-network-key": cfg.network_key}, size=512)
    codes: Counter[str] = Counter()
    reversals: Counter[str] = Counter()
    approved: list[dict[str, Any]] = []

    async def send(path: str, body: dict[str, Any], into: Counter[str]) -> str:
        try:
            status, payload = await pool.post(path, json.dumps(body).encode(), FLOOD_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            into[NO_ANSWER] += 1
            return NO_ANSWER
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            doc = {}
        code = str(doc.get("response_code")) if status == 200 else f"http_{status}:{doc.get('code')}"
        into[code] += 1
        return code

    async def authorise(seq: int) -> None:
        c = customers[seq % len(customers)]
        body = {
            "mti": "0100", "pan": c.pan, "expiry": c.expiry, "processing_code": "000000", "amount": 1,
            "currency": "GBP", "stan": f"{seq % 1_000_000:06d}", "rrn": f"{seq:012d}",
            "transmission_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "network_transaction_id": f"FLOOD{os.getpid()}X{seq:07d}",
            "merchant": {"id": "FL0001", "name": "FLOOD TEST", "mcc": "5999", "city": "London",
                         "country": "GB"},
        }  # fmt: skip
        if await send("/network/authorisations", body, codes) == "00":
            approved.append(body)

    loop = asyncio.get_running_loop()
    began, sent, tasks = loop.time(), 0, []
    try:
        while (elapsed := loop.time() - began) < seconds:
            due = int(elapsed * rate) - sent
            for _ in range(due):
                tasks.append(asyncio.create_task(authorise(sent)))
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        for body in approved:  # give the pennies back, so the network's books and the bank agree
            reversal = {
                k: body[k] for k in ("network_transaction_id", "pan", "amount", "currency", "stan", "rrn")
            }
            reversal.update(mti="0400", transmission_time=body["transmission_time"])
            while await send("/network/reversals", reversal, reversals) != "00":
                await asyncio.sleep(0.1)
    finally:
        pool.close()
    return {"sent": sent, "offered_per_s": rate, "codes": dict(codes), "approved": len(approved),
            "reversal_codes": dict(reversals)}  # fmt: skip
