"""The daemon accepts mail for its service addresses, spools it durably, and processes it."""

from __future__ import annotations

import smtplib

from daemon_proc import DOMAIN, DaemonProc
from smtp_raw import message


def send(d: DaemonProc, rcpts: list[str], data: bytes, sender: str = "admin@nic.example") -> str:
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail(sender)
        for r in rcpts:
            code, _ = s.rcpt(r)
            assert code == 250, r
        code, text = s.data(data)
    assert code == 250, text
    assert text.startswith(b"2.0.0 Ok: queued as ")
    return text.decode().rsplit(" ", 1)[1]


def test_accepted_message_is_spooled_with_its_envelope_and_processed(daemon: DaemonProc) -> None:
    data = message("envelope")
    qid = send(daemon, [f"postmaster@{DOMAIN}", f"bounces+Tok3n_x@{DOMAIN}"], data)
    daemon.wait_processed(qid)
    rows = daemon.query(
        "SELECT s.status, s.mail_from, s.rcpt_to, s.client_addr, s.helo, s.services, m.raw,"
        " s.session_id FROM spool s JOIN spool_messages m ON m.id = s.id WHERE queue_id = ?",
        (qid,))
    assert len(rows) == 1
    status, mail_from, rcpt_to, client, helo, services, raw, sid = rows[0]
    assert status == "done"
    assert mail_from == "admin@nic.example"
    assert rcpt_to == f'["postmaster@{DOMAIN}", "bounces+Tok3n_x@{DOMAIN}"]'
    assert client == "127.0.0.1"
    assert helo == "client.test"
    assert services == '["bounces", "postmaster"]'
    assert raw == data
    spooled = daemon.wait_for("message spooled", lambda r: r.get("queue_id") == qid)
    assert spooled["session"] == sid


def test_every_service_address_is_accepted_and_others_refused(daemon: DaemonProc) -> None:
    good = ["requests", "confirm+abc", "decide+T0K-en", "who", "update", "help",
            "bounces+ssc42", "postmaster", "Postmaster", "REQUESTS"]
    bad = ["nobody", "requests+x", "confirm", "confirm+", "decide+bad/tag", "admin",
           "who+x"]
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("admin@nic.example")
        for lp in good:
            code, text = s.rcpt(f"{lp}@{DOMAIN}")
            assert (code, text) == (250, b"2.1.5 Recipient OK"), lp
        s.rset()
        s.mail("admin@nic.example")
        for lp in bad:
            code, text = s.rcpt(f"{lp}@{DOMAIN}")
            assert (code, text[:5]) == (550, b"5.1.1"), lp
        for addr in ["requests@example.org", "requests@tld-ops.localhost.evil", "postmaster@x.test"]:
            code, text = s.rcpt(addr)
            assert (code, text[:5]) == (550, b"5.1.1"), addr
        code, _ = s.rcpt("postmaster")
        assert code == 250


def test_ehlo_advertises_the_extensions(daemon: DaemonProc) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in ("size", "8bitmime", "pipelining", "enhancedstatuscodes", "smtputf8"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == str(2 * 1024 * 1024)
        assert not s.has_extn("starttls")  # no certificate configured


def test_null_sender_is_accepted_for_bounces(daemon: DaemonProc) -> None:
    qid = send(daemon, [f"bounces+abc@{DOMAIN}"], message("bounce"), sender="")
    daemon.wait_processed(qid)
    assert daemon.query("SELECT mail_from FROM spool WHERE queue_id = ?", (qid,)) == [("",)]
