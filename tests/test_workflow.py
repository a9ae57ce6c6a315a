"""The request workflow end to end (issue 5): form, policy, Validator, roster, mails.

Every test runs the real daemon with the loopback DNS, RDAP and WHOIS servers of the
authentication tests, and a real SMTP sink as smarthost: what the daemon mails is what the
sink received. Validators decide by DKIM-signed mail to decide+TOKEN@ or with the CLI.
"""

from __future__ import annotations

import contextlib
import email
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from email.message import Message
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import log_privacy
import own_dkim
import pytest
from auth_env import ADMIN, ATTACKER, SELECTOR, AuthEnv, auth_daemon, form, now_date, request
from daemon_proc import DOMAIN, SHIPPED_RULES
from dkim_sign import rsa_key
from smtp_sink import Received, SmtpSink

VALIDATOR = "val@validators.example"
OTHER_VALIDATOR = "other@validators.example"
COMMITTEE = "committee@committee.example"
JANE = ("primary", "Jane", "Doe", "+356 2133 4455", "jane.doe@nic.org.mt")
JOHN = ("secondary", "John", "Roe", "+356 2133 4456", "john.roe@nic.org.mt")
MARY = ("third", "Mary", "Poe", "2133 4457", "mary.poe@nic.org.mt")  # read in Malta: +356


class Flow:
    """The daemon, its test servers, the sink its mail goes to, and a Validator's key."""

    def __init__(self, env: AuthEnv, sink: SmtpSink, workdir: Path) -> None:
        self.env = env
        self.d = env.d
        self.sink = sink
        self.workdir = workdir
        self.validator_key = rsa_key(2048, 2)
        env.publish(SELECTOR, "validators.example", self.validator_key)
        self.cli_lines: list[str] = []
        """What every ``tldops`` command printed (its log records are checked too)."""

    # -- sending --------------------------------------------------------------------------

    def submit(self, body: str, **kw: Any) -> tuple[str, str]:
        """A DKIM-signed request from the IANA admin: (status, reason) once processed."""
        qid = self.env.send(self.env.signed(request(ADMIN, body=body, **kw)))
        return self.env.processed(qid)

    def decision(self, decide_address: str, first_line: str, *, sender: str = VALIDATOR,
                 sign: bool = True) -> bytes:
        domain = sender.split("@")[1]
        raw = (f"From: {sender}\r\nTo: {decide_address}\r\nSubject: Re: request\r\n"
               f"Date: {now_date()}\r\nMessage-ID: {make_msgid(domain=domain)}\r\n"
               f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
               f"{first_line}\r\n\r\n> A request waits for your decision.\r\n").encode()
        if sign:
            key = self.validator_key if domain == "validators.example" else self.env.attacker_key
            raw = self.env.signed(raw, domain, key)
        return raw

    def send_decision(self, raw: bytes, decide_address: str, sender: str = VALIDATOR) -> tuple[str, str]:
        qid = self.env.send(raw, mail_from=sender, rcpts=(decide_address,))
        return self.env.processed(qid)

    def decide(self, decide_address: str, first_line: str, *, sender: str = VALIDATOR,
               sign: bool = True) -> tuple[str, str]:
        raw = self.decision(decide_address, first_line, sender=sender, sign=sign)
        return self.send_decision(raw, decide_address, sender)

    def answer(self, address: str, sender: str, text: str = "yes") -> tuple[str, str]:
        """A plain (unsigned) reply from ``sender`` to a one-time ``confirm+TOKEN@`` address."""
        raw = request(sender, body=text + "\r\n", subject="Re: TLD-OPS")
        return self.env.processed(self.env.send(raw, mail_from=sender, rcpts=(address,)))

    def tldops(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config",
                               str(self.d.config_path)], capture_output=True, text=True,
                              timeout=60, cwd=self.workdir)
        self.cli_lines += (done.stdout + done.stderr).splitlines()
        return done

    def personal_data_logged(self) -> list[str]:
        """Log lines at info or above, the daemon's and the CLI's, that name an SSC."""
        lines = log_privacy.shown(self.d.output()) + log_privacy.shown(self.cli_lines, records_only=True)
        return log_privacy.leaks(lines, log_privacy.people((JANE, JOHN, MARY), self.d.db_path))

    # -- looking --------------------------------------------------------------------------

    def mail_to(self, rcpt: str, subject_has: str = "", n: int = 1) -> Message:
        """The ``n``-th mail to ``rcpt`` whose Subject holds ``subject_has``, once it came."""
        def matching() -> list[Received]:
            return [r for r in self.sink.to(rcpt) if subject_has in _subject(r)]

        self.sink.wait_for(lambda _r: len(matching()) >= n)
        return email.message_from_bytes(matching()[n - 1].data)

    def mails_to(self, rcpt: str, subject_has: str = "") -> list[Message]:
        return [email.message_from_bytes(r.data) for r in self.sink.to(rcpt)
                if subject_has in _subject(r)]

    def decide_address(self, rcpt: str = VALIDATOR, subject_has: str = "Request #", n: int = 1) -> str:
        reply_to = str(self.mail_to(rcpt, subject_has, n)["Reply-To"])
        assert re.fullmatch(rf"decide\+[A-Za-z0-9_-]{{22,}}@{re.escape(DOMAIN)}", reply_to), reply_to
        return reply_to

    def roster(self, tld: str = "mt") -> list[tuple[str, ...]]:
        return [tuple(r) for r in self.d.query(
            "SELECT role, first_name, last_name, phone, email FROM roster WHERE tld = ? ORDER BY role",
            (tld,))]

    def state(self, request_id: int = 1) -> str:
        return str(self.d.query("SELECT state FROM requests WHERE id = ?", (request_id,))[0][0])

    def events(self, request_id: int = 1) -> list[tuple[str, str, str, str]]:
        return [tuple(r) for r in self.d.query(  # type: ignore[misc]
            "SELECT event, to_state, actor, auth FROM request_events WHERE request_id = ? ORDER BY id",
            (request_id,))]

    def restart(self) -> None:
        self.d.stop()
        self.d.start()


