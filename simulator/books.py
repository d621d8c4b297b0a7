"""The network's own books: what it believes each card has spent, built only from the bank's answers.

A card network knows what it asked and what the issuer answered: approvals (0110 with 00), what
reversals left standing (0410), stand-in approvals it advised (0130), and which presentments settled
(1250). From those alone, each card's available balance at the end of a run is

    start - standing authorisations not yet cleared - advised stand-ins not yet cleared
          - settled presentments + settled refunds
          - payments made + payments received - pot deposits + pot withdrawals

and `reconcile` compares that with the bank's public `/balance`. The last line is the customers' app's
own record (the moves the bank answered as done, on their own tokens), as is each pot's balance:
its balance at the start + deposits - withdrawals, compared with `GET /pots`. Anything that could
not get an answer, or a repeat answered unlike its original, is a problem in itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

APPROVED = "00"


@dataclass
class Auth:
    card: int
    amount: int
    approved: bool
    authorisation_id: str | None = None
    standing: int = 0  # held for it now (authorisations)
    posted: int = 0  # debited for it without a hold (advices)
    settled: bool = False


@dataclass
class Books:
    start: list[int]  # each card's available balance when the run began
    auths: dict[str, Auth] = field(default_factory=dict)
    debits: Counter[int] = field(default_factory=Counter)
    credits: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # clearing outcomes, for the report
    moved: Counter[int] = field(default_factory=Counter)  # app moves per customer: + in, - out
    pot_start: dict[int, int] = field(default_factory=dict)  # each pot's balance at the start, by card
    potted: Counter[int] = field(default_factory=Counter)  # deposits - withdrawals, by card
    app_moves: Counter[str] = field(default_factory=Counter)  # done moves and their amounts, for the report

    def authorised(self, nid: str, card: int, amount: int, code: str, authorisation_id: str | None) -> None:
        """The definitive answer to an authorisation (0110)."""
        approved = code == APPROVED
        self.auths[nid] = Auth(card, amount, approved, authorisation_id, standing=amount if approved else 0)

    def unanswered(self, nid: str, card: int, amount: int) -> None:
        """No answer (timeout, refused at the door): the network reverses it and holds nothing."""
        self.auths[nid] = Auth(card, amount, approved=False)

    def advised(self, nid: str, card: int, amount: int) -> None:
        """A stand-in approval acknowledged (0130 00): the bank posts it."""
        self.auths[nid] = Auth(card, amount, approved=True, posted=amount)

    def reversed(self, nid: str, remaining: int, code: str) -> None:
        auth = self.auths.get(nid)
        if auth is None or code != APPROVED or not auth.approved or auth.settled:
            return
        auth.standing = min(auth.standing, remaining)
        if auth.posted:
            auth.posted = min(auth.posted, remaining)

    def cleared(self, card: int, nid: str | None, amount: int, status: str, outcome: str | None) -> None:
        self.outcomes[f"{status}:{outcome}"] += 1
        if status != "settled":
            return
        if outcome == "refunded":
            self.credits[card] += amount
            return
        self.debits[card] += amount
        auth = self.auths.get(nid) if nid else None
        if auth is not None and auth.card == card:
            auth.settled, auth.standing, auth.posted = True, 0, 0

    def paid(self, card: int, payee: int, amount: int) -> None:
        """A payment the bank answered as made (201, or the stored answer to a resend)."""
        self.moved[card] -= amount
        self.moved[payee] += amount
        self.app_moves["payments"] += 1
        self.app_moves["paid"] += amount

    def pot_moved(self, card: int, amount: int, *, deposit: bool) -> None:
        """A pot deposit or withdrawal the bank answered as done."""
        signed = amount if deposit else -amount
        self.moved[card] -= signed
        self.potted[card] += signed
        name = "pot_deposits" if deposit else "pot_withdrawals"
        self.app_moves[name] += 1
        self.app_moves[f"{name}_amount"] += amount

    def expected_pots(self) -> dict[int, int]:
        """Each pot's balance as its owner's app has seen it, by card."""
        return {card: start + self.potted[card] for card, start in self.pot_start.items()}

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def expected(self) -> list[int]:
        """Each card's available balance as the network sees it."""
        out = list(self.start)
        for auth in self.auths.values():
            if not auth.settled:
                out[auth.card] -= auth.standing + auth.posted
        for card, amount in self.debits.items():
            out[card] -= amount
        for card, amount in self.credits.items():
            out[card] += amount
        for card, amount in self.moved.items():
            out[card] += amount
        return out
