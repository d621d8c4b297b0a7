"""The spending day: Mondo's "today" starts at 04:00 Europe/London (GMT or BST) and runs to 04:00.

The one definition that accounts (payments' daily limit, card spend), cards (a card's daily limit)
and transactions (the feed's spend per day) share. Pure: the standard library only.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")
SPEND_DAY_STARTS = time(4, 0)


def spend_day_start(now: datetime) -> datetime:
    """The start of the current spending day, in UTC: the latest 04:00 Europe/London at or before `now`."""
    local = now.astimezone(LONDON)
    start = datetime.combine(local.date(), SPEND_DAY_STARTS, tzinfo=LONDON)
    if local < start:
        start = datetime.combine(local.date() - timedelta(days=1), SPEND_DAY_STARTS, tzinfo=LONDON)
    return start.astimezone(UTC)


def spend_day(moment: datetime) -> date:
    """The spending day a moment falls in, as the London date on which that day started."""
    local = moment.astimezone(LONDON)
    return local.date() if local.time() >= SPEND_DAY_STARTS else local.date() - timedelta(days=1)
