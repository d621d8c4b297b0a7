"""Scenarios: a pure, seeded generation of the network messages a run will send, and when.

Nothing here does I/O or reads a clock: `generate(...)` with the same arguments returns the same
schedule, so a run can be repeated and the generation is unit-testable.

* `steady`: authorisations (purchases) at a constant arrival rate R, evenly spaced, for T seconds.
* `burst`:  the same, stepping from R to 5R for the middle third of T, then back to R.
* `day`:    a realistic mix whose arrival rate follows a compressed day (a morning, a lunch and an
            evening peak; mean rate R; Poisson arrivals): purchases cleared later, some with tips
            (restaurants, taxis), fuel pre-authorisations cleared for less, hotels partly reversed
            before clearing, online orders some refunded, ATM withdrawals, deliberate insufficient-
            funds declines, cancelled orders (full reversal), retransmitted duplicates (0101), offline
            force-posts (a presentment with no authorisation), stand-in advices (0120) then cleared,
            balance inquiries; and, from the customers' app rather than the network, payments to
            another customer (`POST /payments`) and money put into a pot and some of it taken out
            again (`PUT /pots/{id}/deposit|withdraw`).
* `soak`:   the `day` mix at a constant Poisson rate R, long (default 10 minutes).

`budgets[i]` is what card i can spend at the start. The generator never plans more spending on a card
than its budget (counting tips and every planned clearing as if approved), so every approved
authorisation can be captured and every force-post finds the money: a reconciliation difference is
then the bank's, never a race the simulator set up. A card with no budget left gets a balance inquiry
instead. Insufficient-funds declines ask for more than the card's whole budget. A payment or a pot
deposit is planned against the payer's budget like a purchase; what a customer receives (a payment
to them, a withdrawal from their pot) is never counted on, so every planned move can be afforded
whatever order the bank sees them in, and a pot withdrawal takes out at most what its own deposit
(which it waits for) put in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from simulator.merchants import Merchant, by_category

SCENARIOS = ("steady", "burst", "day", "soak")
# Failures `bank sim chaos` can inject (simulator/chaos.py); named here so the command line can list
# them without importing the load generator's dependencies (the service image leaves those out).
CHAOS_SCENARIOS = (
    "accounts-kill", "accounts-slow", "transactions-kill", "webhooks-kill", "notifications-kill",
    "kafka-stop", "cards-kill", "link-cut", "overload",
)  # fmt: skip
DEFAULT_DURATION = {"steady": 30.0, "burst": 30.0, "day": 60.0, "soak": 600.0}

PURCHASE = "000000"
CASH = "010000"
REFUND = "200000"
BALANCE_INQUIRY = "310000"

# Kinds of message.
AUTHORISATION = "authorisation"  # 0100
REPEAT = "repeat"  # 0101, the same message again
REVERSAL = "reversal"  # 0400
ADVICE = "advice"  # 0120
CLEARING = "clearing"  # 1240
NETWORK_KINDS = (AUTHORISATION, REPEAT, REVERSAL, ADVICE, CLEARING)
# Kinds of call from the customers' app (their own access tokens, through the gateway).
PAYMENT = "payment"  # POST /payments
POT_DEPOSIT = "pot_deposit"  # PUT /pots/{id}/deposit
POT_WITHDRAWAL = "pot_withdrawal"  # PUT /pots/{id}/withdraw
APP_KINDS = (PAYMENT, POT_DEPOSIT, POT_WITHDRAWAL)
KINDS = NETWORK_KINDS + APP_KINDS

# The day mix: story -> weight.
DAY_MIX: dict[str, int] = {
    "coffee": 18,
    "grocery": 14,
    "transport": 10,
    "taxi": 3,
    "restaurant": 9,
    "fuel": 5,
    "hotel": 2,
    "online": 10,
    "atm": 5,
    "insufficient": 5,
    "cancelled": 4,
    "duplicate": 4,
    "offline": 3,
    "advice": 2,
    "balance": 1,
    "payment": 4,
    "pot": 4,
}
STEADY_MIX: dict[str, int] = {"coffee": 30, "grocery": 20, "transport": 20, "restaurant": 15, "online": 15}
# Amount ranges in minor units.
RANGES: dict[str, tuple[int, int]] = {
    "coffee": (250, 650),
    "grocery": (800, 9_000),
    "transport": (150, 800),
    "taxi": (900, 3_500),
    "restaurant": (1_500, 9_000),
    "online": (1_000, 15_000),
    "hotel": (15_000, 40_000),
    "offline": (300, 2_500),
    "advice": (500, 5_000),
    "payment": (100, 5_000),
    "pot": (500, 10_000),
}
FUEL_PREAUTH = 9_900
NEW = "<new>"  # a network id (or presentment id) named after the message's own seq
ATM_AMOUNTS = (2_000, 4_000, 6_000, 10_000)


@dataclass(frozen=True)
class Message:
    """One network message of a schedule. Bodies are built from it at send time (`loadgen`)."""

    at: float  # seconds after the start of the run
    seq: int  # unique within the schedule; orders messages due at the same time
    kind: str  # one of KINDS
    story: str  # what this is part of (DAY_MIX keys, "purchase", "refund")
    card: int  # index into the population's cards (app calls: the customer who makes them)
    merchant: str  # merchant id ("" for app calls)
    amount: int
    processing_code: str = PURCHASE
    nid: str | None = None  # network transaction id (all but offline and refund presentments)
    presentment_id: str | None = None  # clearing
    replacement: int | None = None  # reversal: what the authorisation stands at afterwards (None: full)
    original_amount: int | None = None  # reversal: the authorisation's amount
    needs: str | None = None  # send only if this network id was approved
    card_not_present: bool = False  # send the CVC
    counterparty: int | None = None  # payment: the customer paid (an index, as `card`)
    dedupe_id: str | None = None  # app calls: the client's dedupe_id, the same on every resend


@dataclass(frozen=True)
class Shape:
    """Arrivals: `rate(t)` over [0, duration)."""

    scenario: str
    rate: float
    duration: float

    def at(self, t: float) -> float:
        if self.scenario == "burst":
            third = self.duration / 3
            return self.rate * (5 if third <= t < 2 * third else 1)
        if self.scenario == "day":
            return self.rate * day_shape(t / self.duration)
        return self.rate

    @property
    def peak(self) -> float:
        if self.scenario == "burst":
            return 5 * self.rate
        if self.scenario == "day":
            return self.rate * DAY_PEAK
        return self.rate


def _day_raw(x: float) -> float:
    peaks = ((0.15, 0.06, 1.6), (0.47, 0.07, 2.0), (0.78, 0.08, 1.2))
    return 0.35 + sum(h * math.exp(-(((x - c) / w) ** 2) / 2) for c, w, h in peaks)


_DAY_MEAN = sum(_day_raw((i + 0.5) / 1000) for i in range(1000)) / 1000
DAY_PEAK = max(_day_raw(i / 1000) for i in range(1001)) / _DAY_MEAN


def day_shape(x: float) -> float:
    """The rate multiplier at fraction x of a compressed day; its mean over [0, 1] is 1."""
    return _day_raw(x) / _DAY_MEAN


def arrivals(shape: Shape, rng: random.Random) -> list[float]:
    """Arrival times: evenly spaced for steady and burst, Poisson (thinned) for day and soak."""
    if shape.rate <= 0 or shape.duration <= 0:
        return []
    if shape.scenario in ("steady", "burst"):
        d, r = shape.duration, shape.rate
        segments = [(0.0, d, r)] if shape.scenario == "steady" else [(0, d / 3, r), (d / 3, 2 * d / 3, 5 * r),
                                                                      (2 * d / 3, d, r)]  # fmt: skip
        times = []
        for begin, end, seg_rate in segments:
            count = math.ceil((end - begin) * seg_rate - 1e-9)
            times += [begin + k / seg_rate for k in range(count)]
        return times
    times, t, peak = [], 0.0, shape.peak
    while True:
        t += rng.expovariate(peak)
        if t >= shape.duration:
            return times
        if rng.random() * peak <= shape.at(t):
            times.append(t)


class _Planner:
    def __init__(self, rng: random.Random, budgets: Sequence[int], prefix: str, duration: float) -> None:
        self.rng = rng
        self.initial = list(budgets)
        self.left = list(budgets)
        self.prefix = prefix
        self.messages: list[Message] = []
        self.seq = 0
        self.merchants = by_category()
        self.clear_hi = min(max(duration * 0.25, 2.0), 60.0)
        self.clear_lo = self.clear_hi / 4

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def merchant(self, category: str) -> Merchant:
        return self.rng.choice(self.merchants[category])

    def amount(self, story: str) -> int:
        lo, hi = RANGES[story]
        return self.rng.randint(lo, hi)

    def card_for(self, spend: int) -> int | None:
        """A card that can afford `spend` (a few draws), its budget reduced; None if none found."""
        for _ in range(8):
            card = self.rng.randrange(len(self.left))
            if self.left[card] >= spend:
                self.left[card] -= spend
                return card
        return None

    def add(self, at: float, **fields: object) -> Message:
        """A message due at `at`; a network id or presentment id of NEW is named after its seq."""
        seq = self.next_seq()
        for key, suffix in (("nid", ""), ("presentment_id", "F"), ("dedupe_id", "D")):
            if fields.get(key) is NEW:
                fields[key] = f"{self.prefix}{seq:07d}{suffix}"
        msg = Message(at=round(at, 6), seq=seq, **fields)  # type: ignore[arg-type]
        self.messages.append(msg)
        return msg

    def later(self, at: float, lo: float, hi: float) -> float:
        return at + self.rng.uniform(lo, hi)

    # -- stories ----------------------------------------------------------------------------------------

    def story(self, at: float, name: str, clear: bool = True) -> None:
        getattr(self, f"_{name}", self._simple)(at, name, clear)

    def _authorise(
        self, at: float, story: str, category: str, amount: int, spend: int, *, code: str = PURCHASE,
        cnp: bool = False,
    ) -> Message | None:  # fmt: skip
        card = self.card_for(spend)
        if card is None:
            self._balance(at, "balance", False)
            return None
        m = self.merchant(category)
        return self.add(at, kind=AUTHORISATION, story=story, card=card, merchant=m.id, amount=amount,
                        processing_code=code, nid=NEW, card_not_present=cnp)  # fmt: skip

    def _clear(self, at: float, auth: Message, amount: int) -> Message:
        when = self.later(at, self.clear_lo, self.clear_hi)
        return self.add(when, kind=CLEARING, story=auth.story, card=auth.card, merchant=auth.merchant,
                        amount=amount, processing_code=auth.processing_code, nid=auth.nid,
                        presentment_id=f"{auth.nid}P", needs=auth.nid)  # fmt: skip

    def _simple(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        auth = self._authorise(at, story, story, amount, amount, cnp=story == "online")
        if auth is not None and clear:
            self._clear(at, auth, amount)

    def _online(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        auth = self._authorise(at, story, story, amount, amount, cnp=True)
        if auth is None or not clear:
            return
        cleared = self._clear(at, auth, amount)
        if self.rng.random() < 0.2:  # returned: a refund presentment, linked to nothing
            back = self.rng.randint(max(1, amount * 3 // 10), amount)
            when = self.later(cleared.at, 0.5, max(1.0, self.clear_lo))
            self.add(when, kind=CLEARING, story="refund", card=auth.card, merchant=auth.merchant, amount=back,
                     processing_code=REFUND, presentment_id=f"{auth.nid}R", needs=auth.nid)  # fmt: skip

    def _tipped(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        tip = 0.25 if self.rng.random() < 0.05 else self.rng.uniform(0, 0.18)  # 5%: above the tolerance
        final = amount + int(amount * tip)
        auth = self._authorise(at, story, story, amount, max(amount, final))
        if auth is not None and clear:
            self._clear(at, auth, final)

    _restaurant = _tipped
    _taxi = _tipped

    def _fuel(self, at: float, story: str, clear: bool) -> None:
        auth = self._authorise(at, story, "fuel", FUEL_PREAUTH, FUEL_PREAUTH)
        if auth is not None and clear:
            self._clear(at, auth, self.rng.randint(2_000, 9_500))

    def _hotel(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        auth = self._authorise(at, story, "hotel", amount, amount)
        if auth is None:
            return
        remaining = int(amount * self.rng.uniform(0.6, 0.9))
        when = self.later(at, 0.3, min(3.0, self.clear_lo))
        self.add(when, kind=REVERSAL, story=story, card=auth.card, merchant=auth.merchant, amount=amount,
                 original_amount=amount, replacement=remaining, nid=auth.nid, needs=auth.nid)  # fmt: skip
        if clear:
            cleared_at = max(when + 0.5, self.later(at, self.clear_lo, self.clear_hi))
            self.add(cleared_at, kind=CLEARING, story=story, card=auth.card, merchant=auth.merchant,
                     amount=remaining, processing_code=PURCHASE, nid=auth.nid,
                     presentment_id=f"{auth.nid}P", needs=auth.nid)  # fmt: skip

    def _atm(self, at: float, story: str, clear: bool) -> None:
        amount = self.rng.choice(ATM_AMOUNTS)
        auth = self._authorise(at, story, "atm", amount, amount, code=CASH)
        if auth is not None and clear:
            self._clear(at, auth, amount)

    def _insufficient(self, at: float, story: str, clear: bool) -> None:
        card = self.rng.randrange(len(self.left))
        m = self.merchant(self.rng.choice(("grocery", "online", "hotel")))
        amount = self.initial[card] + self.rng.randint(1_000, 50_000)
        self.add(at, kind=AUTHORISATION, story=story, card=card, merchant=m.id, amount=amount,
                 nid=NEW, card_not_present=m.category == "online")  # fmt: skip

    def _cancelled(self, at: float, story: str, clear: bool) -> None:
        category = self.rng.choice(("online", "grocery"))
        amount = self.amount(category)
        auth = self._authorise(at, story, category, amount, amount, cnp=category == "online")
        if auth is not None:
            when = self.later(at, 0.3, min(3.0, self.clear_lo))
            self.add(when, kind=REVERSAL, story=story, card=auth.card, merchant=auth.merchant, amount=amount,
                     original_amount=amount, nid=auth.nid, needs=auth.nid)  # fmt: skip

    def _duplicate(self, at: float, story: str, clear: bool) -> None:
        category = self.rng.choice(("coffee", "grocery"))
        amount = self.amount(category)
        auth = self._authorise(at, story, category, amount, amount)
        if auth is None:
            return
        self.add(self.later(at, 0.05, 0.3), kind=REPEAT, story=story, card=auth.card, merchant=auth.merchant,
                 amount=amount, nid=auth.nid)  # fmt: skip
        if clear:
            self._clear(at + 0.3, auth, amount)

    def _offline(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        card = self.card_for(amount)
        if card is None:
            self._balance(at, "balance", clear)
            return
        m = self.merchant("offline")
        self.add(at, kind=CLEARING, story=story, card=card, merchant=m.id, amount=amount,
                 presentment_id=NEW)  # fmt: skip

    def _advice(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        card = self.card_for(amount)
        if card is None:
            self._balance(at, "balance", clear)
            return
        m = self.merchant(self.rng.choice(("grocery", "restaurant", "transport")))
        advice = self.add(at, kind=ADVICE, story=story, card=card, merchant=m.id, amount=amount,
                          nid=NEW)  # fmt: skip
        self._clear(at, advice, amount)  # always cleared: the posting is then certain either way

    def _payment(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        payer = self.card_for(amount) if len(self.left) > 1 else None
        if payer is None:
            self._balance(at, "balance", clear)
            return
        payee = (payer + self.rng.randrange(1, len(self.left))) % len(self.left)
        self.add(at, kind=PAYMENT, story=story, card=payer, merchant="", amount=amount, counterparty=payee,
                 dedupe_id=NEW)  # fmt: skip

    def _pot(self, at: float, story: str, clear: bool) -> None:
        amount = self.amount(story)
        card = self.card_for(amount)
        if card is None:
            self._balance(at, "balance", clear)
            return
        deposit = self.add(at, kind=POT_DEPOSIT, story=story, card=card, merchant="", amount=amount,
                           dedupe_id=NEW)  # fmt: skip
        if self.rng.random() < 0.6:  # some of it taken out again later, once the deposit is in
            back = self.rng.randint(1, amount)
            when = self.later(at, 0.5, max(1.0, self.clear_lo))
            self.add(when, kind=POT_WITHDRAWAL, story=story, card=card, merchant="", amount=back,
                     dedupe_id=NEW, needs=deposit.dedupe_id)  # fmt: skip

    def _balance(self, at: float, story: str, clear: bool) -> None:
        card = self.rng.randrange(len(self.left))
        m = self.merchant("atm")
        self.add(at, kind=AUTHORISATION, story="balance", card=card, merchant=m.id, amount=0,
                 processing_code=BALANCE_INQUIRY, nid=NEW)  # fmt: skip


def generate(
    scenario: str,
    *,
    rate: float,
    duration: float,
    seed: int,
    budgets: Sequence[int],
    prefix: str = "SIM",
) -> list[Message]:
    """The schedule: every message of the run, sorted by due time."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    if not budgets:
        raise ValueError("no cards to use")
    rng = random.Random(f"{scenario}:{seed}")
    planner = _Planner(rng, budgets, prefix, duration)
    times = arrivals(Shape(scenario, rate, duration), rng)
    mix = STEADY_MIX if scenario in ("steady", "burst") else DAY_MIX
    names, weights = list(mix), list(mix.values())
    clear = scenario in ("day", "soak")
    for at in times:
        planner.story(at, rng.choices(names, weights)[0], clear)
    return sorted(planner.messages, key=lambda m: (m.at, m.seq))


def summary(schedule: Sequence[Message]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in schedule:
        counts[m.kind] = counts.get(m.kind, 0) + 1
    return counts
