"""help@ answers with the request form: to people, once a day at most, never to robots."""

from __future__ import annotations

import email
import smtplib
import tomllib
from pathlib import Path

import own_dkim
import pytest
from daemon_proc import DOMAIN, DaemonProc
from dns_server import DnsServer

from tldops_mta.policy.request_form import parse_form

HELP = f"help@{DOMAIN}"


def ask(d: DaemonProc, mail_from: str, headers: str = "") -> str:
    raw = (f"From: Jane <{mail_from or 'robot@example.net'}>\r\nTo: {HELP}\r\nSubject: help\r\n"
           f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n{headers}\r\nHow do I subscribe?\r\n")
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("mail.example.net")
        s.mail(mail_from)
        assert s.rcpt(HELP)[0] == 250
        code, text = s.data(raw.encode())
    assert code == 250, text
    qid = text.decode().rsplit(" ", 1)[1]
    d.wait_processed(qid)
    return qid


def help_mails(d: DaemonProc) -> list[tuple[str, str]]:
    return [tuple(r) for r in d.query(  # type: ignore[misc]
        "SELECT m.mail_from, d.rcpt FROM outbox_deliveries d JOIN outbox_messages m"
        " ON m.id = d.message_id WHERE m.purpose = 'help'")]


def test_help_sends_the_form_once_a_day(start_daemon, tmp_path: Path, dns_server: DnsServer) -> None:
    own_dkim.publish(dns_server)
    # The texts as shipped in rules/replies.toml; the answer signed with the daemon's key.
    d = start_daemon(own_dkim.key_settings(tmp_path / "keys"))
    ask(d, "jane@nic.example")
    d.wait_for("mail delivered")
    files = list((d.state_dir / "outgoing").glob("*.eml"))
    assert len(files) == 1
    reply = email.message_from_bytes(files[0].read_bytes())
    assert reply["To"] == "jane@nic.example" and reply["Auto-Submitted"] == "auto-replied"
    body = reply.get_payload(decode=True).decode()
    assert f"requests@{DOMAIN}" in body and "{requests}" not in body
    # The form in it is one the daemon reads without a single problem.
    form = parse_form(body)
    assert form.ok and form.action == "subscribe", form.problems
    assert own_dkim.assert_signed(own_dkim.outgoing_files(d.state_dir), dns_server) == 1
    # Asking again the same day: no second mail (no backscatter to forged senders).
    ask(d, "jane@nic.example")
    assert help_mails(d) == [("", "jane@nic.example")]
    assert d.query("SELECT status FROM spool ORDER BY id") == [("done",), ("done",)]


@pytest.mark.parametrize(("mail_from", "headers"), [
    ("", ""),
    ("robot@example.net", "Auto-Submitted: auto-replied\r\n"),
    ("list@example.net", "Precedence: list\r\n"),
])
def test_no_help_to_robots_or_the_null_sender(start_daemon, mail_from: str, headers: str) -> None:
    d = start_daemon()
    qid = ask(d, mail_from, headers)
    assert help_mails(d) == []
    assert d.query("SELECT reason FROM spool WHERE queue_id = ?", (qid,)) == [
        ("help: no reply to a robot or a null sender",)]


def test_the_help_template_in_rules_is_a_clean_form() -> None:
    rules = Path(__file__).resolve().parent.parent / "rules" / "replies.toml"
    body = tomllib.loads(rules.read_text("utf-8"))["help"]["body"]
    assert parse_form(body).ok
