"""A small reader of the Prometheus text format, for the figures the ops page shows. Pure.

Only the families asked for are parsed (a line filter first), so scraping a busy service's
/metrics every few seconds stays cheap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, key: str) -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return ""


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse(text: str, families: Iterable[str]) -> list[Sample]:
    """Samples of the named families (a family `x` also yields `x_total`, `x_bucket`, `x_sum`, `x_count`)."""
    wanted = tuple(families)
    out: list[Sample] = []
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(wanted):
            continue
        brace = line.find("{")
        if brace >= 0:
            end = line.rfind("}")
            name = line[:brace]
            labels = tuple((k, _unescape(v)) for k, v in _LABEL.findall(line[brace + 1 : end]))
            rest = line[end + 1 :].split()
        else:
            name, *rest = line.split()
            labels = ()
        if name.endswith("_created") or not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        out.append(Sample(name, labels, value))
    return out


def total(samples: Iterable[Sample], name: str, **match: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.label(k) == v for k, v in match.items()))


def by_label(samples: Iterable[Sample], name: str, key: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        if s.name == name and all(s.label(k) == v for k, v in match.items()):
            out[s.label(key)] = out.get(s.label(key), 0.0) + s.value
    return out


def buckets(samples: Iterable[Sample], name: str, **match: str) -> dict[float, float]:
    """Cumulative histogram buckets `le -> count` of `<name>_bucket` samples matching the labels."""
    out: dict[float, float] = {}
    for s in samples:
        if s.name == name + "_bucket" and all(s.label(k) == v for k, v in match.items()):
            le = math.inf if s.label("le") == "+Inf" else float(s.label("le"))
            out[le] = out.get(le, 0.0) + s.value
    return out


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket)."""
    bounds = sorted(cumulative)
    if not bounds:
        return None
    count = cumulative[bounds[-1]]
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le in bounds:
        c = cumulative[le]
        if c >= rank:
            if math.isinf(le):
                return lower
            inside = c - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, c
    return lower


def delta(new: Mapping[float, float], old: Mapping[float, float]) -> dict[float, float]:
    """Bucket counts between two scrapes; a reset (a restarted process) counts from zero."""
    if any(new.get(k, 0.0) < v for k, v in old.items()):
        return dict(new)
    return {k: v - old.get(k, 0.0) for k, v in new.items()}
