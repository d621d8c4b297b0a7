"""The network's own books: what it believes each card has spent, built only from the bank's answers.

A card network knows what it asked and what the issuer answered: approvals (0110 with 00), what
reversals left standing (0410), stand-in approvals it advised (0130), and which presentments settled
(1250). From those alone, each card's available balance at the end of a run is

    start - standing authorisations not yet cleared - advised stand-ins not yet cleared
          - settled presentments + settled refunds

and `reconcile` compares that with the bank's public `/balance`. Anything the network could not get
acknowledged, or a repeat answered unlike its original, is a problem in itself.
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
        return out
