"""The spending day, defined once in shared/spend_day.py: 04:00 Europe/London to 04:00, GMT or BST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.accounts import ledger
from services.cards import decision
from services.transactions import feed
from shared.spend_day import spend_day, spend_day_start


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "start", "day"),
    [
        (
            utc(2026, 11, 26, 8, 15),
            utc(2026, 11, 26, 4),
            date(2026, 11, 26),
        ),
        (
            utc(2026, 11, 26, 3, 59),
            utc(2026, 11, 25, 4),
            date(2026, 11, 25),
        ),
        (
            utc(2026, 7, 1, 3, 0),
            utc(2026, 7, 1, 3),
            date(2026, 7, 1),
        ),  # BST
        (utc(2026, 7, 1, 2, 59), utc(2026, 6, 30, 3), date(2026, 6, 30)),
        (utc(2026, 3, 29, 3, 30), utc(2026, 3, 29, 3), date(2026, 3, 29)),
        (
            utc(2026, 10, 25, 3, 30),
            utc(2026, 10, 24, 3),
            date(2026, 10, 24),
        ),
    ],
)
def test_the_day_starts_at_four_in_london(moment: datetime, start: datetime, day: date) -> None:
    assert spend_day_start(moment) == start
    assert spend_day(moment) == day


def test_the_start_and_the_day_agree_every_quarter_hour_of_a_year() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    while moment.year == 2026:
        assert spend_day(spend_day_start(moment)) == spend_day(moment)
        assert spend_day_start(moment) <= moment < spend_day_start(moment) + timedelta(hours=25)
        moment += timedelta(minutes=15)


def test_the_three_services_use_the_one_definition() -> None:
    assert ledger.spend_day_start is decision.spend_day_start is spend_day_start
    assert feed.spend_day is spend_day