def _subject(r: Received) -> str:
    return str(email.message_from_bytes(r.data)["Subject"] or "")


def _text(m: Message) -> str:
    payload = m.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


@contextlib.contextmanager
def flow(workdir: Path, rules_edit: tuple[str, str, str] | None = None, **settings: Any) -> Iterator[Flow]:
    """``rules_edit``: (file, old, new), a change to the shipped rules for this daemon."""
    rules_dir = workdir / "rules"
    shutil.copytree(SHIPPED_RULES, rules_dir)
    if rules_edit:
        path = rules_dir / rules_edit[0]
        text = path.read_text("utf-8")
        assert rules_edit[1] in text
        path.write_text(text.replace(rules_edit[1], rules_edit[2]), "utf-8")
    # The daemon's own DKIM key, unless the test brings one (the broadcast's and the list's
    # tests publish what `tldops dkim keygen` printed): every mail it sent is checked at the end.
    own = {} if "dkim.key" in settings or "broadcast.dkim_key" in settings else \
        own_dkim.key_settings(workdir / "keys")
    sink = SmtpSink()
    try:
        with auth_daemon(workdir, **{
                "outbox.smarthost": f"127.0.0.1:{sink.port}", "outbox.smarthost_tls": "none",
                "validation.validators": [VALIDATOR, OTHER_VALIDATOR],
                "validation.committee": COMMITTEE, "worker.retry_base": 0.2, **own, **settings}) as env:
            if own:
                own_dkim.publish(env.dns)
            f = Flow(env, sink, workdir)
            yield f
            # What was sent, and what the outbox holds (signed before it was stored), and the
            # broadcast's post to a Mailman list (which goes by LMTP, not through the outbox).
            stored = env.d.query("SELECT raw FROM outbox_messages WHERE length(raw) > 0"
                                 " UNION ALL SELECT raw FROM mailman_posts WHERE length(raw) > 0")
            own_dkim.assert_signed([*(r.data for r in sink.received), *(bytes(r[0]) for r in stored)],
                                   env.dns)
    finally:
        sink.stop()
    # Whatever the test did, no SSC's address or phone number was logged at level info.
    assert f.personal_data_logged() == []


@pytest.fixture
def f(tmp_path: Path) -> Iterator[Flow]:
    with flow(tmp_path) as fl:
        yield fl


