"""docs/decisions/README.md lists every decision record, each with its status."""

from __future__ import annotations

import re
from pathlib import Path

DECISIONS = Path(__file__).resolve().parents[2] / "docs" / "decisions"


def test_every_record_is_in_the_index_with_a_status() -> None:
    index = (DECISIONS / "README.md").read_text()
    rows = dict(re.findall(r"^\| \[\d{4}\]\((\d{4}-[^)]+\.md)\) \|[^|]+\| (.+) \|$", index, re.M))
    records = sorted(p.name for p in DECISIONS.glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert sorted(rows) == records, "docs/decisions/README.md must list every record, and only those"
    for record, status in rows.items():
        assert re.search(r"in force|superseded by \d{4}", status), f"{record}: no status ({status!r})"
