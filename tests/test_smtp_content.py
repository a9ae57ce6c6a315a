"""What the daemon refuses inside DATA and on command lines, octet for octet.

Bare CR, bare LF, NUL and lines over 998 octets are refused (never normalised), and no
end-of-data look-alike ends DATA early, so SMTP smuggling finds no second message. All
through the raw client, since smtplib would rewrite line endings. One daemon serves the
module; each test compares the spool before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_proc import DOMAIN, DaemonProc
from smtp_checks import (
    GOOD_RCPT,
    all_replies,
    assert_serving,
    expect,
    queue_id,
    spool_count,
    spooled,
    start_transaction,
)
from smtp_raw import RawClient, dot_stuff, message, open_session


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    proc = DaemonProc(Path(tmp_path_factory.mktemp("content"))).start()
    yield proc
    if proc.alive:
        proc.kill()


@pytest.fixture
def c(d: DaemonProc) -> Iterator[RawClient]:
    client = open_session(d.connect())
    yield client
    client.close()


def send_data(c: RawClient, data: bytes) -> tuple[int, str]:
    """One whole transaction with ``data`` sent as is (plus the end-of-data line)."""
    start_transaction(c)
    c.send(data + b".\r\n")
    return c.reply()


def refused_and_not_spooled(d: DaemonProc, c: RawClient, data: bytes, code: int,
                            enhanced: str) -> str:
    before = spool_count(d)
    text = expect(send_data(c, data), code, enhanced)
    assert spool_count(d) == before
    expect(c.cmd("NOOP"), 250, "2.0.0")  # the session goes on
    assert_serving(d)
    return text


# -- line length ---------------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"x" * 998, b"." + b"y" * 997, b".." * 499],
                         ids=["998", "998-dot-stuffed", "998-all-dots"])
def test_a_line_of_998_octets_is_accepted(d: DaemonProc, c: RawClient, line: bytes) -> None:
    data = message("line-998", body="") + line + b"\r\n"
    qid = queue_id(send_data(c, dot_stuff(data)))
    assert [raw for q, _, raw in spooled(d) if q == qid] == [data]


@pytest.mark.parametrize("length", [999, 1000, 1001, 1002, 5000, 100_000])
@pytest.mark.parametrize("where", ["body", "header"])
def test_a_longer_line_is_refused(d: DaemonProc, c: RawClient, length: int, where: str) -> None:
    long_line = b"z" * length
    if where == "body":
        data = message("long", body="") + long_line + b"\r\n"
    else:
        data = b"X-Long: " + long_line[8:] + b"\r\n" + message("long")
    text = refused_and_not_spooled(d, c, data, 500, "5.5.2")
    assert "Line too long" in text


def test_a_dot_stuffed_line_of_999_octets_is_refused(d: DaemonProc, c: RawClient) -> None:
    data = message("long", body="") + b"." * 999 + b"\r\n"
    refused_and_not_spooled(d, c, dot_stuff(data), 500, "5.5.2")


@pytest.mark.parametrize("line", [
    "NOOP " + "x" * 600,                               # over aiosmtpd's 512 for commands
    "MAIL FROM:<" + "a" * 3000 + "@nic.example>",       # over the 1001-octet read limit
    "RCPT TO:<" + "b" * 100_000 + "@" + DOMAIN + ">",
], ids=["600", "3000", "100000"])
def test_an_overlong_command_line_is_refused(d: DaemonProc, c: RawClient, line: str) -> None:
    before = spool_count(d)
    expect(c.cmd(line), 500, "5.5.2")
    # Nothing of the long line was acted on: no transaction was opened by it.
    expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 503, "5.5.1")
    expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    expect(c.cmd("RSET"), 250, "2.0.0")
    assert spool_count(d) == before
    assert_serving(d)


# -- bare CR, bare LF, NUL -----------------------------------------------------------------

BARE = {
    "lf-in-body": message("bare", body="one\ntwo\r\n"),
    "lf-before-crlf": message("bare", body="one\n\r\ntwo\r\n"),
    "lf-in-header": b"Subject: a\nX-Injected: b\r\n" + message("bare"),
    "cr-in-body": message("bare", body="one\rtwo\r\n"),
    "cr-before-crlf": message("bare", body="one\r\r\n"),
    "lf-cr": message("bare", body="one\n\rtwo\r\n"),
    "cr-in-header": b"Subject: a\rX-Injected: b\r\n" + message("bare"),
}


@pytest.mark.parametrize("data", BARE.values(), ids=BARE.keys())
def test_bare_cr_or_lf_is_refused(d: DaemonProc, c: RawClient, data: bytes) -> None:
    refused_and_not_spooled(d, c, data, 550, "5.6.11")


@pytest.mark.parametrize("data", [
    message("nul", body="a\0b\r\n"),
    b"Subject: \0\r\n" + message("nul"),
    message("nul", body="\0\r\n"),
], ids=["body", "header", "alone"])
def test_nul_is_refused(d: DaemonProc, c: RawClient, data: bytes) -> None:
    refused_and_not_spooled(d, c, data, 550, "5.6.0")


# -- SMTP smuggling ------------------------------------------------------------------------

SMUGGLING_ENDS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CRCRLF.CRCRLF": b"\r\r\n.\r\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "LF.CR": b"\n.\r",
}


def smuggled_part(name: str) -> bytes:
    return message(f"smuggled-{name}", sender="spoofed@victim.example")


def smuggling_payload(name: str, fake_end: bytes) -> tuple[bytes, bytes]:
    """(what the client sends after 354, the smuggled message) for one fake end of data."""
    hidden = smuggled_part(name)
    payload = (message(f"carrier-{name}", body="carrier body")
               + fake_end
               + b"MAIL FROM:<spoofed@victim.example>\r\n"
               + f"RCPT TO:<{GOOD_RCPT}>\r\n".encode()
               + b"DATA\r\n"
               + hidden
               + b".\r\n")
    return payload, hidden


@pytest.mark.parametrize(("name", "fake_end"), SMUGGLING_ENDS.items(), ids=SMUGGLING_ENDS.keys())
def test_smuggling_does_not_end_data_early(d: DaemonProc, c: RawClient, name: str,
                                           fake_end: bytes) -> None:
    before = spool_count(d)
    payload, hidden = smuggling_payload(name, fake_end)
    start_transaction(c)
    c.send(payload + b"QUIT\r\n")  # one write: a server that split DATA would answer more
    replies = all_replies(c)
    assert len(replies) == 2, replies
    expect(replies[0], 550, "5.6.11")  # the whole payload was one message, refused
    expect(replies[1], 221, "2.0.0")
    after = spooled(d)
    assert len(after) == before  # not the carrier, and above all not a second message
    assert not [raw for _, _, raw in after if raw.startswith(hidden)]
    assert not [raw for _, _, raw in after if hidden in raw]
    assert_serving(d)


def test_the_smuggling_check_would_see_a_second_message(d: DaemonProc, c: RawClient) -> None:
    """Control: with a real end of data the same payload is two messages, and the test's
    reading of replies and spool tells them apart."""
    before = len(spooled(d))
    payload, hidden = smuggling_payload("control", b"\r\n.\r\n")
    start_transaction(c)
    c.send(payload + b"QUIT\r\n")
    replies = all_replies(c)
    assert [r[0] for r in replies] == [250, 250, 250, 354, 250, 221], replies
    first, second = queue_id(replies[0]), queue_id(replies[4])
    new = spooled(d)[before:]
    assert [q for q, _, _ in new] == [first, second]
    assert new[1][2] == hidden
