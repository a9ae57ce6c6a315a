"""update@: an SSC corrects their own name and phone, confirmed by token (issue 6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_env import ATTACKER, form, request
from test_workflow import JANE, JOHN, Flow, flow, subscribed

UPDATE = "update@tld-ops.localhost"


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Flow]:
    with flow(tmp_path) as fl:
        subscribed(fl, JANE, JOHN)
        yield fl


def correction(f: Flow, sender: str, ssc: tuple[str, ...]) -> tuple[str, str]:
    raw = request(sender, body=form("update", sscs=(ssc,)), subject="my details")
    return f.env.processed(f.env.send(raw, mail_from=sender, rcpts=(UPDATE,)))


def test_an_ssc_corrects_their_phone_and_name_after_a_token(f: Flow) -> None:
    since = f.d.query("SELECT since FROM roster WHERE email = ?", (JOHN[4],))
    new = ("secondary", "Johnny", "Roe", "2133 9999", JOHN[4], JOHN[4])  # read in Malta
    assert correction(f, JOHN[4], new) == ("done", "update: token sent to the roster address")
    ask = f.mail_to(JOHN[4], "Please confirm the correction")
    confirm = str(ask["Reply-To"])
    assert "Johnny Roe, +35621339999" in ask.get_payload()
    assert f.roster()[1][1:4] == ("John", "Roe", "+35621334456")  # nothing yet
    assert f.answer(confirm, ATTACKER)[0] == "rejected"
    assert f.answer(confirm, JOHN[4]) == ("done", "update: your details for .mt are corrected")
    assert f.roster()[1] == ("secondary", "Johnny", "Roe", "+35621339999", JOHN[4])
    assert f.d.query("SELECT since FROM roster WHERE email = ?", (JOHN[4],)) == since
    assert f.d.query("SELECT by FROM roster_changes ORDER BY id DESC LIMIT 1") == [
        (f"ssc:{JOHN[4]} (token)",)]
    assert f.answer(confirm, JOHN[4])[0] == "rejected"  # once


@pytest.mark.parametrize(("sender", "ssc", "why"), [
    (JOHN[4], ("secondary", "John", "Roe", "+356 2133 4456", "john@elsewhere.example", JOHN[4]),
     "Email and Replaces must both be the address you write from"),
    (JOHN[4], ("primary", "John", "Roe", "+356 2133 4456", JOHN[4], JOHN[4]),
     "your role is secondary: changing it needs your ccTLD's administrative contact"),
    (JOHN[4], ("secondary", "John", "Roe", "+356 2133", JOHN[4], JOHN[4]), "is not a valid number"),
    ("someone@nic.org.mt", ("secondary", "Some", "One", "+356 2133 4456", "someone@nic.org.mt",
                            "someone@nic.org.mt"), "you are not an SSC of .mt"),
])
def test_what_an_ssc_cannot_change_alone_is_refused_and_nothing_changes(
        f: Flow, sender: str, ssc: tuple[str, ...], why: str) -> None:
    before = f.roster()
    status, reason = correction(f, sender, ssc)
    assert status == "rejected" and why in reason
    assert f.roster() == before
    assert f.d.query("SELECT count(*) FROM tokens WHERE purpose = 'self-update'") == [(0,)]
