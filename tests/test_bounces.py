"""bounces+TAG@ (issue 6): reports tied to the SSC by the VERP tag; failing addresses are
reported to the Validators, never removed."""

from __future__ import annotations

import smtplib
from pathlib import Path

from test_broadcast import broadcasting
from test_workflow import JANE, JOHN, VALIDATOR, Flow, subscribed


def dsn(to: str, rcpt: str, status: str) -> bytes:
    action = "failed" if status.startswith("5") else "delayed"
    return (f"From: MAILER-DAEMON@mx.nic.org.mt\r\nTo: {to}\r\nSubject: Undelivered Mail\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.nic.org.mt\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
            f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox unavailable\r\n\r\n--B--\r\n").encode()


def bounce(f: Flow, to: str, rcpt: str, status: str = "5.1.1") -> tuple[str, str]:
    with smtplib.SMTP(f.d.host, f.d.port, timeout=10) as s:
        s.ehlo("mx.nic.org.mt")
        s.mail("")  # the null sender, as bounces come
        s.rcpt(to)
        code, text = s.data(dsn(to, rcpt, status))
    assert code == 250
    return f.env.processed(text.decode().rsplit(" ", 1)[1])


def return_path(f: Flow, rcpt: str, n: int) -> str:
    """The envelope sender of the n-th broadcast to ``rcpt`` (its VERP address)."""
    f.sink.wait_for(lambda r: len([x for x in f.sink.to(rcpt) if b"TLD-OPS roster" in x.data]) >= n)
    return [x for x in f.sink.to(rcpt) if b"TLD-OPS roster" in x.data][n - 1].mail_from


def test_bounces_are_tied_to_the_ssc_and_a_failing_address_is_reported_not_removed(tmp_path: Path) -> None:
    with broadcasting(tmp_path, **{"bounces.threshold": 2}) as f:
        subscribed(f, JANE, JOHN)
        assert f.tldops("broadcast", "now").returncode == 0
        first = return_path(f, JANE[4], 1)
        # The tag, not the report's text, says whom it is about (here the report names
        # another address, as forwarding setups do).
        assert bounce(f, first, "j.doe@mail.nic.org.mt") == (
            "done", "bounce for 1 address(es); 0 reported to the Validators")
        assert f.d.query("SELECT address, permanent FROM bounces") == [(JANE[4], 1)]
        # A delay is not a failure.
        delayed = bounce(f, return_path(f, JOHN[4], 1), JOHN[4], "4.2.2")
        assert delayed[1].endswith("0 reported to the Validators")
        assert f.tldops("broadcast", "now").returncode == 0
        assert bounce(f, return_path(f, JANE[4], 2), JANE[4]) == (
            "done", "bounce for 1 address(es); 1 reported to the Validators")
        report = f.mail_to(VALIDATOR, "keeps failing")
        assert JANE[4] in report.get_payload() and "failed for good 2" in report.get_payload()
        assert [r[4] for r in f.roster()] == [JANE[4], JOHN[4]]  # nobody removed
        # Once per window: a third failure tells nobody again.
        assert f.tldops("broadcast", "now").returncode == 0
        assert bounce(f, return_path(f, JANE[4], 3), JANE[4])[1].endswith("0 reported to the Validators")


def test_a_bounce_about_someone_not_on_the_roster_is_recorded_and_reported_to_nobody(tmp_path: Path) -> None:
    with broadcasting(tmp_path, **{"bounces.threshold": 1}) as f:
        subscribed(f, JANE, JOHN)
        status, reason = bounce(f, "bounces+r1@tld-ops.localhost", "stranger@example.org")
        assert (status, reason) == ("done", "bounce for 1 address(es); 0 reported to the Validators")
        assert f.d.query("SELECT address FROM bounces") == [("stranger@example.org",)]
