"""Spend today: the local day starts at 04:00 Europe/London, in GMT and in British Summer Time."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.transactions.feed import spend_day
from tests.transactions.conftest import Feed
from tests.transactions.events import Authorisation, account_created, refund

ACC, USER = "acc_spend", "user_spend"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        # Winter (GMT = UTC): the day turns at 04:00 UTC.
        (utc(2026, 1, 15, 3, 59, 59), date(2026, 1, 14)),
        (utc(2026, 1, 15, 4, 0), date(2026, 1, 15)),
        # Summer (BST = UTC+1): the day turns at 03:00 UTC.
        (utc(2026, 7, 1, 2, 59, 59), date(2026, 6, 30)),
        (utc(2026, 7, 1, 3, 0), date(2026, 7, 1)),
        # BST starts 29 March 2026 at 01:00 UTC (01:00 GMT -> 02:00 BST), before that day's 04:00.
        (utc(2026, 3, 29, 0, 59), date(2026, 3, 28)),
        (utc(2026, 3, 29, 2, 59, 59), date(2026, 3, 28)),  # 03:59:59 BST
        (utc(2026, 3, 29, 3, 0), date(2026, 3, 29)),  # 04:00 BST
        (utc(2026, 3, 28, 3, 59), date(2026, 3, 27)),  # the day before: still GMT
        (utc(2026, 3, 28, 4, 0), date(2026, 3, 28)),
        # BST ends 25 October 2026 at 01:00 UTC (02:00 BST -> 01:00 GMT): 04:00 GMT is 04:00 UTC.
        (utc(2026, 10, 24, 2, 59), date(2026, 10, 23)),
        (utc(2026, 10, 24, 3, 0), date(2026, 10, 24)),  # 04:00 BST on the Saturday
        (utc(2026, 10, 25, 0, 30), date(2026, 10, 24)),  # 01:30 BST, the first time
        (utc(2026, 10, 25, 1, 30), date(2026, 10, 24)),  # 01:30 GMT, the second time
        (utc(2026, 10, 25, 3, 59), date(2026, 10, 24)),
        (utc(2026, 10, 25, 4, 0), date(2026, 10, 25)),
    ],
)
def test_the_spending_day_starts_at_four_in_the_morning_london_time(moment: datetime, day: date) -> None:
    assert spend_day(moment) == day


async def spend_reported(feed: Feed) -> list[int]:
    return [e["data"]["spend_today"]["amount"] for e in await feed.published()]


async def test_spend_today_restarts_at_four_across_the_clock_change(feed: Feed) -> None:
    coffee = Authorisation(ACC, 350)
    taxi = Authorisation(ACC, 2_000)
    breakfast = Authorisation(ACC, 1_200)
    declined = Authorisation(ACC, 99_999)
    await feed.apply(
        account_created(ACC, USER),
        coffee.approved(utc(2026, 3, 29, 0, 45)),  # 00:45 GMT: Saturday's spending day
        taxi.approved(utc(2026, 3, 29, 2, 50)),  # 03:50 BST: still Saturday's
        declined.declined(utc(2026, 3, 29, 2, 55)),  # declines never count
        breakfast.approved(utc(2026, 3, 29, 3, 5)),  # 04:05 BST: Sunday's first
    )
    assert await spend_reported(feed) == [350, 2_350, 2_350, 1_200]
    await feed.apply(taxi.reversed(0, utc(2026, 3, 29, 3, 30)))  # Saturday's figure drops back
    assert (await spend_reported(feed))[-1] == 350
    rows = await feed.rows("SELECT day, amount FROM transactions.spend_days WHERE amount <> 0 ORDER BY day")
    assert [(r["day"], r["amount"]) for r in rows] == [(date(2026, 3, 28), 350), (date(2026, 3, 29), 1_200)]


async def test_refunds_reduce_spend_today_and_it_never_goes_below_zero(feed: Feed) -> None:
    lunch = Authorisation(ACC, 800)
    await feed.apply(account_created(ACC, USER), lunch.approved(utc(2026, 1, 15, 12)))
    await feed.apply(refund(ACC, 300, "P-R1", utc(2026, 1, 15, 13)))
    await feed.apply(refund(ACC, 5_000, "P-R2", utc(2026, 1, 16, 13)))  # the next day: nothing spent yet
    assert await spend_reported(feed) == [800, 500, 0]
