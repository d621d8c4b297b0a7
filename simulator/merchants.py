"""The merchant catalogue: real-looking card acceptors with their MCC and statement descriptor.

`merchants.csv` beside this file holds one merchant a line: the card acceptor id (DE 42), the
name, MCC (DE 18), the simulator's category (which story it plays in scenarios), city, ISO 3166
alpha-2 country, postcode, and the descriptor a statement shows, in the DE 43 layout
"NAME CITY CCC" (country as alpha-3), e.g. "BRIGHTBIRD ESPRESSO LONDON GBR".
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).with_name("merchants.csv")

# The categories scenarios draw from, and what the terminal sends.
CATEGORIES = (
    "coffee", "grocery", "transport", "taxi", "restaurant", "fuel", "hotel", "online", "atm", "offline",
)  # fmt: skip
ALPHA3 = {"GB": "GBR", "US": "USA", "SE": "SWE", "FR": "FRA", "IE": "IRL", "DE": "DEU", "NL": "NLD"}
_MCC = re.compile(r"^[0-9]{4}$")
_DESCRIPTOR = re.compile(r"^(?P<rest>.+) (?P<country>[A-Z]{3})$")


@dataclass(frozen=True)
class Merchant:
    id: str
    name: str
    mcc: str
    category: str
    city: str
    country: str  # alpha-2
    postcode: str
    descriptor: str

    def message_json(self) -> dict[str, Any]:
        """The `merchant` object of a network message."""
        return {
            "id": self.id,
            "name": self.name,
            "mcc": self.mcc,
            "city": self.city,
            "country": self.country,
            "postcode": self.postcode,
        }


def descriptor_of(name: str, city: str, country: str) -> str:
    return f"{name} {city.upper()} {ALPHA3[country]}"


def parse_descriptor(descriptor: str, city: str) -> tuple[str, str, str]:
    """(name, CITY, alpha-3 country) of a descriptor whose city is known (cities contain spaces)."""
    match = _DESCRIPTOR.match(descriptor)
    if match is None:
        raise ValueError(f"not a descriptor: {descriptor!r}")
    rest, suffix = match.group("rest"), f" {city.upper()}"
    if not rest.endswith(suffix):
        raise ValueError(f"descriptor {descriptor!r} does not end with the city {city!r}")
    return rest.removesuffix(suffix), city.upper(), match.group("country")


def validate(m: Merchant) -> list[str]:
    """What is wrong with one catalogue line (empty: nothing)."""
    problems = []
    if not _MCC.match(m.mcc):
        problems.append(f"{m.id}: MCC {m.mcc!r} is not 4 digits")
    if m.category not in CATEGORIES:
        problems.append(f"{m.id}: unknown category {m.category!r}")
    if m.country not in ALPHA3:
        problems.append(f"{m.id}: unknown country {m.country!r}")
    if not (1 <= len(m.name) <= 100) or not m.city or not m.postcode:
        problems.append(f"{m.id}: name, city and postcode are required")
    try:
        name, _, country = parse_descriptor(m.descriptor, m.city)
        if name != m.name or country != ALPHA3.get(m.country):
            problems.append(f"{m.id}: descriptor {m.descriptor!r} does not match name and country")
    except ValueError as exc:
        problems.append(f"{m.id}: {exc}")
    if m.category == "atm" and m.mcc != "6011":
        problems.append(f"{m.id}: an ATM has MCC 6011")
    return problems


def load(path: Path = CATALOGUE) -> list[Merchant]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [Merchant(**row) for row in csv.DictReader(handle)]


@cache
def catalogue() -> tuple[Merchant, ...]:
    merchants = tuple(load())
    problems = [p for m in merchants for p in validate(m)]
    if problems:
        raise ValueError("merchants.csv: " + "; ".join(problems))
    return merchants


def by_category() -> dict[str, tuple[Merchant, ...]]:
    groups: dict[str, list[Merchant]] = {c: [] for c in CATEGORIES}
    for m in catalogue():
        groups[m.category].append(m)
    return {c: tuple(ms) for c, ms in groups.items()}
