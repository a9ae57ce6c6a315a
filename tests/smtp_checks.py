"""Shared checks for the SMTP limit, content, session and TLS tests.

Replies are parsed into (code, enhanced status code, text) so that every test asserts both
codes exactly; the spool table is read directly to prove what was (not) stored.
"""

from __future__ import annotations

import re
import select
import smtplib
import socket
from collections.abc import Sequence

from daemon_proc import DOMAIN, DaemonProc
from smtp_raw import RawClient, message

ENHANCED = re.compile(r"^([245]\d\d)[ -]([245]\.\d{1,3}\.\d{1,3})(?: |$)")
"""A reply line with its RFC 3463 enhanced status code (class digit as the reply's)."""

GOOD_RCPT = f"requests@{DOMAIN}"


def codes(reply: str) -> tuple[int, str]:
    """(reply code, enhanced status code) of a reply's first line; fails if it has none."""
    first = reply.split("\r\n", 1)[0]
    m = ENHANCED.match(first)
    assert m is not None, f"no enhanced status code in {reply!r}"
    assert m.group(1)[0] == m.group(2)[0], f"class of enhanced code differs in {reply!r}"
    return int(m.group(1)), m.group(2)


def expect(reply: tuple[int, str], code: int, enhanced: str) -> str:
    """Assert a RawClient reply has exactly this code and enhanced code; returns the text."""
    got_code, text = reply
    assert got_code == code, text
    assert codes(text) == (code, enhanced), text
    for line in text.split("\r\n"):  # multi-line replies: the code on every line
        assert ENHANCED.match(line), f"line without enhanced code: {line!r}"
    return text


def all_replies(c: RawClient) -> list[tuple[int, str]]:
    """Every reply left until the server closes the connection (which it must do)."""
    out: list[tuple[int, str]] = []
    while True:
        try:
            out.append(c.reply())
        except ConnectionError:
            assert c.buf == b"", f"partial reply before close: {c.buf!r}"
            return out


def expect_close(c: RawClient) -> None:
    """The server has closed the connection and sent nothing more.

    A reset counts as closed: a client that was still sending when the server closed gets
    one. Only a read timeout (the server kept the connection open) fails.
    """
    try:
        while chunk := c.sock.recv(65536):
            c.buf += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("server did not close the connection") from None
    assert c.buf == b"", f"unexpected data before close: {c.buf!r}"


def wait_readable(sock: socket.socket, seconds: float) -> bool:
    """Pace a slow client: True as soon as the server sends something (or closes)."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable)


def spool_count(d: DaemonProc) -> int:
    return int(d.query("SELECT count(*) FROM spool")[0][0])


def spooled(d: DaemonProc) -> list[tuple[str, str, bytes]]:
    """(queue_id, rcpt_to JSON, raw) of every spooled message, in arrival order."""
    return [(str(q), str(r), bytes(raw)) for q, r, raw in d.query(
        "SELECT s.queue_id, s.rcpt_to, m.raw FROM spool s JOIN spool_messages m"
        " ON m.id = s.id ORDER BY s.id")]


def queue_id(reply: tuple[int, str]) -> str:
    text = expect(reply, 250, "2.0.0")
    assert text.startswith("250 2.0.0 Ok: queued as "), text
    return text.rsplit(" ", 1)[1]


def deliver(d: DaemonProc, subject: str, rcpts: Sequence[str] = (GOOD_RCPT,)) -> str:
    """Send one good message with smtplib; returns its queue id after checking the spool."""
    data = message(subject)
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("admin@nic.example")
        for r in rcpts:
            code, text = s.rcpt(r)
            assert (code, text[:5]) == (250, b"2.1.5"), text
        code, text = s.data(data)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), text
    qid = text.decode().rsplit(" ", 1)[1]
    rows = d.query("SELECT m.raw FROM spool s JOIN spool_messages m ON m.id = s.id"
                   " WHERE s.queue_id = ?", (qid,))
    assert rows == [(data,)]
    return qid


def assert_serving(d: DaemonProc) -> None:
    """The daemon is still running and still accepts and spools mail."""
    assert d.alive, "daemon exited"
    before = spool_count(d)
    deliver(d, "still-serving")
    assert spool_count(d) == before + 1


def start_transaction(c: RawClient, rcpts: Sequence[str] = (GOOD_RCPT,)) -> None:
    """MAIL, RCPT..., DATA on an open session, up to the 354."""
    expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
    code, text = c.cmd("DATA")
    assert code == 354, text
