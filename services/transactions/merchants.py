"""The merchant directory's rules (pure): a clean display name from the network's descriptor, a
category and an emoji from the MCC table (`mcc.csv`), stable `merch_`/`grp_` ids, an address.

No I/O beyond reading the MCC table shipped beside this module once.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CATEGORIES = (
    "general", "eating_out", "expenses", "transport", "cash", "bills", "entertainment", "shopping",
    "holidays", "groceries",
)  # fmt: skip
DEFAULT_EMOJI = "💳"
ATM_MCCS = frozenset({"6010", "6011"})
MCC_FILE = Path(__file__).with_name("mcc.csv")

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True, slots=True)
class MccRange:
    low: int
    high: int
    category: str
    emoji: str
    label: str


@cache
def mcc_table() -> tuple[MccRange, ...]:
    with MCC_FILE.open(encoding="utf-8", newline="") as f:
        rows = [
            MccRange(int(r["mcc_from"]), int(r["mcc_to"]), r["category"], r["emoji"], r["label"])
            for r in csv.DictReader(f)
        ]
    for row in rows:
        if row.category not in CATEGORIES or row.low > row.high:
            raise ValueError(f"bad mcc.csv row: {row}")
    return tuple(rows)


def mcc_entry(mcc: str) -> MccRange | None:
    """The narrowest range of the table holding this MCC (a specific code beats its block)."""
    if not re.fullmatch(r"[0-9]{4}", mcc or ""):
        return None
    code = int(mcc)
    matches = [r for r in mcc_table() if r.low <= code <= r.high]
    return min(matches, key=lambda r: r.high - r.low) if matches else None


def category_for_mcc(mcc: str) -> str:
    entry = mcc_entry(mcc)
    return entry.category if entry else "general"


# -- names -------------------------------------------------------------------------------------------

# Payment facilitators that put their own prefix before the merchant's name: "SQ *BRIGHTBIRD".
_FACILITATOR = re.compile(
    r"^(?:SQ|SUMUP|SUM UP|IZ|IZETTLE|ZETTLE|ZTL|PAYPAL|PP|SP|CRV|WPY|TST|DNH|GOOGLE|APPLE PAY|VMP)\s*\*\s*",
    re.IGNORECASE,
)
_COUNTRY_SUFFIX = re.compile(r"\s+(?:GBR|GB|UK|USA|US|IRL|IE|FRA|FR|DEU|DE|ESP|ES|ITA|IT|NLD|NL)$", re.I)
_STORE_NUMBER = re.compile(r"\s+(?:#\s*|NO\.?\s*|STORE\s+)?\d{2,}[A-Z]?$", re.IGNORECASE)
_WEB_SUFFIX = re.compile(r"\.(?:CO\.UK|COM|NET|ORG|UK|IO)(?:/\S*)?$", re.IGNORECASE)
_TRAILING_JUNK = re.compile(r"[\s*#\-/.,]+$")
_POSTCODE = re.compile(r"\s+[A-Z]{1,2}[0-9][0-9A-Z]?\s*[0-9][A-Z]{2}$", re.IGNORECASE)

# Well-known brands whose descriptors cannot be title-cased into their names.
_BRANDS: tuple[tuple[str, str], ...] = (
    ("AMZN MKTP", "Amazon"), ("AMAZON", "Amazon"), ("TFL TRAVEL", "TfL"), ("TFL", "TfL"),
    ("MCDONALDS", "McDonald's"), ("MCDONALD'S", "McDonald's"), ("SAINSBURYS", "Sainsbury's"),
    ("SAINSBURY'S", "Sainsbury's"), ("J SAINSBURY", "Sainsbury's"), ("TESCO", "Tesco"),
    ("M&S", "M&S"), ("MARKS & SPENCER", "M&S"), ("MARKS&SPENCER", "M&S"), ("UBER", "Uber"),
    ("PRET A MANGER", "Pret A Manger"), ("KFC", "KFC"), ("H&M", "H&M"), ("BP", "BP"),
    ("NETFLIX", "Netflix"), ("SPOTIFY", "Spotify"), ("ITUNES", "Apple"), ("APPLE.COM", "Apple"),
    ("WH SMITH", "WHSmith"), ("WHSMITH", "WHSmith"), ("LIDL", "Lidl"), ("ALDI", "Aldi"),
    ("EASYJET", "easyJet"), ("RYANAIR", "Ryanair"), ("DELIVEROO", "Deliveroo"), ("JUST EAT", "Just Eat"),
)  # fmt: skip
_KEEP_UPPER = frozenset({"UK", "BP", "KFC", "NHS", "BBC", "ATM", "HSBC", "TSB", "EE", "O2", "DVLA", "HMRC"})
_SMALL_WORDS = frozenset({"a", "an", "and", "of", "the", "at", "on", "in", "for", "by"})


def _title_word(word: str, first: bool) -> str:
    if word.upper() in _KEEP_UPPER:
        return word.upper()
    lower = word.lower()
    if not first and lower in _SMALL_WORDS:
        return lower
    if lower.startswith("mc") and len(lower) > 2:
        return "Mc" + lower[2:].capitalize()
    # Capitalise after apostrophes only for name prefixes (O'Neill), not possessives (Joe's).
    if re.fullmatch(r"o'[a-z]+", lower):
        return "O'" + lower[2:].capitalize()
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))


def _strip_place(name: str, city: str, country: str) -> str:
    """Drop the descriptor's trailing postcode, country and city, in whatever order they came."""
    previous = None
    while previous != name:
        previous = name
        name = _POSTCODE.sub("", name)
        name = _COUNTRY_SUFFIX.sub("", name)
        if country and name.upper().endswith(" " + country.upper()):
            name = name[: -len(country) - 1]
        if city and name.upper().endswith(" " + city.upper()) and len(name) > len(city) + 1:
            name = name[: -len(city) - 1]
        name = _TRAILING_JUNK.sub("", name)
    return name


