"""Whole SMTP sessions: enhanced status codes on every reply, pipelining, IPv6."""

from __future__ import annotations

import json
import smtplib
import socket
from collections.abc import Callable

import pytest
from daemon_proc import DOMAIN, DaemonProc
from smtp_checks import (
    GOOD_RCPT,
    all_replies,
    assert_serving,
    codes,
    expect,
    expect_close,
    queue_id,
    spool_count,
    spooled,
)
from smtp_raw import RawClient, message

Start = Callable[..., DaemonProc]

# (command, reply code, enhanced status code); None for EHLO, whose lines are keywords.
SCRIPT: list[tuple[str, int, str | None]] = [
    ("NOOP", 250, "2.0.0"),
    ("RSET", 250, "2.0.0"),
    (f"VRFY <{GOOD_RCPT}>", 252, "2.5.0"),
    ("HELP", 250, "2.0.0"),
    ("HELP BOGUS", 501, "5.5.4"),
    ("XYZZY plugh", 500, "5.5.2"),
    ("MAIL FROM:<admin@nic.example>", 503, "5.5.1"),  # before EHLO
    (f"RCPT TO:<{GOOD_RCPT}>", 503, "5.5.1"),
    ("DATA", 503, "5.5.1"),
    ("", 500, "5.5.2"),
    ("EXPN requests", 502, "5.5.1"),
    ("STARTTLS", 454, "4.7.0"),  # no certificate configured
    ("AUTH PLAIN", 502, "5.5.1"),
    ("EHLO client.test", 250, None),
    (f"RCPT TO:<{GOOD_RCPT}>", 503, "5.5.1"),  # before MAIL
    ("DATA", 503, "5.5.1"),  # before RCPT
    ("MAIL FROM:<admin@nic.example> XUNKNOWN=1", 555, "5.5.4"),
    ("MAIL FROM:<admin@nic.example> SIZE=many", 501, "5.5.4"),
    ("MAIL FROM:<admin@nic.example>", 250, "2.1.0"),
    ("MAIL FROM:<other@nic.example>", 503, "5.5.1"),
    (f"RCPT TO:<nobody@{DOMAIN}>", 550, "5.1.1"),
    ("DATA", 503, "5.5.1"),  # still no accepted recipient
    (f"RCPT TO:<{GOOD_RCPT}> XUNKNOWN=1", 555, "5.5.4"),
    (f"RCPT TO:<{GOOD_RCPT}>", 250, "2.1.5"),
    ("RSET extra", 501, "5.5.4"),
    ("RSET", 250, "2.0.0"),
    ("DATA", 503, "5.5.1"),  # RSET ended the transaction
    ("QUIT now", 501, "5.5.4"),
    ("QUIT", 221, "2.0.0"),
]


def test_every_reply_after_greeting_and_ehlo_has_an_enhanced_status_code(
        daemon: DaemonProc) -> None:
    c = RawClient(daemon.connect())
    code, greeting = c.reply()
    assert (code, greeting) == (220, f"220 {DOMAIN} tldops-mta")
    seen = []
    for command, want_code, want_enhanced in SCRIPT:
        reply = c.cmd(command)
        if want_enhanced is None:
            assert reply[0] == want_code, reply
            assert "250-ENHANCEDSTATUSCODES" in reply[1]
        else:
            expect(reply, want_code, want_enhanced)
        seen.append(reply)
    expect_close(c)
    assert len(seen) == len(SCRIPT)
    assert spool_count(daemon) == 0


def test_help_lists_exactly_the_commands_taken(daemon: DaemonProc) -> None:
    c = RawClient(daemon.connect())
    c.reply()
    text = expect(c.cmd("HELP"), 250, "2.0.0")
    listed = set(text.split(": ", 1)[1].split())
    assert listed == {"DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET",
                      "VRFY"}
    expect(c.cmd("HELP DATA"), 250, "2.0.0")


def test_unrecognised_commands_end_the_session(daemon: DaemonProc) -> None:
    c = RawClient(daemon.connect())
    c.reply()
    c.send(b"".join(b"BOGUS%d\r\n" % i for i in range(10)))
    replies = all_replies(c)
    assert len(replies) == 5, replies
    for r in replies[:4]:
        expect(r, 500, "5.5.2")
    expect(replies[4], 502, "5.5.1")
    assert_serving(daemon)


