"""One commit per message: confirm+TOKEN@ and decide+TOKEN@ mail whose outcome fails to commit.

Everything such a message changes (the token used, the request moved, the mails it causes)
commits with its spool row or not at all. Each test arms a storage fault on the commit of
the message's outcome (outcome_faults); the worker retries it, and afterwards the message
counted once, was answered once, and its row says what happened, never a refusal.
"""

from __future__ import annotations

import time
from pathlib import Path

from auth_env import ADMIN, form, request
from outcome_faults import fail_outcome_once, failed_once
from test_workflow import VALIDATOR, Flow, flow

from tldops_mta.store import storage, tokens


def outbox(f: Flow) -> list[tuple[str, str]]:
    """(purpose, recipient) of every mail queued so far."""
    return [(p, r) for p, _, r in f.env.outbox_rows()]


def twice(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted({r for r in rows if rows.count(r) > 1})


def test_a_confirmation_whose_commit_fails_is_applied_and_answered_once(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        raw = request("deputy@nic.org.mt", headers=[f"Cc: {ADMIN}"], body=form())
        assert f.env.processed(f.env.send(f.env.signed(raw), mail_from="deputy@nic.org.mt"))[0] == "done"
        confirm = str(f.mail_to(ADMIN, "Please confirm")["Reply-To"])
        before = outbox(f)

        fault = fail_outcome_once(f.d.db_path, "confirm+%")
        qid = f.env.send(request(ADMIN, body="Yes.\r\n", subject="Re: confirm"), rcpts=(confirm,))
        assert f.env.processed(qid) == ("done", "confirmed request 1")
        failed_once(f.d, qid, fault)
        assert [e[:2] for e in f.events()] == [("submit", "awaiting-confirmation"),
                                              ("confirm", "awaiting-validator")]
        assert f.d.query("SELECT count(*) FROM tokens t JOIN spool s ON s.id = t.used_by"
                         " WHERE t.purpose = 'confirm-request' AND s.queue_id = ?", (qid,)) == [(1,)]
        sent = outbox(f)[len(before):]
        assert twice(sent) == [] and not [p for p, _ in sent if p == "refusal"], sent
        assert ("received", ADMIN) in sent and ("validator", VALIDATOR) in sent
        f.mail_to(VALIDATOR, "Request #1")


def test_a_decision_whose_commit_fails_counts_once_with_one_set_of_mails(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        assert f.submit(form())[0] == "done"
        address = f.decide_address()
        before = outbox(f)

        # One that does not count (no DKIM): the Validator is told once.
        fault = fail_outcome_once(f.d.db_path, "decide+%")
        qid = f.env.send(f.decision(address, "approve", sign=False), mail_from=VALIDATOR, rcpts=(address,))
        status, reason = f.env.processed(qid)
        assert status == "rejected" and "no valid DKIM signature" in reason
        failed_once(f.d, qid, fault)
        assert outbox(f)[len(before):] == [("decision", VALIDATOR)]

        # One that counts: applied once, the row says so, each of its mails once.
        before = outbox(f)
        fault = fail_outcome_once(f.d.db_path, "decide+%")
        qid = f.env.send(f.decision(address, "approve"), mail_from=VALIDATOR, rcpts=(address,))
        assert f.env.processed(qid) == ("done", "request #1 approved")
        failed_once(f.d, qid, fault)
        assert [e[0] for e in f.events()] == ["submit", "approve"]
        assert len(f.roster()) == 2
        sent = outbox(f)[len(before):]
        assert twice(sent) == [] and ("decision", VALIDATOR) in sent, sent
        f.mail_to("jane.doe@nic.org.mt", "Welcome")


def test_an_unsigned_decision_and_its_confirmation_each_commit_once(tmp_path: Path) -> None:
    with flow(tmp_path, **{"validation.decision_auth": "dkim-or-confirmation"}) as f:
        assert f.submit(form())[0] == "done"
        address = f.decide_address()
        before = outbox(f)

        fault = fail_outcome_once(f.d.db_path, "decide+%")
        qid = f.env.send(f.decision(address, "approve", sign=False), mail_from=VALIDATOR, rcpts=(address,))
        assert f.env.processed(qid) == ("done", "decision without DKIM: confirmation asked")
        failed_once(f.d, qid, fault)
        assert outbox(f)[len(before):] == [("decision_confirmation", VALIDATOR)]
        assert f.d.query("SELECT count(*) FROM tokens WHERE purpose = 'confirm-decision'") == [(1,)]

        confirm = str(f.mail_to(VALIDATOR, "Please confirm your decision")["Reply-To"])
        before = outbox(f)
        fault = fail_outcome_once(f.d.db_path, "confirm+%")
        raw = request(VALIDATOR, body="yes\r\n", subject="Re: TLD-OPS")
        cid = f.env.send(raw, mail_from=VALIDATOR, rcpts=(confirm,))
        assert f.env.processed(cid) == ("done", "decision confirmed: request #1 approved")
        failed_once(f.d, cid, fault)
        assert f.events()[1:] == [("approve", "approved", "validator", "token")]
        sent = outbox(f)[len(before):]
        assert twice(sent) == [] and ("decision", VALIDATOR) in sent, sent
        assert not [p for p, _ in sent if p == "refusal"], sent


def test_a_token_redeemed_again_by_the_message_that_used_it_is_its_own_use(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "db.sqlite3")
    storage.migrate(conn)
    now = time.time()
    token = tokens.new_token()
    purposes = frozenset({"self-update"})
    tokens.issue(token, "self-update", None, ADMIN, now=now, ttl=60, payload="{}")(conn)
    first = tokens.redeem(token, purposes, ADMIN, now, spool_id=3)(conn)
    assert (first.request_id, first.reason) == (0, "confirmed")
    # Processed again later (past its expiry, even): the same answer, marked as a repeat.
    again = tokens.redeem(token, purposes, ADMIN, now + 120, spool_id=3)(conn)
    assert (again.request_id, again.reason, again.purpose, again.payload) == (
        0, "confirmed", "self-update", "{}")
    assert again.again and not first.again  # what it confirms is not carried out twice
    # Any other message finds it used.
    other = tokens.redeem(token, purposes, ADMIN, now, spool_id=4)(conn)
    assert (other.request_id, other.reason) == (None, "token already used")
    assert conn.execute("SELECT used_by FROM tokens").fetchall() == [(3,)]
    conn.close()
