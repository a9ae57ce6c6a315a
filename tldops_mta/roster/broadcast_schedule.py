"""When the roster is broadcast: periods of a calendar, and which one is due. Pure.

Monthly on the first given weekday of the month (default Monday) at the given hour (UTC),
and weekly on that weekday at that hour if the roster changed after the last broadcast and
before that moment. A period is named by a key ("monthly-2026-12", "weekly-2026-W49") that
the broadcast claims once in SQLite, so each is sent exactly once. Whether a period is due
is judged as at its start, never at ``now``: a change on a Tuesday waits for the next
Monday. A running daemon sends a period at its start; one that was down then sends it when
it comes back, once, if that is within ``catch_up`` seconds of its start; older ones are
skipped (the next period comes anyway), and only the latest is ever caught up. When the
monthly and the weekly fall on the same moment, the monthly goes and the weekly has nothing
left to send.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container
from dataclasses import dataclass

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Schedule:
    weekday: int = 0  # Monday
    hour: int = 9
    weekly_if_changed: bool = True
    catch_up: float = 3 * 86400.0


@dataclass(frozen=True)
class Period:
    key: str
    kind: str  # "monthly" or "weekly"
    starts_at: float


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _monthly(year: int, month: int, s: Schedule) -> Period:
    first = dt.datetime(year, month, 1, s.hour, tzinfo=dt.UTC)
    day = first + dt.timedelta(days=(s.weekday - first.weekday()) % 7)
    return Period(f"monthly-{year:04d}-{month:02d}", "monthly", day.timestamp())


def _weekly(monday: dt.date, s: Schedule) -> Period:
    day = dt.datetime.combine(monday + dt.timedelta(days=s.weekday), dt.time(s.hour), dt.UTC)
    year, week, _ = monday.isocalendar()
    return Period(f"weekly-{year:04d}-W{week:02d}", "weekly", day.timestamp())


def latest_monthly(now: float, s: Schedule) -> Period:
    """The last monthly period that has begun by ``now``."""
    t = _utc(now)
    p = _monthly(t.year, t.month, s)
    if p.starts_at <= now:
        return p
    year, month = (t.year, t.month - 1) if t.month > 1 else (t.year - 1, 12)
    return _monthly(year, month, s)


def next_monthly(now: float, s: Schedule) -> Period:
    t = _utc(now)
    p = _monthly(t.year, t.month, s)
    if p.starts_at > now:
        return p
    year, month = (t.year, t.month + 1) if t.month < 12 else (t.year + 1, 1)
    return _monthly(year, month, s)


def latest_weekly(now: float, s: Schedule) -> Period:
    monday = _utc(now).date() - dt.timedelta(days=_utc(now).weekday())
    p = _weekly(monday, s)
    return p if p.starts_at <= now else _weekly(monday - dt.timedelta(days=7), s)


def next_weekly(now: float, s: Schedule) -> Period:
    p = latest_weekly(now, s)
    return _weekly(_utc(p.starts_at).date() - dt.timedelta(days=s.weekday) + dt.timedelta(days=7), s)


def due(now: float, s: Schedule, claimed: Container[str], roster_since: float | None,
        changed_since_broadcast: float | None) -> Period | None:
    """The period to broadcast now, if any: the latest one that was due at its start and is
    neither claimed nor older than ``catch_up``. ``roster_since``: when the longest-standing
    entry of the roster joined (None: the roster is empty, nobody to send to);
    ``changed_since_broadcast``: the first roster change after the last broadcast (None:
    none since, or no broadcast and no change ever)."""
    if roster_since is None:
        return None
    monthly = latest_monthly(now, s)
    if monthly.key not in claimed and now - monthly.starts_at <= s.catch_up \
            and roster_since < monthly.starts_at:
        return monthly
    if not s.weekly_if_changed:
        return None
    weekly = latest_weekly(now, s)
    if weekly.key not in claimed and now - weekly.starts_at <= s.catch_up \
            and changed_since_broadcast is not None and changed_since_broadcast < weekly.starts_at:
        return weekly
    return None


def next_check(now: float, s: Schedule) -> float:
    """When a period may next fall due (a broadcast is due only at a period's start)."""
    times = [next_monthly(now, s).starts_at]
    if s.weekly_if_changed:
        times.append(next_weekly(now, s).starts_at)
    return min(times)
