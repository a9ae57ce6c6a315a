"""postmaster@ and abuse@ reach a person: forwarded to the operators through the outbox, the
original attached unchanged; never a loop; with no operator, `tldops status` says so."""

from __future__ import annotations

import email
import json
import smtplib
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_proc import DOMAIN, DaemonProc, write_config
from smtp_sink import Received, SmtpSink

OPS = ["ops1@operators.example", "ops2@operators.example"]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    s = SmtpSink()
    yield s
    s.stop()


def forwarding(start_daemon: Callable[..., DaemonProc], sink: SmtpSink) -> DaemonProc:
    return start_daemon({"postmaster.forward_to": OPS, "outbox.smarthost": f"127.0.0.1:{sink.port}",
                         "outbox.smarthost_tls": "none"})


def original(subject: str, to: str = f"postmaster@{DOMAIN}", extra: str = "") -> bytes:
    return (f"From: Reporter <reporter@isp.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <r1@isp.example>\r\n"
            "DKIM-Signature: v=1; a=rsa-sha256; d=isp.example; s=x;\r\n"
            f"  h=from:to:subject; bh=AAAA; b=BBBB\r\n{extra}"
            "\r\nYour host 192.0.2.7 sends us spam.\r\n.a line with a leading dot\r\n").encode()


def send(d: DaemonProc, mail_from: str, rcpt: str, raw: bytes) -> str:
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("mx.isp.example")
        s.mail(mail_from)
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(raw)
    assert code == 250, text
    qid = text.decode().rsplit(" ", 1)[1]
    d.wait_processed(qid)
    return qid


def reason(d: DaemonProc, qid: str) -> str:
    return str(d.query("SELECT reason FROM spool WHERE queue_id = ?", (qid,))[0][0])


def forwards(d: DaemonProc) -> list[tuple[str, str]]:
    return [tuple(r) for r in d.query(  # type: ignore[misc]
        "SELECT m.ref, d.rcpt FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
        " WHERE m.purpose = 'postmaster-forward' ORDER BY d.id")]


