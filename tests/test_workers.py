"""Several worker processes (worker.processes): two copies of a message, or two answers to one
request, processed at the same moment by two processes still have their effect once.

What makes two processes busy at once is the loopback DNS server: it holds the answers for a
DKIM key until both processes have asked for it (``DnsServer.gather``), so each of the two
messages is in a different process's hands, between its claim and its commit, at the same
time. With worker.batch_size 1 a process holds one message at a time, so two lookups in
flight are two processes. Every guard that settles these races runs inside the outcome's
transaction (a UNIQUE Message-ID, a token's use, the request's state read at commit).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_env import ADMIN, ADMIN_DOMAIN, SELECTOR, form, request
from dkim_sign import dns_name
from test_auth_confirm import confirm_address
from test_workflow import JANE, JOHN, OTHER_VALIDATOR, VALIDATOR, Flow, flow

TWO = {"worker.processes": 2, "worker.batch_size": 1, "worker.max_idle": 0, "dns.timeout": 20.0}
"""Two worker processes, one message each at a time, both running from the start; DNS answers
held until both asked may take a while on a busy machine."""


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Flow]:
    with flow(tmp_path, **TWO) as fl:
        fl.d.worker_ready(slot=0)
        fl.d.worker_ready(slot=1)
        yield fl


def _slots_that_processed(f: Flow, queue_ids: list[str]) -> set[int]:
    """The worker slots that had these messages in hand (an attempt whose commit failed
    is logged as a retry, its next one as processed)."""
    return {r["slot"] for event in ("message processed", "outcome not recorded, will retry")
            for r in f.d.events(event) if r.get("queue_id") in queue_ids}


def _mails_to(f: Flow, rcpt: str) -> int:
    """Outgoing mails queued to ``rcpt`` (committed with the outcomes that made them)."""
    return sum(1 for row in f.env.outbox_rows() if row[2] == rcpt)


def _form() -> str:
    return form(sscs=(JANE, JOHN))


def test_the_same_signed_request_twice_at_once_is_verified_once(f: Flow) -> None:
    raw = f.env.signed(request(ADMIN, body=_form()))
    f.env.dns.gather(dns_name(SELECTOR, ADMIN_DOMAIN), 2)  # both copies in hand at once
    first, second = f.env.send(raw), f.env.send(raw)
    outcomes = {f.env.processed(first), f.env.processed(second)}
    assert _slots_that_processed(f, [first, second]) == {0, 1}
    # One copy is the verified request; the other, a replay of its Message-ID, waits for
    # the administrative contact's confirmation (as when they come one after the other).
    assert outcomes == {("done", ".mt: verified"),
                        ("done", ".mt: confirmation asked of the IANA administrative contact")}
    made = sorted(f.env.requests_for(first) + f.env.requests_for(second))
    assert made == [("mt", "dkim", "awaiting-validator", ADMIN),
                    ("mt", "token", "awaiting-confirmation", ADMIN)]
    assert f.d.query("SELECT count(*) FROM seen_messages") == [(1,)]
    assert _mails_to(f, VALIDATOR) == 1  # the Validators asked once
    f.mail_to(VALIDATOR, "Request #")  # sent by slot 0's outbox, whichever slot queued it


def test_the_same_confirmation_twice_at_once_confirms_once(f: Flow) -> None:
    # The admin only in Cc: they are asked to confirm, with a token.
    qid = f.env.send(f.env.signed(request("ssc@nic.org.mt", headers=[f"Cc: {ADMIN}"], body=_form())),
                     mail_from="ssc@nic.org.mt")
    assert f.env.processed(qid)[0] == "done"
    to = confirm_address(f.mail_to(ADMIN, "onfirm"))
    answer = request(ADMIN, body="Yes, confirmed.\r\n", subject="Re: confirm")
    # Both copies wait until both processes go at them together.
    assert len(f.d.worker_pids()) == 2
    pids = f.d.pause_workers()
    try:
        copies = [f.env.send(answer, rcpts=(to,)) for _ in range(2)]
    finally:
        f.d.resume_workers(pids)
    outcomes = sorted(f.env.processed(q) for q in copies)
    assert outcomes[0] == ("done", "confirmed request 1"), outcomes
    assert outcomes[1][0] == "rejected" and "token already used" in outcomes[1][1], outcomes
    assert [e[0] for e in f.events()] == ["submit", "confirm"]
    assert f.state() == "awaiting-validator"
    assert _mails_to(f, VALIDATOR) == 1  # the Validators asked once


def test_two_decisions_at_once_make_one(f: Flow) -> None:
    assert f.submit(_form()) == ("done", ".mt: verified")
    approve = f.decision(f.decide_address(VALIDATOR), "approve")
    deny = f.decision(f.decide_address(OTHER_VALIDATOR), "deny not known to us", sender=OTHER_VALIDATOR)
    f.env.dns.gather(dns_name(SELECTOR, "validators.example"), 2)
    first = f.env.send(approve, mail_from=VALIDATOR, rcpts=(f.decide_address(VALIDATOR),))
    second = f.env.send(deny, mail_from=OTHER_VALIDATOR, rcpts=(f.decide_address(OTHER_VALIDATOR),))
    outcomes = [f.env.processed(first), f.env.processed(second)]
    assert _slots_that_processed(f, [first, second]) == {0, 1}
    # Whichever committed first decided; the other was refused by the state it found then.
    won = [o for o in outcomes if o[0] == "done"]
    lost = [o for o in outcomes if o[0] == "rejected"]
    assert len(won) == 1 and len(lost) == 1, outcomes
    decided = f.state()
    assert won[0][1] == f"request #1 {decided}"
    assert lost[0][1] == f"request #1: the request is already {decided}"
    assert [e[0] for e in f.events()] == ["submit", "approve" if decided == "approved" else "deny"]
    assert len(f.roster()) == (2 if decided == "approved" else 0)
    # Each Validator asked, and told what became of their mail.
    assert (_mails_to(f, VALIDATOR), _mails_to(f, OTHER_VALIDATOR)) == (2, 2)


def test_the_same_decision_mail_twice_at_once_counts_once(f: Flow) -> None:
    assert f.submit(_form()) == ("done", ".mt: verified")
    address = f.decide_address(VALIDATOR)
    approve = f.decision(address, "approve")
    f.env.dns.gather(dns_name(SELECTOR, "validators.example"), 2)
    copies = [f.env.send(approve, mail_from=VALIDATOR, rcpts=(address,)) for _ in range(2)]
    outcomes = sorted(f.env.processed(q) for q in copies)
    assert _slots_that_processed(f, copies) == {0, 1}
    assert outcomes == [("done", "request #1 approved"),
                        ("rejected", "this decision mail was already processed")]
    assert [e[0] for e in f.events()] == ["submit", "approve"]
    assert _mails_to(f, VALIDATOR) == 2  # asked, then told once, of the approval