def clean_name(raw: str, city: str = "", country: str = "") -> str:
    """ "BRIGHTBIRD ESPRESSO LONDON GBR" -> "Brightbird Espresso"."""
    name = " ".join(raw.replace("\\", " ").split())
    name = _FACILITATOR.sub("", name)
    name = _strip_place(name, city, country)
    name = _STORE_NUMBER.sub("", name)
    name = _strip_place(name, city, country)
    name = _WEB_SUFFIX.sub("", name)
    upper = name.upper()
    for prefix, brand in _BRANDS:
        if upper == prefix or upper.startswith(prefix + " ") or upper.startswith(prefix + "*"):
            return brand
    name = _TRAILING_JUNK.sub("", name).replace("*", " ")
    words = name.split()
    if not words:
        return " ".join(raw.split()).title() or "Unknown merchant"
    if any(c.islower() for c in name):
        return " ".join(words)  # already mixed case: the merchant chose it
    return " ".join(_title_word(w, i == 0) for i, w in enumerate(words))


# -- emoji, ids, logo, address ---------------------------------------------------------------------------

_NAME_EMOJI: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(rf"\b(?:{words})\b", re.IGNORECASE), emoji)
    for words, emoji in (
        ("coffee|espresso|caf[eé]|roasters?|starbucks|costa|nero", "☕"),
        ("bakery|bakers?|boulangerie|bread|greggs|patisserie", "🍞"),
        ("taxi|cabs?|uber|minicab|addison lee", "🚕"),
        ("pizza|pizzeria|domino'?s", "🍕"),
        ("sushi|wasabi|itsu", "🍣"),
        ("burger|burgers|mcdonald'?s|five guys|kfc", "🍔"),
        ("pub|arms|tavern|brewery|brewdog", "🍺"),
        ("cinema|odeon|picturehouse|vue|curzon", "🎬"),
        ("pharmacy|chemist|boots", "💊"),
    )
)


def emoji_for(name: str, mcc: str) -> str:
    if mcc in ATM_MCCS:
        return "🏧"
    for pattern, emoji in _NAME_EMOJI:
        if pattern.search(name):
            return emoji
    entry = mcc_entry(mcc)
    return entry.emoji if entry else DEFAULT_EMOJI


def stable_id(prefix: str, *parts: str) -> str:
    """A deterministic Mondo-style id: the same inputs give the same id, in any process, any order."""
    digest = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:17], "big")
    chars = []
    for _ in range(26):
        digest, rem = divmod(digest, 32)
        chars.append(_ALPHABET[rem])
    return f"{prefix}_{''.join(chars)}"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "merchant"


# Approximate centres for the cities the network reports most, so the map has somewhere to point.
_CITY_CENTRES: dict[str, tuple[float, float, str]] = {
    "london": (51.5074, -0.1278, "Greater London"),
    "manchester": (53.4808, -2.2426, "Greater Manchester"),
    "birmingham": (52.4862, -1.8904, "West Midlands"),
    "edinburgh": (55.9533, -3.1883, "City of Edinburgh"),
    "glasgow": (55.8642, -4.2518, "Glasgow City"),
    "bristol": (51.4545, -2.5879, "Bristol"),
    "leeds": (53.8008, -1.5491, "West Yorkshire"),
    "liverpool": (53.4084, -2.9916, "Merseyside"),
    "cardiff": (51.4816, -3.1791, "Cardiff"),
    "belfast": (54.5973, -5.9301, "Belfast"),
    "cambridge": (52.2053, 0.1218, "Cambridgeshire"),
    "oxford": (51.7520, -1.2577, "Oxfordshire"),
}


def address_json(city: str, country: str, postcode: str | None) -> dict[str, Any]:
    city_title = " ".join(w.capitalize() for w in city.split())
    lat, lng, region = _CITY_CENTRES.get(city.strip().lower(), (None, None, ""))
    place = " ".join(p for p in (city_title, postcode or "") if p)
    return {
        "short_formatted": place,
        "formatted": ", ".join(p for p in (place, country) if p),
        "address": "",
        "city": city_title,
        "region": region,
        "country": country,
        "postcode": postcode or "",
        "latitude": lat,
        "longitude": lng,
        "zoom_level": 12 if lat is not None else 0,
        "approximate": True,
    }


@dataclass(frozen=True, slots=True)
class MerchantProfile:
    """What the directory derives from one network merchant record."""

    id: str
    group_id: str
    name: str
    category: str
    emoji: str
    logo: str
    online: bool
    atm: bool
    mcc: str
    address: dict[str, Any]


def profile(
    network_id: str, raw_name: str, mcc: str, city: str, country: str, postcode: str | None, logo_base: str
) -> MerchantProfile:
    name = clean_name(raw_name, city, country)
    online = bool(_WEB_SUFFIX.search(raw_name.strip())) or city.strip().lower() in ("internet", "online", "")
    return MerchantProfile(
        id=stable_id("merch", network_id, raw_name.upper(), city.upper(), (postcode or "").upper()),
        group_id=stable_id("grp", name.lower()),
        name=name,
        category=category_for_mcc(mcc),
        emoji=emoji_for(name, mcc),
        logo=f"{logo_base.rstrip('/')}/{slug(name)}.png",
        online=online,
        atm=mcc in ATM_MCCS,
        mcc=mcc,
        address=address_json(city, country, postcode),
    )