def tldops(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config", str(d.config_path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("local", ["postmaster", "abuse"])
def test_mail_to_postmaster_and_abuse_reaches_the_operators_with_the_original_intact(
        start_daemon: Callable[..., DaemonProc], sink: SmtpSink, local: str) -> None:
    d = forwarding(start_daemon, sink)
    raw = original("spam from your network", to=f"{local}@{DOMAIN}")
    qid = send(d, "reporter@isp.example", f"{local}@{DOMAIN}", raw)
    got = {r.rcpt_tos[0]: r for r in sink.wait(2)}
    assert sorted(got) == OPS
    assert reason(d, qid) == f"{local}: forwarded to 2 operator(s)"
    assert forwards(d) == [(qid, OPS[0]), (qid, OPS[1])]  # one message, a delivery each: once
    for r in got.values():
        # Ours: bounces come back to us, never to the reporter.
        assert r.mail_from == f"bounces+forward@{DOMAIN}"
        # The original, octet for octet, its signature and leading dot included.
        assert raw in r.data
        fwd = email.message_from_bytes(r.data)
        assert fwd["From"] == f"TLD-OPS <{local}@{DOMAIN}>"
        assert fwd["X-Loop"] == f"{local}@{DOMAIN}" and fwd["Auto-Submitted"] == "auto-generated"
        assert fwd["Subject"].startswith("[TLP:RED] ") and "spam from your network" in fwd["Subject"]
        text, attached = fwd.get_payload()
        assert text.get_content_type() == "text/plain" and qid in text.get_payload()
        assert attached.get_content_type() == "message/rfc822"
        inner = attached.get_payload(0)
        assert inner["From"] == "Reporter <reporter@isp.example>" and inner["DKIM-Signature"]
    # Forwarded is read: nothing for `tldops status` to report.
    js = json.loads(tldops(d, "status", "--json").stdout)
    assert js["postmaster_unread"] == 0 and not any("postmaster@" in p for p in js["problems"])


def test_no_forward_can_loop(start_daemon: Callable[..., DaemonProc], sink: SmtpSink) -> None:
    d = forwarding(start_daemon, sink)
    send(d, "reporter@isp.example", f"postmaster@{DOMAIN}", original("first"))
    fwd: Received = sink.wait(2)[0]
    fwd_id = email.message_from_bytes(fwd.data)["Message-ID"]
    bounce = (f"From: MAILER-DAEMON@operators.example\r\nTo: postmaster@{DOMAIN}\r\n"
              "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
              "Date: Wed, 25 Nov 2026 12:01:00 +0000\r\n\r\nMailbox full.\r\n").encode() + fwd.data
    vacation = (f"From: Ops One <{OPS[0]}>\r\nTo: postmaster@{DOMAIN}\r\nSubject: Away\r\n"
                f"Auto-Submitted: auto-replied\r\nIn-Reply-To: {fwd_id}\r\n"
                "Date: Wed, 25 Nov 2026 12:02:00 +0000\r\n\r\nI am away.\r\n").encode()
    came_back = [
        # The operators' mailbox forwards to postmaster@ again (an alias loop, SRS sender).
        ("SRS0=ab=cd=operators.example=ops1@operators.example", fwd.data, "(X-Loop)"),
        # Their server bounces the forward to its From, from the null sender.
        ("", bounce, "null sender"),
        # Their vacation robot answers the forward.
        (OPS[0], vacation, "automatic answer to our own mail"),
        # An answer of ours (help@'s, say) that an alias somewhere sent on to us.
        ("SRS0=ef=gh=isp.example=jane@isp.example",
         (f"From: TLD-OPS <postmaster@{DOMAIN}>\r\nTo: jane@isp.example\r\nSubject: Help\r\n"
          "Auto-Submitted: auto-replied\r\nDate: Wed, 25 Nov 2026 12:03:00 +0000\r\n\r\nThe form.\r\n"
          ).encode(), "automatic mail in our own name"),
        # Mail in our own envelope (our forward, handed back unchanged).
        (f"bounces+forward@{DOMAIN}", fwd.data, "our own domain"),
    ]
    for mail_from, raw, why in came_back:
        qid = send(d, mail_from, f"postmaster@{DOMAIN}", raw)
        assert reason(d, qid).startswith("postmaster: kept, unread: ") and why in reason(d, qid), why
    assert len(forwards(d)) == 2  # only the first mail's, to each operator
    # A person's mail still goes through, and is the only other thing the operators get.
    qid = send(d, "reporter@isp.example", f"postmaster@{DOMAIN}", original("second"))
    sink.wait(4)
    assert [r.rcpt_tos for r in sink.received] == [[OPS[0]], [OPS[1]]] * 2
    assert forwards(d)[2:] == [(qid, OPS[0]), (qid, OPS[1])]
    # What was kept is visible, and unread.
    js = json.loads(tldops(d, "status", "--json").stdout)
    assert js["postmaster_unread"] == len(came_back)


def test_without_an_operator_postmaster_mail_is_a_problem_until_read(
        start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon()
    qid = send(d, "reporter@isp.example", f"postmaster@{DOMAIN}", original("anyone there?"))
    other = send(d, "jane@nic.example", f"help@{DOMAIN}", original("help", to=f"help@{DOMAIN}"))
    # However malformed (two From: lines, which any other service refuses), it is kept for a person.
    spoofed = send(d, "reporter@isp.example", f"postmaster@{DOMAIN}",
                   original("look at this", extra="From: ceo@bank.example\r\n"))
    for q in (qid, spoofed):
        assert reason(d, q) == ("postmaster: kept, unread: no operator to forward to"
                                " (postmaster.forward_to)")
    assert forwards(d) == []

    r = tldops(d, "status")
    assert r.returncode == 1
    assert "2 mail(s) to postmaster@/abuse@ unread, the oldest since" in r.stdout
    assert "tldops spool list --service postmaster" in r.stdout
    js = json.loads(tldops(d, "status", "--json").stdout)
    assert js["postmaster_unread"] == 2 and js["oldest_postmaster_unread_s"] >= 0
    assert any("postmaster@/abuse@ unread" in p for p in js["problems"])
    with urllib.request.urlopen(f"http://{d.wait_for('ready')['metrics']}/metrics", timeout=10) as m:
        assert "\ntldops_postmaster_unread 2.0\n" in m.read().decode()

    # spool list --service: only the mail for that service.
    listed = json.loads(tldops(d, "spool", "list", "--service", "postmaster", "--json").stdout)
    assert [e["queue_id"] for e in listed] == [spoofed, qid]
    listed = json.loads(tldops(d, "spool", "list", "--service", "help", "--json").stdout)
    assert [e["queue_id"] for e in listed] == [other]
    r = tldops(d, "spool", "list", "--service", "abuse")
    assert r.returncode == 0 and r.stdout.strip() == "no messages for abuse@"
    r = tldops(d, "spool", "list", "--service", "nobody")
    assert r.returncode == 2 and "invalid choice" in r.stderr

    # Marking read: an id that is no kept postmaster mail changes nothing, all or none.
    r = tldops(d, "spool", "read", qid, other)
    assert r.returncode == 1
    assert r.stderr.strip() == f"tldops: no mail to postmaster@ or abuse@ with id {other}"
    assert json.loads(tldops(d, "status", "--json").stdout)["postmaster_unread"] == 2
    r = tldops(d, "spool", "read", qid, spoofed)
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == [f"{qid} marked read", f"{spoofed} marked read"]
    r = tldops(d, "status")
    assert r.returncode == 0 and "problems:   none" in r.stdout, r.stdout


def test_an_operator_address_at_our_own_domain_is_refused(tmp_path: Path) -> None:
    f = write_config(tmp_path / "c.toml", {"postmaster.forward_to": [f"ops@{DOMAIN.upper()}"]})
    r = subprocess.run([sys.executable, "-m", "tldops_mta", "config", "check", "--config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"postmaster.forward_to: 'ops@{DOMAIN.upper()}' is at server.domain" in r.stdout + r.stderr