def subscribed(f: Flow, *sscs: tuple[str, ...]) -> None:
    """.mt subscribed with ``sscs`` (approved from the CLI), all its mail delivered."""
    assert f.submit(form(sscs=sscs or (JANE, JOHN)))[0] == "done"
    request_id = f.d.query("SELECT max(id) FROM requests")[0][0]
    assert f.tldops("queue", "approve", str(request_id)).returncode == 0
    for s in sscs or (JANE, JOHN):
        f.mail_to(s[4], "Welcome")


# -- the whole path ---------------------------------------------------------------------------

def test_subscription_from_the_iana_admin_through_validator_approval_to_the_roster(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        assert f.submit(form(sscs=(JANE, JOHN, MARY))) == ("done", ".mt: verified")
        f.restart()
        mail = f.mail_to(VALIDATOR, "Request #1: subscribe .mt")
        text = _text(mail)
        assert f"The request came From {ADMIN}, the administrative contact IANA lists" in text
        assert "DKIM: d=nic.org.mt s=sel rsa-sha256 2048 bits: pass, counts" in text
        assert "+ primary   Jane Doe <jane.doe@nic.org.mt> +35621334455" in text
        assert "+ third     Mary Poe <mary.poe@nic.org.mt> +35621334457" in text  # E.164, read in MT
        assert mail["Auto-Submitted"] == "auto-generated"
        f.mail_to(OTHER_VALIDATOR, "Request #1")  # every Validator is asked, each with a token
        assert f.decide_address(OTHER_VALIDATOR) != f.decide_address(VALIDATOR)
        assert f.roster() == []
        f.restart()

        assert f.decide(f.decide_address(), "Approve") == ("done", "request #1 approved")
        f.restart()
        assert f.roster() == [
            ("primary", "Jane", "Doe", "+35621334455", "jane.doe@nic.org.mt"),
            ("secondary", "John", "Roe", "+35621334456", "john.roe@nic.org.mt"),
            ("third", "Mary", "Poe", "+35621334457", "mary.poe@nic.org.mt")]
        welcome = _text(f.mail_to("jane.doe@nic.org.mt", "Welcome"))
        assert "Mary Poe <mary.poe@nic.org.mt>" in welcome and f"who@{DOMAIN}" in welcome
        f.mail_to("mary.poe@nic.org.mt", "Welcome")
        outcome = f.mail_to(ADMIN, "Your request #1 for .mt: approved")
        assert outcome["Auto-Submitted"] == "auto-replied"
        assert "request #1 approved" in _text(f.mail_to(VALIDATOR, "Request #1 (.mt)"))
        assert f.events() == [("submit", "awaiting-validator", "admin", "dkim"),
                              ("approve", "approved", "validator", "dkim")]
        sent = f.d.query("SELECT count(*) FROM outbox_deliveries")
        f.restart()
        # Nothing is done twice after a restart: a later message is processed, nothing else.
        qid = f.env.send(b"From: x@y.example\r\nSubject: hi\r\n\r\nhi\r\n", mail_from="x@y.example",
                         rcpts=(f"postmaster@{DOMAIN}",))
        f.env.processed(qid)
        assert f.d.query("SELECT count(*) FROM outbox_deliveries") == sent
        assert f.state() == "approved" and len(f.roster()) == 3


def test_update_replaces_exactly_the_ssc_it_names(f: Flow) -> None:
    subscribed(f, JANE, JOHN)
    ann = ("secondary", "Ann", "Lee", "+356 2133 9999", "ann.lee@nic.org.mt", "john.roe@nic.org.mt")
    assert f.submit(form("update", sscs=(ann,)))[0] == "done"
    text = _text(f.mail_to(VALIDATOR, "Request #2: update .mt"))
    assert "- secondary John Roe <john.roe@nic.org.mt> +35621334456" in text
    assert "+ secondary Ann Lee <ann.lee@nic.org.mt> +35621339999" in text
    assert "  primary   Jane Doe" in text  # stays
    done = f.tldops("queue", "approve", "2", "--json")
    assert json.loads(done.stdout) == {"ok": True, "message": "request #2 approved", "state": "approved"}
    assert [r[4] for r in f.roster()] == ["jane.doe@nic.org.mt", "ann.lee@nic.org.mt"]
    assert "you are no longer a Security and" in _text(f.mail_to("john.roe@nic.org.mt", "no longer"))
    f.mail_to("ann.lee@nic.org.mt", "Welcome")
    assert len(f.mails_to("jane.doe@nic.org.mt", "Welcome")) == 1  # staying SSCs are not welcomed again
    assert f.events(2)[-1] == ("approve", "approved", "validator", "cli")


def test_removal_of_one_ssc_warns_the_validator_and_tells_the_removed(f: Flow) -> None:
    subscribed(f, JANE, JOHN)
    assert f.submit(form("remove", sscs=(), removals=("John.Roe@nic.org.mt",)))[0] == "done"
    text = _text(f.mail_to(VALIDATOR, "Request #2: remove .mt"))
    assert "- secondary John Roe" in text
    assert "the ccTLD would have 1 SSC; 2 are expected" in text
    assert f.tldops("queue", "approve", "2").returncode == 0
    assert [r[4] for r in f.roster()] == ["jane.doe@nic.org.mt"]
    f.mail_to("john.roe@nic.org.mt", "no longer")


def test_removal_of_the_whole_cctld(f: Flow) -> None:
    subscribed(f, JANE, JOHN)
    assert f.submit(form("remove", sscs=(), removals=("all",)))[0] == "done"
    assert f.tldops("queue", "approve", "2").returncode == 0
    assert f.roster() == []
    f.mail_to("jane.doe@nic.org.mt", "no longer")
    f.mail_to("john.roe@nic.org.mt", "no longer")


def test_the_roster_is_shown_and_exported_from_the_command_line(f: Flow) -> None:
    from tldops_mta.roster import formats

    subscribed(f, JANE, JOHN)
    shown = f.tldops("roster", "show").stdout
    assert shown.startswith("[TLP:AMBER] TLD-OPS roster") and "    +35621334455  jane.doe@nic.org.mt" in shown
    exported = formats.from_vcard(f.tldops("roster", "export", "--format", "vcard").stdout)
    assert [e.email for e in exported["mt"]] == ["jane.doe@nic.org.mt", "john.roe@nic.org.mt"]
    empty = f.tldops("roster", "export", "--tld", "nl").stdout.splitlines()
    assert empty == [",".join(formats.CSV_FIELDS)]


# -- refusals: nothing changes, and the sender learns every problem ----------------------------

def test_a_fourth_ssc_is_refused(f: Flow) -> None:
    subscribed(f, JANE, JOHN, MARY)
    ann = ("fourth", "Ann", "Lee", "+356 2133 9999", "ann.lee@nic.org.mt")
    status, reason = f.submit(form("update", sscs=(ann,)))
    assert status == "rejected"
    assert "'fourth' is not an SSC role" in reason
    # An update must name whom a new SSC replaces, and that must be an SSC.
    ann = ("secondary", "Ann", "Lee", "+356 2133 9999", "ann.lee@nic.org.mt", "nobody@nic.org.mt")
    status, reason = f.submit(form("update", sscs=(ann,)))
    assert status == "rejected" and "Replaces: nobody@nic.org.mt is not an SSC of this ccTLD" in reason
    assert len(f.roster()) == 3 and f.d.query("SELECT count(*) FROM requests")[0][0] == 1
    refusal = _text(f.mail_to(ADMIN, "not accepted"))
    assert "'fourth' is not an SSC role" in refusal and "nothing was changed" in refusal


def test_more_ssc_than_the_rules_allow_is_refused_once_sighup_reads_the_new_rules(f: Flow) -> None:
    assert f.submit(form(sscs=(JANE, JOHN, MARY)))[0] == "done"  # 3 allowed; the worker runs
    path = f.workdir / "rules" / "roster.toml"
    path.write_text(path.read_text("utf-8").replace("max_per_cctld = 3", "max_per_cctld = 2"), "utf-8")
    mark = f.d.mark()
    f.d.signal(signal.SIGHUP)
    f.d.wait_for("worker reloaded", after=mark)
    status, reason = f.submit(form(sscs=(JANE, JOHN, MARY)))
    assert status == "rejected"
    assert "the ccTLD would have 3 SSCs; at most 2 are allowed" in reason
    assert f.roster() == []


def test_a_role_address_is_refused(f: Flow) -> None:
    noc = ("secondary", "Network", "Operations", "+356 2133 4456", "NOC@nic.org.mt")
    status, reason = f.submit(form(sscs=(JANE, noc)))
    assert status == "rejected"
    assert "line 14: noc@nic.org.mt is a role mailbox, not a person" in reason.lower()  # its Email line
    assert f.d.query("SELECT count(*) FROM requests")[0][0] == 0


def test_a_malformed_form_is_answered_with_every_problem_and_its_line(f: Flow) -> None:
    body = ("Hello,\r\n\r\nAction: subscribe\r\nccTLD: mt\r\n\r\nSSC: primary\r\nFirst name: Jane\r\n"
            "Last name: Doe\r\nPhone: call me\r\nEmail: jane.doe-at-nic.org.mt\r\nShoe size: 42\r\n"
            "\r\nSSC: secondary\r\nFirst name: John\r\n\r\n"
            "SSC: third\r\nFirst name: Network\r\nLast name: Ops\r\nPhone: +356 2133 0000 000\r\n"
            "Email: noc@nic.org.mt\r\n\r\n-- \r\nJane\r\n")
    status, _ = f.submit(body)
    assert status == "rejected"
    reply = _text(f.mail_to(ADMIN, "not accepted"))
    assert "line 9: 'call me' is not a phone number" in reply
    assert "line 10: 'jane.doe-at-nic.org.mt' is not an email address" in reply
    assert "line 11: 'Shoe size: 42' is not a field of the form" in reply
    assert "line 13: the secondary SSC lacks Last name, Phone, Email" in reply
    # and in the same reply, what the policy says of the SSCs that are complete:
    assert "line 19: the third SSC's phone '+356 2133 0000 000' is not a valid number" in reply
    assert "line 20: noc@nic.org.mt is a role mailbox, not a person" in reply
    assert f.d.query("SELECT count(*) FROM requests")[0][0] == 0


def test_roster_problems_are_not_told_to_whoever_put_the_admin_in_cc(f: Flow) -> None:
    subscribed(f, JANE, JOHN)
    ann = ("secondary", "Ann", "Lee", "+356 2133 9999", "ann.lee@nic.org.mt", "someone@nic.org.mt")
    raw = request(ATTACKER, headers=[f"Cc: {ADMIN}"], body=form("update", sscs=(ann,)))
    qid = f.env.send(f.env.signed(raw, "attacker.example", f.env.attacker_key), mail_from=ATTACKER)
    status, reason = f.env.processed(qid)
    assert status == "rejected"
    assert "someone@nic.org.mt" not in reason and "does not fit the current roster of .mt" in reason


# -- the Validator's decisions ----------------------------------------------------------------

def test_a_decision_from_a_non_validator_is_ignored(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    address = f.decide_address()
    status, reason = f.decide(address, "approve", sender=ATTACKER)  # even with the token
    assert (status, reason) == ("rejected", "decision ignored: the sender is not a Validator")
    assert f.state() == "awaiting-validator" and f.roster() == []
    assert f.sink.to(ATTACKER) == []  # no reply to a stranger


def test_a_forged_validator_decision_without_dkim_does_not_count_and_the_validator_is_told(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    asked = " ".join(_text(f.mail_to(VALIDATOR, "Request #1:")).split())  # the rule configured: DKIM only
    assert "counts only from your Validator address, with a valid DKIM signature of your domain" in asked
    assert "confirmation" not in asked
    status, reason = f.decide(f.decide_address(), "approve", sign=False)
    assert status == "rejected" and "no valid DKIM signature of validators.example" in reason
    assert f.state() == "awaiting-validator"
    assert "did not count" in _text(f.mail_to(VALIDATOR, "Request #1 (.mt)"))


def test_a_decision_counts_only_from_the_validator_its_address_was_mailed_to(tmp_path: Path) -> None:
    with flow(tmp_path, **{"validation.decision_auth": "dkim-or-confirmation"}) as f:
        assert f.submit(form())[0] == "done"
        mine = f.decide_address(VALIDATOR)
        f.decide_address(OTHER_VALIDATOR)
        queued = f.d.query("SELECT count(*) FROM outbox_messages")[0][0]
        # The other Validator, DKIM-signed or not (which would ask them to confirm), with
        # VALIDATOR's token: refused, told why, and nothing else happens.
        for sign in (True, False):
            status, reason = f.decide(mine, "approve", sender=OTHER_VALIDATOR, sign=sign)
            assert status == "rejected" and "sent to another Validator" in reason, reason
        told = [f.mail_to(OTHER_VALIDATOR, "Request #1 (.mt)", n) for n in (1, 2)]
        assert all("sent to another Validator" in _text(m) for m in told)
        assert f.d.query("SELECT count(*) FROM outbox_messages")[0][0] == queued + 2
        assert f.state() == "awaiting-validator" and f.roster() == [] and len(f.events()) == 1
        assert f.mails_to(OTHER_VALIDATOR, "Please confirm") == []
        # The token is still its owner's.
        assert f.decide(mine, "approve") == ("done", "request #1 approved")
        assert f.events()[-1] == ("approve", "approved", "validator", "dkim")


def test_where_configured_an_unsigned_decision_counts_after_a_token_confirmation(tmp_path: Path) -> None:
    with flow(tmp_path, **{"validation.decision_auth": "dkim-or-confirmation"}) as f:
        assert f.submit(form())[0] == "done"
        asked = " ".join(_text(f.mail_to(VALIDATOR, "Request #1:")).split())  # says so
        assert "without one, you are first mailed a one-time confirmation, and it counts" in asked
        status, reason = f.decide(f.decide_address(), "approve", sign=False)
        assert (status, reason) == ("done", "decision without DKIM: confirmation asked")
        assert f.state() == "awaiting-validator"
        ask = f.mail_to(VALIDATOR, "Please confirm your decision on request #1")
        assert "approve" in _text(ask)
        confirm = str(ask["Reply-To"])
        # Only from the Validator's address, and only once.
        assert f.answer(confirm, ATTACKER)[0] == "rejected"
        assert f.answer(confirm, VALIDATOR) == ("done", "decision confirmed: request #1 approved")
        assert f.events()[-1] == ("approve", "approved", "validator", "token")
        assert len(f.roster()) == 2
        again = f.answer(confirm, VALIDATOR)
        assert again[0] == "rejected" and "token already used" in again[1]


def test_two_conflicting_decisions_the_first_wins(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    first, second = f.decide_address(VALIDATOR), f.decide_address(OTHER_VALIDATOR)
    assert f.decide(first, "approve") == ("done", "request #1 approved")
    status, reason = f.decide(second, "deny not known to us", sender=OTHER_VALIDATOR)
    assert (status, reason) == ("rejected", "request #1: the request is already approved")
    assert "already approved" in _text(f.mail_to(OTHER_VALIDATOR, "Request #1 (.mt)"))
    assert f.state() == "approved" and len(f.roster()) == 2
    assert [e[0] for e in f.events()] == ["submit", "approve"]
    cli = f.tldops("queue", "deny", "1", "too", "late")
    assert cli.returncode == 1 and "already approved" in cli.stderr


def test_deny_needs_a_reason_and_tells_the_requester(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    address = f.decide_address()
    assert f.decide(address, "deny") == ("rejected", "request #1: say why ('deny REASON')")
    assert f.decide(address, "what is this?")[1].startswith("your mail did not say what to do")
    denied = f.decide(address, "deny: these people are unknown to the registry")
    assert denied == ("done", "request #1 denied")
    outcome = _text(f.mail_to(ADMIN, "denied"))
    assert "Reason: these people are unknown to the registry" in outcome
    assert f.roster() == []


def test_escalation_goes_to_the_committee_whose_answer_a_validator_enters(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    address = f.decide_address()
    assert f.decide(address, "escalate redelegation in progress") == ("done", "request #1 escalated")
    text = _text(f.mail_to(COMMITTEE, "Escalated: request #1"))
    assert "redelegation in progress" in text and VALIDATOR in text
    assert f.decide(address, "approve") == ("done", "request #1 approved")
    assert [e[0] for e in f.events()] == ["submit", "escalate", "approve"]


def test_a_replayed_decision_mail_counts_once(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    address = f.decide_address()
    escalate = f.decision(address, "escalate ask the Committee")
    assert f.send_decision(escalate, address) == ("done", "request #1 escalated")
    assert f.decide(address, "deny the Committee says no") == ("done", "request #1 denied")
    queued = f.d.query("SELECT count(*) FROM outbox_messages")
    replayed = f.send_decision(escalate, address)
    assert replayed == ("rejected", "this decision mail was already processed")
    assert [e[0] for e in f.events()] == ["submit", "escalate", "deny"]
    assert f.d.query("SELECT count(*) FROM outbox_messages") == queued  # and nobody is mailed


def test_an_approval_is_judged_against_the_roster_as_it_is_then(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    assert f.submit(form())[0] == "done"  # the same subscription twice: both wait
    assert f.tldops("queue", "approve", "1").returncode == 0
    late = f.tldops("queue", "approve", "2")
    assert late.returncode == 1 and "the ccTLD is already subscribed" in late.stderr
    assert f.state(2) == "awaiting-validator"


def test_the_admin_is_told_the_number_and_can_withdraw_before_a_decision(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    ack = f.mail_to(ADMIN, "Request #1 for .mt received")
    assert "+ primary   Jane Doe <jane.doe@nic.org.mt> +35621334455" in _text(ack)
    withdraw = str(ack["Reply-To"])
    assert f.answer(withdraw, ATTACKER, "withdraw")[0] == "rejected"
    assert f.answer(withdraw, ADMIN, "Please withdraw it.") == ("done", "withdrawal: request #1 withdrawn")
    assert f.events()[-1] == ("withdraw", "withdrawn", "admin", "token")
    f.mail_to(ADMIN, "Your request #1 for .mt: withdrawn")
    assert f.decide(f.decide_address(), "approve")[1] == "request #1: the request is already withdrawn"
    assert f.roster() == []


# -- the scheduler ------------------------------------------------------------------------------

def test_a_request_nobody_decides_is_reminded_then_expires(tmp_path: Path) -> None:
    with flow(tmp_path, **{"validation.remind_after": 1.0, "validation.expire_after": 3.0}) as f:
        assert f.submit(form())[0] == "done"
        reminder = f.mail_to(VALIDATOR, "Request #1", n=2)
        assert "This is a reminder" in _text(reminder)
        f.d.wait_for("queue expire")
        assert f.state() == "expired"
        assert f.events()[-1] == ("expire", "expired", "scheduler", "-")
        assert "nobody decided within" in _text(f.mail_to(ADMIN, "expired"))
        assert f.decide(f.decide_address(), "approve")[1] == "request #1: the request is already expired"


# -- self-administration ----------------------------------------------------------------------

def test_self_administration_applies_a_verified_request_and_a_validator_can_reverse_it(
        tmp_path: Path) -> None:
    on = ("roster.toml", "self_administration = false", "self_administration = true")
    with flow(tmp_path, on) as f:
        assert f.submit(form()) == ("done", ".mt: verified")
        assert len(f.roster()) == 2  # at once
        assert f.events()[-1] == ("approve", "approved", "policy", "dkim")
        address = f.decide_address(subject_has="Applied: request #1")
        f.mail_to("jane.doe@nic.org.mt", "Welcome")
        assert f.decide(address, "deny we never heard of them")[1].startswith("request #1 reversed")
        assert f.roster() == [] and f.state() == "denied"
        f.mail_to("jane.doe@nic.org.mt", "no longer")
        # A removal leaves fewer than two SSCs: a warning, so it waits for a Validator.
        assert f.submit(form())[0] == "done"
        assert f.submit(form("remove", sscs=(), removals=("john.roe@nic.org.mt",)))[0] == "done"
        assert f.state(3) == "awaiting-validator"


def test_a_confirmed_request_is_not_self_administered_and_the_validators_hear_after_confirmation(
        tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        raw = request("deputy@nic.org.mt", headers=[f"Cc: {ADMIN}"], body=form())
        qid = f.env.send(f.env.signed(raw), mail_from="deputy@nic.org.mt")
        assert f.env.processed(qid)[0] == "done"
        assert f.state() == "awaiting-confirmation" and f.mails_to(VALIDATOR) == []
        confirm = str(f.mail_to(ADMIN, "Please confirm")["Reply-To"])
        reply = request(ADMIN, body="Yes.\r\n", subject="Re: confirm")
        qid = f.env.send(reply, rcpts=(confirm,))
        assert f.env.processed(qid)[0] == "done"
        text = _text(f.mail_to(VALIDATOR, "Request #1"))
        assert f"{ADMIN}, was sent a one-time token and confirmed it" in text
        assert [e[:2] for e in f.events()] == [("submit", "awaiting-confirmation"),
                                              ("confirm", "awaiting-validator")]
        assert f.tldops("queue", "approve", "1").returncode == 0
        # The admin sees the roster in the outcome; the deputy who asked sees the outcome only.
        assert "+35621334455" in _text(f.mail_to(ADMIN, "Your request #1 for .mt: approved"))
        deputy = _text(f.mail_to("deputy@nic.org.mt", "Your request #1 for .mt: approved"))
        assert "+35621334455" not in deputy and "sent to the administrative contact" in deputy


# -- TLP labels ------------------------------------------------------------------------------

def test_every_mail_is_labelled_and_never_less_strictly_than_what_it_answers(f: Flow) -> None:
    assert f.submit(form(), subject="[TLP-GREEN] Subscription")[0] == "done"
    # Roster data: the roster's label (broadcast.tlp); the answer to a GREEN request too, as
    # it shows roster data and the stricter wins.
    assert str(f.mail_to(VALIDATOR, "Request #1")["Subject"]).startswith("[TLP:AMBER] [TLD-OPS] Request #1")
    assert str(f.mail_to(ADMIN, "received")["Subject"]).startswith("[TLP:AMBER] ")
    # An unlabelled mail is RED, and so is the refusal that answers it.
    assert f.submit("Action: subscribe\r\nccTLD: mt\r\n")[0] == "rejected"
    assert str(f.mail_to(ADMIN, "not accepted")["Subject"]).startswith("[TLP:RED] ")


# -- the logs -----------------------------------------------------------------------------------

def test_a_smarthost_refusal_naming_an_ssc_is_logged_without_their_address(f: Flow) -> None:
    """Postfix names the recipient in a refusal; the log keeps it redacted (the outbox
    keeps it whole, for the operator who looks at that one mail)."""
    def both_welcomes(event: str) -> None:
        f.d.wait_for(event, lambda _r: len([r for r in f.d.lines if r.get("event") == event
                                            and r.get("purpose") == "welcome"]) >= 2)

    f.sink.answer("RCPT", "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted")
    assert f.submit(form())[0] == "done"
    assert f.tldops("queue", "approve", "1").returncode == 0
    both_welcomes("delivery deferred")
    f.sink.answer("RCPT", "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
    both_welcomes("delivery refused for good")
    kept = f.d.query("SELECT last_error FROM outbox_deliveries WHERE rcpt = ?", (JANE[4],))
    assert kept == [(f"550 5.1.1 <{JANE[4]}>: Recipient address rejected: User unknown",)]
    assert f.personal_data_logged() == []


# -- the audit log ------------------------------------------------------------------------------

def test_the_audit_log_cannot_be_rewritten(f: Flow) -> None:
    assert f.submit(form())[0] == "done"
    conn = sqlite3.connect(f.d.db_path)
    try:
        for sql in ("UPDATE request_events SET reason = 'x'", "DELETE FROM request_events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()
    shown = json.loads(f.tldops("queue", "show", "1", "--json").stdout)
    assert [e["event"] for e in shown["events"]] == ["submit"]
    evidence = shown["events"][0]["evidence"]  # when, who, how, and on what evidence
    assert evidence["iana"]["source"] == "rdap" and evidence["iana"]["fetched_at"] > 0
    assert [(s["domain"], s["counts"]) for s in evidence["dkim"]] == [("nic.org.mt", True)]
    assert shown["change"]["after"][0]["phone"] == "+35621334455"
    text = f.tldops("queue", "show", "1").stdout
    assert "+ primary   Jane Doe <jane.doe@nic.org.mt> +35621334455" in text
    assert "submit    -> awaiting-validator" in text
