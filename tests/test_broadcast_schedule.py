"""When the roster is broadcast (issue 6): the calendar as a pure function."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from tldops_mta.broadcast_schedule import (
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
    period = due(now, S, set(), roster_changed_at=at("2026-10-01 00:00"), last_broadcast_at=None)
    assert period is not None and period.key == "monthly-2026-12"
    assert due(now, S, {"monthly-2026-12"}, at("2026-10-01 00:00"), now) is None


def test_an_empty_roster_is_not_broadcast() -> None:
    assert due(at("2026-12-07 10:00"), S, set(), roster_changed_at=None, last_broadcast_at=None) is None


def test_a_missed_period_is_caught_up_once_within_the_window_and_only_the_latest() -> None:
    changed = at("2026-10-01 00:00")
    # Down from Sunday to Tuesday: the Monday broadcast goes out on Tuesday.
    assert due(at("2026-12-08 15:00"), S, set(), changed, at("2026-11-02 09:00")).key == "monthly-2026-12"
    # Down for a fortnight: too late for December's; nothing until the next period.
    assert due(at("2026-12-21 15:00"), S, {"monthly-2026-11"}, changed, at("2026-11-02 09:00")) is None


def test_weekly_only_when_the_roster_changed_since_the_last_broadcast() -> None:
    last = at("2026-11-02 09:00")  # November's monthly
    monday = at("2026-11-09 09:00:10")
    assert due(monday, S, {"monthly-2026-11"}, roster_changed_at=at("2026-11-01 00:00"),
               last_broadcast_at=last) is None
    assert due(monday, S, {"monthly-2026-11"}, roster_changed_at=at("2026-11-05 00:00"),
               last_broadcast_at=last).key == "weekly-2026-W46"
    # A change on the Monday after that day's broadcast waits for the next Monday.
    sent = at("2026-11-09 09:00:05")
    assert due(at("2026-11-09 12:00"), S, {"monthly-2026-11", "weekly-2026-W46"},
               at("2026-11-09 10:00"), sent) is None
    assert due(at("2026-11-09 12:00"), Schedule(weekly_if_changed=False), {"monthly-2026-11"},
               at("2026-11-05 00:00"), last) is None


def test_the_first_monday_is_not_sent_twice_as_monthly_and_weekly() -> None:
    first_monday = at("2026-12-07 09:00:01")
    assert due(first_monday, S, {"monthly-2026-12"}, at("2026-12-01 00:00"), first_monday) is None


@given(st.floats(min_value=at("2020-01-01 00:00"), max_value=at("2040-01-01 00:00")))
def test_periods_bracket_now(now: float) -> None:
    assert latest_monthly(now, S).starts_at <= now < next_monthly(now, S).starts_at
    assert latest_weekly(now, S).starts_at <= now
    assert now < next_check(now, S) <= next_monthly(now, S).starts_at
    assert dt.datetime.fromtimestamp(next_check(now, S), dt.UTC).weekday() == 0
