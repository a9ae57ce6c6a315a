"""When the roster is broadcast: the calendar as a pure function, and a daemon's broadcasts
over weeks of it (changes before and after the hour, the daemon down or up, month ends)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldops_mta.roster.broadcast_schedule import (
    Schedule,
    due,
    latest_monthly,
    latest_weekly,
    next_check,
    next_monthly,
)

S = Schedule()


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_monthly_is_the_first_monday_at_nine_utc() -> None:
    assert latest_monthly(at("2026-12-07 09:00"), S).key == "monthly-2026-12"
    assert latest_monthly(at("2026-12-07 08:59"), S).key == "monthly-2026-11"  # began 2 Nov
    assert latest_monthly(at("2026-11-02 09:00"), S).starts_at == at("2026-11-02 09:00")
    assert next_monthly(at("2026-12-31 23:00"), S).starts_at == at("2027-01-04 09:00")
    assert latest_monthly(at("2027-01-01 00:00"), S).key == "monthly-2026-12"


def test_weekly_is_named_by_its_iso_week() -> None:
    assert latest_weekly(at("2026-11-25 12:00"), S).key == "weekly-2026-W48"
    assert latest_weekly(at("2026-11-23 08:00"), S).key == "weekly-2026-W47"  # before 09:00 Monday


def test_a_period_is_due_once_then_claimed() -> None:
    now = at("2026-12-07 09:00:30")
    period = due(now, S, set(), roster_since=at("2026-10-01 00:00"), changed_since_broadcast=None)
    assert period is not None and period.key == "monthly-2026-12"
    assert due(now, S, {"monthly-2026-12"}, at("2026-10-01 00:00"), None) is None


def test_an_empty_roster_is_not_broadcast() -> None:
    assert due(at("2026-12-07 10:00"), S, set(), roster_since=None, changed_since_broadcast=None) is None


def test_a_change_is_judged_at_the_period_start_not_now() -> None:
    # Tuesday 1 December, a change at 10:00 since November's monthly: this week's period
    # began on Monday 30 November before the change, so nothing is due until 7 December.
    assert due(at("2026-12-01 12:00"), S, {"monthly-2026-11"}, at("2026-10-01 00:00"),
               changed_since_broadcast=at("2026-12-01 10:00")) is None


def test_a_missed_period_is_caught_up_once_within_the_window_and_only_the_latest() -> None:
    since = at("2026-10-01 00:00")
    # Down from Sunday to Tuesday: the Monday broadcast goes out on Tuesday.
    assert due(at("2026-12-08 15:00"), S, set(), since, None).key == "monthly-2026-12"
    # Down for a fortnight: too late for December's; nothing until the next period.
    assert due(at("2026-12-21 15:00"), S, {"monthly-2026-11"}, since, None) is None


# -- the calendar: a daemon's broadcasts over weeks, as its worker would look ---------------

MADE = "2026-10-01 00:00"
"""The roster was made then (and broadcast since): each row starts on a first Monday."""


def calendar(changes: Sequence[str], down: Sequence[tuple[str, str]] = (), *, made: str = MADE,
             start: str = "2026-11-02 08:00", end: str = "2026-12-10 00:00",
             s: Schedule = S) -> list[tuple[str, str]]:
    """(period, when it was claimed) for each broadcast between ``start`` and ``end``. The
    daemon looks when it starts, when a roster change wakes it, and at each ``next_check``,
    except while it is ``down`` (from, until); the roster changes at ``made`` and ``changes``."""
    changed = sorted(at(c) for c in (made, *changes))
    outages = [(at(a), at(b)) for a, b in down]
    claimed: set[str] = set()
    last: float | None = None
    sent: list[tuple[str, str]] = []
    t = at(start)
    while t <= at(end):
        if not any(a <= t < b for a, b in outages):
            while True:
                since = changed[0] if changed[0] <= t else None
                after = [c for c in changed if c <= t and (last is None or c > last)]
                period = due(t, s, claimed, since, after[0] if after else None)
                if period is None:
                    break
                claimed.add(period.key)
                last = t
                sent.append((period.key, f"{dt.datetime.fromtimestamp(t, dt.UTC):%Y-%m-%d %H:%M}"))
        t = min([next_check(t, s), *(c for c in changed if c > t), *(b for _, b in outages if b > t)])
    return sent


NOV = ("monthly-2026-11", "2026-11-02 09:00")
DEC = ("monthly-2026-12", "2026-12-07 09:00")
CALENDAR = [
    ("no change: the monthly only", [], [], [NOV, DEC]),
    ("change on a Tuesday, daemon up: the next Monday at the hour, not at once",
     ["2026-11-10 14:00"], [], [NOV, ("weekly-2026-W47", "2026-11-16 09:00"), DEC]),
    ("change on a Monday before the hour: that Monday",
     ["2026-11-09 08:59"], [], [NOV, ("weekly-2026-W46", "2026-11-09 09:00"), DEC]),
    ("change on a Monday after the hour: the Monday after",
     ["2026-11-09 09:01"], [], [NOV, ("weekly-2026-W47", "2026-11-16 09:00"), DEC]),
    ("change on the first Monday after the monthly: the Monday after",
     ["2026-11-02 10:00"], [], [NOV, ("weekly-2026-W46", "2026-11-09 09:00"), DEC]),
    ("two changes in one week: one broadcast",
     ["2026-11-10 14:00", "2026-11-12 08:00"], [], [NOV, ("weekly-2026-W47", "2026-11-16 09:00"), DEC]),
    ("daemon down at the hour, back within catch_up: sent on its return",
     ["2026-11-10 14:00"], [("2026-11-15 00:00", "2026-11-17 12:30")],
     [NOV, ("weekly-2026-W47", "2026-11-17 12:30"), DEC]),
    ("daemon down at the hour, back after catch_up: the Monday after",
     ["2026-11-10 14:00"], [("2026-11-15 00:00", "2026-11-20 12:00")],
     [NOV, ("weekly-2026-W48", "2026-11-23 09:00"), DEC]),
    ("changed while the daemon was down mid-week, back before Monday: no catch-up, Monday",
     ["2026-11-11 10:00"], [("2026-11-10 00:00", "2026-11-12 12:00")],
     [NOV, ("weekly-2026-W47", "2026-11-16 09:00"), DEC]),
    ("changed while the daemon was down over the hour: sent on its return",
     ["2026-11-14 10:00"], [("2026-11-13 00:00", "2026-11-17 10:00")],
     [NOV, ("weekly-2026-W47", "2026-11-17 10:00"), DEC]),
    ("month boundary: a change in the week of 30 November goes on that Monday, then December's",
     ["2026-11-26 12:00"], [], [NOV, ("weekly-2026-W49", "2026-11-30 09:00"), DEC]),
    ("monthly and weekly on the same Monday: the monthly, one mail",
     ["2026-12-02 12:00"], [], [NOV, DEC]),
    ("monthly and weekly on the same Monday, daemon down then: the monthly on its return, one mail",
     ["2026-12-02 12:00"], [("2026-12-06 00:00", "2026-12-08 10:00")],
     [NOV, ("monthly-2026-12", "2026-12-08 10:00")]),
]


@pytest.mark.parametrize(("name", "changes", "down", "sent"), CALENDAR, ids=[c[0] for c in CALENDAR])
def test_calendar(name: str, changes: list[str], down: list[tuple[str, str]],
                  sent: list[tuple[str, str]]) -> None:
    assert calendar(changes, down) == sent


def test_a_roster_made_mid_week_waits_for_the_next_monday() -> None:
    # Nobody to send to at November's monthly; the first subscription on a Wednesday is
    # neither a missed monthly nor a reason to send at once.
    assert calendar([], made="2026-11-04 12:00") == [("weekly-2026-W46", "2026-11-09 09:00"), DEC]


def test_the_year_end_and_a_month_that_begins_on_a_monday() -> None:
    # 28 December is in ISO week 2026-W53, before the change; 4 January 2027 is the first
    # Monday of January and 1 February 2027 the first of February: monthly both times, once.
    assert calendar(["2026-12-29 12:00", "2027-01-31 12:00"], start="2026-12-07 08:00",
                    end="2027-02-10 00:00") == [
        DEC, ("monthly-2027-01", "2027-01-04 09:00"), ("monthly-2027-02", "2027-02-01 09:00")]


def test_without_weekly_broadcasts_a_change_waits_for_the_monthly() -> None:
    assert calendar(["2026-11-10 14:00"], s=Schedule(weekly_if_changed=False)) == [NOV, DEC]


@given(st.floats(min_value=at("2020-01-01 00:00"), max_value=at("2040-01-01 00:00")))
def test_periods_bracket_now(now: float) -> None:
    assert latest_monthly(now, S).starts_at <= now < next_monthly(now, S).starts_at
    assert latest_weekly(now, S).starts_at <= now
    assert now < next_check(now, S) <= next_monthly(now, S).starts_at
    assert dt.datetime.fromtimestamp(next_check(now, S), dt.UTC).weekday() == 0
