"""Each desk's writes commit with the message's outcome, or not at all.

The fault (tests/outcome_faults.py): the commit of the next outcome for mail to one service
address fails (a trigger in the daemon's real database refuses its event row, after the
effects ran in the same transaction), the worker records a retry, and the message is
handled again. Whatever the
first attempt wrote must have gone with it: who@ answers once, update@ issues one token,
list@ asks once and distributes once per member, a bounce is counted and reported once.
"""

from __future__ import annotations

from pathlib import Path

from auth_env import form, request
from outcome_faults import fail_outcome_once, faults
from test_bounces import bounce, return_path
from test_broadcast import broadcasting, who_query
from test_list import SENT, SSCS, confirm_address, copies, list_outbox, listing, post, token_mails
from test_self_update import UPDATE
from test_workflow import JANE, JOHN, OTHER_VALIDATOR, VALIDATOR, Flow, flow, subscribed


def outbox(f: Flow, purpose: str) -> list[str]:
    """The recipients of the outgoing mail queued for ``purpose``."""
    return [str(r[2]) for r in f.env.outbox_rows(purpose)]


def tokens(f: Flow, purpose: str) -> list[str]:
    return [str(r[0]) for r in f.d.query("SELECT address FROM tokens WHERE purpose = ?", (purpose,))]


def test_who_with_dkim_sends_the_roster_once_when_the_first_commit_fails(tmp_path: Path) -> None:
    with broadcasting(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        fail_outcome_once(f.d.db_path, "%who@%")
        assert who_query(f, JANE[4], sign=True) == ("done", "who: roster sent (DKIM)")
        assert faults(f.d) == 1
        assert outbox(f, "who") == [JANE[4]]


def test_who_without_dkim_sends_one_token_and_says_so_when_the_first_commit_fails(tmp_path: Path) -> None:
    with broadcasting(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        fail_outcome_once(f.d.db_path, "%who@%")
        assert who_query(f, JANE[4], sign=False) == ("done", "who: token sent to the roster address")
        assert faults(f.d) == 1
        assert tokens(f, "who") == [JANE[4]] and outbox(f, "who-token") == [JANE[4]]


def test_update_issues_one_token_when_the_first_commit_fails(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        fail_outcome_once(f.d.db_path, "%update@%")
        new = ("secondary", "Johnny", "Roe", "2133 9999", JOHN[4], JOHN[4])
        raw = request(JOHN[4], body=form("update", sscs=(new,)), subject="my details")
        assert f.env.processed(f.env.send(raw, mail_from=JOHN[4], rcpts=(UPDATE,))) == (
            "done", "update: token sent to the roster address")
        assert faults(f.d) == 1
        assert tokens(f, "self-update") == [JOHN[4]] and outbox(f, "self-update") == [JOHN[4]]


def test_list_asks_once_and_distributes_once_per_member_when_first_commits_fail(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        fail_outcome_once(f.d.db_path, "%list@%")
        assert post(f, JOHN[4], "Unsigned words", sign=False)[:2] == ("done", SENT)
        assert faults(f.d) == 1 and token_mails(f) == [JOHN[4]]
        confirm = confirm_address(f, JOHN[4], "Unsigned words")
        assert f.answer(confirm, JOHN[4]) == ("done", "list: the post is distributed")
        copies(f, "Unsigned words")  # the confirmed post, taken up again, went out
        # A signed post whose first commit fails goes out once too.
        fail_outcome_once(f.d.db_path, "%list@%")
        post(f, JANE[4], "Signed words")
        copies(f, "Signed words")
        assert faults(f.d) == 2
        assert list_outbox(f) == 2
        assert sorted(outbox(f, "list")) == sorted([s[4] for s in SSCS] * 2)


def test_a_bounce_is_counted_and_reported_once_when_the_first_commit_fails(tmp_path: Path) -> None:
    with broadcasting(tmp_path, **{"bounces.threshold": 1}) as f:
        subscribed(f, JANE, JOHN)
        assert f.tldops("broadcast", "now").returncode == 0
        first = return_path(f, JANE[4], 1)
        fail_outcome_once(f.d.db_path, "%bounces+%")
        assert bounce(f, first, JANE[4]) == ("done", "bounce for 1 address(es); 1 reported to the Validators")
        assert faults(f.d) == 1
        assert f.d.query("SELECT address, permanent FROM bounces") == [(JANE[4], 1)]
        assert sorted(outbox(f, "bouncing")) == sorted([VALIDATOR, OTHER_VALIDATOR])