def test_pipelined_transactions(daemon: DaemonProc) -> None:
    d = daemon
    c = RawClient(d.connect())
    assert c.reply()[0] == 220
    first_rcpts = [f"requests@{DOMAIN}", f"who@{DOMAIN}"]
    c.send(b"EHLO client.test\r\nMAIL FROM:<admin@nic.example>\r\n"
           + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in first_rcpts)
           + b"DATA\r\n")
    code, ehlo = c.reply()
    assert code == 250 and "250-PIPELINING" in ehlo.split("\r\n"), ehlo
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 250, "2.1.5")
    expect(c.reply(), 250, "2.1.5")
    assert c.reply()[0] == 354

    # The message content starts the next group (RFC 2920): end of data and the whole
    # next envelope in one write, with a refused recipient in the middle.
    first, second = message("pipelined-1"), message("pipelined-2")
    c.send(first + b".\r\nMAIL FROM:<other@nic.example>\r\n"
           + f"RCPT TO:<nobody@{DOMAIN}>\r\n".encode()
           + f"RCPT TO:<help@{DOMAIN}>\r\n".encode()
           + b"DATA\r\n")
    qid1 = queue_id(c.reply())
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 550, "5.1.1")
    expect(c.reply(), 250, "2.1.5")
    assert c.reply()[0] == 354
    c.send(second + b".\r\nQUIT\r\n")
    qid2 = queue_id(c.reply())
    expect(c.reply(), 221, "2.0.0")
    expect_close(c)

    assert spooled(d) == [
        (qid1, json.dumps(first_rcpts), first),
        (qid2, json.dumps([f"help@{DOMAIN}"]), second),
    ]
    assert d.query("SELECT mail_from FROM spool ORDER BY id") == [
        ("admin@nic.example",), ("other@nic.example",)]


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no ::1")
def test_ipv6_loopback(start_daemon: Start) -> None:
    d = start_daemon({"server.listen": ["[::1]:0"]})
    assert d.addresses[0].startswith("[::1]:")
    assert d.host == "::1"
    data = message("over-ipv6")
    with smtplib.SMTP("::1", d.port, timeout=10) as s:
        assert s.ehlo("client.test")[0] == 250
        s.mail("admin@nic.example")
        assert s.rcpt(GOOD_RCPT) == (250, b"2.1.5 Recipient OK")
        code, text = s.data(data)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), text
    qid = text.decode().rsplit(" ", 1)[1]
    assert spooled(d) == [(qid, json.dumps([GOOD_RCPT]), data)]
    assert d.query("SELECT client_addr FROM spool") == [("::1",)]
    assert_serving(d)


# (path, reply code, enhanced code): RFC 5321's Path and nothing looser; 501 where the
# argument is no path at all, 553 where the path is one but its form is not accepted here.
# X.1.7 for the sender, X.1.3 for a recipient (RFC 3463).
BAD_PATHS: list[tuple[str, int]] = [
    ("<any@nic.org.mt(a.attacker.example>", 501),  # a comment: read as any@nic.org.mt
    ("<any@nic.org.mt (comment)>", 501),
    ("<(comment)any@nic.org.mt>", 501),
    ("<any(comment)@nic.org.mt>", 501),
    ("any@nic.org.mt", 501),  # no angle brackets
    ("<any@nic.org.mt", 501),
    ("<any@nic.org.mt>junk", 501),
    ("<a b@nic.org.mt>", 501),
    ("<a@b@nic.org.mt>", 501),
    ("<.a@nic.org.mt>", 501),
    ("<a..b@nic.org.mt>", 501),
    ("<a@nic..org.mt>", 501),
    ("<a@-nic.org.mt>", 501),
    ("<a@nic.org.mt.>", 501),
    ("<a@>", 501),
    ('<a"b"@nic.org.mt>', 501),  # quoted junk inside a local part
    ("<a\\@b@nic.org.mt>", 501),
    ("<any@nic.org.mt,evil@attacker.example>", 501),
    ("<@relay.example:any@nic.org.mt>", 553),  # a source route: read as any@nic.org.mt
    ("<@a.example,@b.example:any@nic.org.mt>", 553),
    ('<"any@nic.org.mt"@attacker.example>', 553),  # a quoted local part
    ('<"a b"@nic.org.mt>', 553),
    ("<any@[192.0.2.1]>", 553),  # an address literal
]


def test_an_envelope_address_outside_rfc5321_is_refused_never_rewritten(daemon: DaemonProc) -> None:
    d = daemon
    c = RawClient(d.connect())
    c.reply()
    assert c.cmd("EHLO client.test")[0] == 250
    wrong = []
    for path, code in BAD_PATHS:
        rcpt = path.replace("nic.org.mt", DOMAIN).replace("any@", "requests@")
        for command, enhanced in ((f"MAIL FROM:{path}", "5.1.7"), (f"RCPT TO:{rcpt}", "5.1.3")):
            reply = c.cmd(command)
            if reply[0] != code or codes(reply[1]) != (code, enhanced):
                wrong.append((command, reply[1]))
            if command.startswith("MAIL") and reply[0] != 250:  # the session goes on
                expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
        expect(c.cmd("RSET"), 250, "2.0.0")
    c.close()
    assert wrong == []
    assert spool_count(d) == 0


def test_an_envelope_address_is_stored_exactly_as_written(daemon: DaemonProc) -> None:
    d = daemon
    c = RawClient(d.connect())
    c.reply()
    assert c.cmd("EHLO client.test")[0] == 250
    for n, sender in enumerate(("<Admin.Name+tag@NIC.Example>", "<>", "<jörg@müller.example> SMTPUTF8")):
        expect(c.cmd(f"MAIL FROM:{sender}"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<Postmaster>"), 250, "2.1.5")  # RFC 5321 4.1.1.3: no domain
        expect(c.cmd(f"RCPT TO:<Help@{DOMAIN.upper()}>"), 250, "2.1.5")
        assert c.cmd("DATA")[0] == 354
        c.send(message(f"stored-{n}") + b".\r\n")
        queue_id(c.reply())
    c.close()
    assert d.query("SELECT mail_from, rcpt_to FROM spool ORDER BY id") == [
        (stored, json.dumps(["Postmaster", f"Help@{DOMAIN.upper()}"])) for stored in
        ("Admin.Name+tag@NIC.Example", "", "jörg@müller.example")]
