"""Postfix in front: XFORWARD from a trusted relay, and a real Postfix configured with the
lines shipped in examples/postfix/ relaying the TLD-OPS domain to the real daemon.

The client connects from 127.0.0.2 (any 127/8 address is loopback on Linux) so that its
address differs from the relay's (127.0.0.1): what the spool records shows which it kept."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from daemon_proc import DOMAIN, DaemonProc
from postfix_instance import PostfixInstance
from smtp_checks import expect, queue_id
from smtp_raw import RawClient, message, open_session

from tldops_mta.intake.smtp_server import xforward_attributes

TRUSTED = {"server.trusted_relays": ["127.0.0.1/32"], "server.limit_exempt": ["127.0.0.0/8"]}


def session_from(d: DaemonProc, source: str) -> RawClient:
    sock = socket.create_connection((d.host, d.port), timeout=10, source_address=(source, 0))
    return open_session(sock, "relay.test")


def spool_row(d: DaemonProc, qid: str) -> tuple[str, int | None, str | None, str | None]:
    [row] = d.query("SELECT client_addr, client_port, helo, relay_addr FROM spool WHERE queue_id = ?", (qid,))
    return row  # type: ignore[return-value]


def send(c: RawClient, subject: str) -> str:
    expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<requests@{DOMAIN}>"), 250, "2.1.5")
    assert c.cmd("DATA")[0] == 354
    c.send(message(subject) + b".\r\n")
    return queue_id(c.reply())


def test_trusted_relay_names_the_client_and_it_is_recorded(start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon(TRUSTED)
    c = session_from(d, "127.0.0.1")
    code, text = c.cmd("EHLO relay.test")
    assert code == 250 and "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE" in text
    expect(c.cmd("XFORWARD NAME=mail.nic.example ADDR=IPV6:2001:db8::25 PORT=40123"), 250, "2.0.0")
    expect(c.cmd("XFORWARD HELO=mail.nic.example PROTO=ESMTP SOURCE=REMOTE IDENT=[UNAVAILABLE]"),
           250, "2.0.0")
    qid = send(c, "forwarded")
    client, port, helo, relay = spool_row(d, qid)
    assert (client, port, helo) == ("2001:db8::25", 40123, "mail.nic.example")
    assert relay is not None and relay.startswith("127.0.0.1:")
    # The attributes end with the transaction (as in Postfix): the next message without
    # XFORWARD is the relay's own.
    qid2 = send(c, "not forwarded")
    client2, _, helo2, relay2 = spool_row(d, qid2)
    assert (client2, helo2, relay2) == ("127.0.0.1", "relay.test", None)
    # And `tldops spool show` tells the operator.
    out = subprocess.run([sys.executable, "-m", "tldops_mta", "spool", "show", qid, "--config",
                          str(d.config_path)], capture_output=True, text=True, check=True).stdout
    assert "from 2001:db8::25 (HELO mail.nic.example)" in out and "relayed by:  127.0.0.1:" in out
    c.close()


def test_xforward_from_an_untrusted_client_is_refused_and_changes_nothing(
        start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon(TRUSTED)
    c = session_from(d, "127.0.0.2")
    code, text = c.cmd("EHLO client.test")
    assert code == 250 and "XFORWARD" not in text
    expect(c.cmd("XFORWARD ADDR=192.0.2.1 HELO=spoofed.example"), 550, "5.7.0")
    qid = send(c, "direct")
    assert spool_row(d, qid)[0::2] == ("127.0.0.2", "client.test")
    assert spool_row(d, qid)[3] is None
    c.close()


def test_xforward_with_no_trusted_relays_configured_is_refused(daemon: DaemonProc) -> None:
    c = session_from(daemon, "127.0.0.1")
    assert "XFORWARD" not in c.cmd("EHLO relay.test")[1]
    expect(c.cmd("XFORWARD ADDR=192.0.2.1"), 550, "5.7.0")
    c.close()


def test_xforward_inside_a_transaction_or_malformed_is_refused(
        start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon(TRUSTED)
    c = session_from(d, "127.0.0.1")
    c.cmd("EHLO relay.test")
    expect(c.cmd("XFORWARD ADDR=not-an-address"), 501, "5.5.4")
    expect(c.cmd("XFORWARD COLOR=blue"), 501, "5.5.4")
    expect(c.cmd("XFORWARD ADDR"), 501, "5.5.4")
    expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    expect(c.cmd("XFORWARD ADDR=192.0.2.1"), 503, "5.5.1")
    c.close()


@pytest.mark.parametrize(("arg", "want"), [
    ("ADDR=192.0.2.1", {"ADDR": "192.0.2.1"}),
    ("addr=IPV6:2001:DB8::1", {"ADDR": "2001:db8::1"}),
    ("NAME=[UNAVAILABLE] ADDR=192.0.2.1", {"ADDR": "192.0.2.1"}),
    ("HELO=a+2Bb+3Dc", {"HELO": "a+b=c"}),
    ("HELO=a+2", None),
    ("HELO=a+ZZ", None),
    ("HELO=a=b", None),
    ("", None),
])
def test_xforward_attributes(arg: str, want: dict[str, str] | None) -> None:
    assert xforward_attributes(arg) == want


# -- a real Postfix in front -------------------------------------------------------------


@pytest.fixture
def postfix_front(start_daemon: Callable[..., DaemonProc]) -> Iterator[tuple[PostfixInstance, DaemonProc]]:
    d = start_daemon({**TRUSTED, "worker.max_idle": 0.5})
    pf = PostfixInstance(DOMAIN, d.port).start()
    try:
        yield pf, d
    finally:
        pf.stop()


def test_mail_through_postfix_arrives_with_the_clients_real_address(
        postfix_front: tuple[PostfixInstance, DaemonProc]) -> None:
    pf, d = postfix_front
    mark = d.mark()
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=30, source_address=("127.0.0.2", 0)) as s:
        s.ehlo("mail.nic.example")
        refused = s.sendmail("admin@nic.example", [f"requests@{DOMAIN}"], message("through postfix"))
        assert refused == {}
    spooled = d.wait_for("message spooled", after=mark, timeout=60)
    qid = spooled["queue_id"]
    client, _, helo, relay = spool_row(d, qid)
    assert client == "127.0.0.2", pf.log()
    assert helo == "mail.nic.example"
    assert relay is not None and relay.startswith("127.0.0.1:")
    [(raw,)] = d.query("SELECT m.raw FROM spool s JOIN spool_messages m ON m.id = s.id WHERE s.queue_id = ?",
                       (qid,))
    # The Received trail says the same (Postfix's line, with the client it saw).
    assert b"from mail.nic.example (unknown [127.0.0.2])" in bytes(raw)
    pf.wait_delivered(qid)
    d.wait_for("message processed", lambda r: r.get("queue_id") == qid, timeout=30)


def test_postfix_refuses_at_its_door_what_tldops_would_refuse(
        postfix_front: tuple[PostfixInstance, DaemonProc]) -> None:
    """No backscatter: Postfix asks tldops-mta (address verification) before accepting."""
    pf, d = postfix_front
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=30, source_address=("127.0.0.2", 0)) as s:
        s.ehlo("mail.nic.example")
        s.mail("admin@nic.example")
        code, text = s.rcpt(f"nobody@{DOMAIN}")
        assert code == 550, (code, text, pf.log())
        code, _ = s.rcpt(f"help@{DOMAIN}")
        assert code == 250
    assert d.query("SELECT count(*) FROM spool") == [(0,)]
