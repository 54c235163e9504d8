"""The schedule grammar, shared by the worker (which fires the slots) and the web (which shows the next).

A schedule is 'every <n><s|m|h|d>' (an interval aligned to the epoch, so every worker computes the
same slots) or a cron expression in the configured time zone ('*/15 * * * *', '@daily'; an optional
sixth field holds seconds). This module imports nothing from the services.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

INTERVAL = re.compile(r"^every\s+(\d+)\s*(s|m|h|d)$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Schedule:
    """A cron expression (in the configured time zone) or an interval aligned to the epoch."""

    expression: str
    interval: timedelta | None = None

    def next_after(self, moment: datetime, zone: ZoneInfo) -> datetime:
        """The first slot strictly after moment, in UTC; the same on every worker."""
        if self.interval is not None:
            step = self.interval.total_seconds()
            elapsed = (moment - EPOCH).total_seconds()
            return EPOCH + timedelta(seconds=(elapsed // step + 1) * step)
        return croniter(self.expression, moment.astimezone(zone)).get_next(datetime).astimezone(timezone.utc)


def parse_schedule(expression: str) -> Schedule:
    """'every 10m', '*/15 * * * *', '@daily' (cron may have a sixth, seconds field); raises ValueError."""
    text = expression.strip()
    match = INTERVAL.match(text)
    if match:
        seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2).lower()]
        if seconds < 1:
            raise ValueError(f"interval must be at least 1 s, got {expression!r}")
        return Schedule(text, timedelta(seconds=seconds))
    if not croniter.is_valid(text):
        raise ValueError(f"not a cron expression or 'every <n><s|m|h|d>': {expression!r}")
    return Schedule(text)


def next_slot(expression: str | None, zone: ZoneInfo, now: datetime | None = None) -> datetime | None:
    """When a schedule fires next after now, in UTC; None if unscheduled or unreadable (for display)."""
    if not expression:
        return None
    try:
        return parse_schedule(expression).next_after(now or datetime.now(timezone.utc), zone)
    except (ValueError, KeyError):
        return None
