"""Abuse at scale, against the real daemon over real sockets: what the single-case tests of
test_smtp_limits.py and test_smtp_content.py do not cover (those prove each limit, NUL, long
lines and smuggling; bench/abuse runs every abuse, these ones included, and prints figures).

Messages that SMTP must accept are followed into the worker: each must reach an end state
at its first attempt (no crash, no retry loop). Memory is sampled every 50 ms from /proc
while a big body is sent, so that a buffer freed before the reply is still seen.
"""

from __future__ import annotations

import select
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_proc import DaemonProc
from smtp_checks import (
    GOOD_RCPT,
    assert_serving,
    expect,
    expect_close,
    queue_id,
    spool_count,
    start_transaction,
)
from smtp_raw import RawClient, message, open_session

from tldops_mta.intake.content_checks import LongLineGuard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _common import RssSampler  # one /proc sampler, shared with the benches

Start = Callable[..., DaemonProc]

PER_IP = 50
"""The production max_connections_per_ip, left as it is: the sessions are spread instead."""


def send_message(d: DaemonProc, data: bytes, mail_options: str = "") -> str:
    """One message over a raw session; its queue id (it must be accepted)."""
    c = open_session(d.connect())
    try:
        expect(c.cmd(f"MAIL FROM:<admin@nic.example>{mail_options}"), 250, "2.1.0")
        expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 250, "2.1.5")
        assert c.cmd("DATA")[0] == 354
        c.send(data + b".\r\n")
        return queue_id(c.reply())
    finally:
        c.close()


def end_state(d: DaemonProc, qid: str, timeout: float = 30.0) -> tuple[str, str, int]:
    """(status, reason, attempts) once the worker has logged the message processed."""
    rec = d.wait_processed(qid, timeout=timeout)
    status, reason, attempts = d.query(
        "SELECT status, coalesce(reason, ''), attempts FROM spool WHERE queue_id = ?", (qid,))[0]
    assert rec["status"] == status
    return str(status), str(reason), int(attempts)


def no_retries(d: DaemonProc) -> None:
    """The worker neither failed an attempt nor gave a message up (it did not choke)."""
    assert d.events("attempt failed, will retry") == []
    assert d.events("message failed") == []


# -- connections -------------------------------------------------------------------------

def test_500_sessions_are_held_at_once(start_daemon: Start) -> None:
    d = start_daemon()  # production limits: 1000 in all, 50 per address
    assert d.proc is not None
    n = 500
    sources = [f"127.0.0.{10 + i // PER_IP}" for i in range(n)]
    clients: list[RawClient] = []
    try:
        with RssSampler(d.proc.pid) as rss:
            before = rss.window()
            for src in sources:  # every connection first: all 500 are open before any greeting
                clients.append(RawClient(socket.create_connection(
                    (d.host, d.port), timeout=30, source_address=(src, 0))))
            for c in clients:
                assert c.reply()[0] == 220
            for c in clients:
                c.send(b"EHLO held.example\r\n")
            for c in clients:
                assert c.reply()[0] == 250
            held = rss.sample()
            for c in clients:  # still all there, all answering
                c.send(b"NOOP\r\n")
            for c in clients:
                expect(c.reply(), 250, "2.0.0")
        # Held sessions cost the SMTP process memory, not much: under 50 KB each (about
        # 11 KB measured). Its children (the worker starts on its own schedule) are not read.
        assert held[1] - before[1] < n * 50 / 1024, (before, held)
        for c in clients:
            c.send(b"QUIT\r\n")
        for c in clients:
            expect(c.reply(), 221, "2.0.0")
            expect_close(c)
    finally:
        for c in clients:
            c.close()
    assert spool_count(d) == 0
    assert_serving(d)


# -- the worker: what SMTP accepts must not choke it ---------------------------------------

@pytest.mark.parametrize("line", [
    b"X-Filler: value %d\r\n",
    b"Received: from relay%d.example by nic.example; Wed, 25 Nov 2026 12:00:00 +0000\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=nic.example; s=s%d; h=from; bh=AAAA; b=AAAA\r\n",
], ids=["x-filler", "received", "dkim-signature"])
def test_10000_header_lines_are_processed_to_an_end_state(start_daemon: Start,
                                                          line: bytes) -> None:
    d = start_daemon()
    data = b"".join(line % i for i in range(10_000)) + message("ten-thousand", body="ccTLD: mt\r\n")
    assert len(data) < 2 * 1024 * 1024
    qid = send_message(d, data)
    status, reason, attempts = end_state(d, qid)
    # Read to the end: what is refused is the request form, which the worker only reaches
    # after the header (and, for requests, the From: address) was read.
    assert (status, attempts) == ("rejected", 1), reason
    assert reason.startswith("the request does not say what it asks"), reason
    no_retries(d)
    assert_serving(d)


def nested_mime(depth: int) -> bytes:
    head = (b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b0"\r\n'
            + message("nested", body=""))
    opening = b"".join(b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n'
                       % (i - 1, i) for i in range(1, depth))
    leaf = b"--b%d\r\nContent-Type: text/plain\r\n\r\nccTLD: mt\r\n" % (depth - 1)
    closing = b"".join(b"--b%d--\r\n" % i for i in range(depth - 1, -1, -1))
    return head + opening + leaf + closing


@pytest.mark.parametrize("depth", [1000, 5000])
def test_deeply_nested_mime_is_rejected_at_the_first_attempt(start_daemon: Start,
                                                             depth: int) -> None:
    """The stdlib parser recurses once per level; before, its RecursionError was taken
    for a passing failure: five attempts over minutes, then 'failed' with a traceback."""
    d = start_daemon()
    qid = send_message(d, nested_mime(depth))
    assert end_state(d, qid) == (
        "rejected", "the message's MIME parts are nested too deeply to be read", 1)
    no_retries(d)
    assert_serving(d)


def test_moderately_nested_mime_is_read_through(start_daemon: Start) -> None:
    """Control: 200 levels are parsed, and the request is judged on its form."""
    d = start_daemon()
    qid = send_message(d, nested_mime(200))
    status, reason, attempts = end_state(d, qid)
    assert (status, attempts) == ("rejected", 1)
    assert "nested" not in reason and reason.startswith("the request does not say"), reason
    no_retries(d)


# -- 8-bit headers without SMTPUTF8 ---------------------------------------------------------

def from_8bit(display: str, encoding: str, subject: str) -> bytes:
    return (f"From: {display} <admin@nic.example>\r\nTo: {GOOD_RCPT}\r\n"
            f"Subject: {subject} Grüße\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{subject}@nic.example>\r\n\r\nccTLD: mt\r\n").encode(encoding)


def test_8bit_headers_without_smtputf8_are_read_as_utf8(start_daemon: Start) -> None:
    """RFC 6531 forbids raw 8-bit headers to a client that did not say SMTPUTF8, and puts
    no duty on the server; legacy clients send them, and refusing them at SMTP would only
    lose their mail. So they are accepted, and read as the UTF-8 of RFC 6532, the same with
    or without SMTPUTF8; octets that are not UTF-8 leave the From: unreadable, and a
    look-alike '@' is caught once decoded."""
    d = start_daemon()
    plain = send_message(d, from_8bit("Jörg Müller", "utf-8", "utf8-plain"))
    declared = send_message(d, from_8bit("Jörg Müller", "utf-8", "utf8-declared"), " SMTPUTF8")
    latin1 = send_message(d, from_8bit("Jörg Müller", "latin-1", "latin1"))
    lookalike = send_message(d, from_8bit("admin\uff20nic.mt", "utf-8", "lookalike"))

    form_problem = "the request does not say what it asks"
    for qid in (plain, declared):
        status, reason, attempts = end_state(d, qid)
        assert (status, attempts) == ("rejected", 1)
        assert reason.startswith(form_problem), reason  # From: read; on to the form
    status, reason, _ = end_state(d, latin1)
    assert status == "rejected"
    assert reason == ("the From: line holds bytes that are not valid UTF-8; send it again "
                      "encoded as UTF-8")
    status, reason, _ = end_state(d, lookalike)
    assert status == "rejected"
    assert "looks like '@'" in reason, reason
    assert d.query("SELECT queue_id, smtputf8 FROM spool WHERE queue_id IN (?, ?) ORDER BY id",
                   (plain, declared)) == [(plain, 0), (declared, 1)]
    no_retries(d)


# -- a 50 MB body announced as small ------------------------------------------------------

BIG = 50 * 1024 * 1024
MAX_GROWTH_MB = 10.0
"""A 50 MB body may not add more than this to the SMTP process's memory while it is sent."""


def send_big(c: RawClient, chunk: bytes, total: int) -> int:
    """Send ``chunk`` until ``total`` octets are out; stops early if the server speaks."""
    sent = 0
    block = chunk * (1024 * 1024 // len(chunk))
    while sent < total and not select.select([c.sock], [], [], 0)[0]:
        c.send(block)
        sent += len(block)
    return sent


@pytest.mark.parametrize(("chunk", "code", "enhanced"), [
    (b"x" * 78 + b"\r\n", 552, "5.3.4"),  # short lines: refused for its size
    (b"y", 500, "5.5.2"),  # one endless line: refused for its line length
], ids=["lines", "one-line"])
def test_a_50mb_body_announced_small_is_refused_in_bounded_memory(
        start_daemon: Start, chunk: bytes, code: int, enhanced: str) -> None:
    """aiosmtpd drops the data of an over-long message but kept every fragment of a line
    that had not ended: one 50 MB line without CRLF held 50 MB (200 MB: 230 MB resident)."""
    d = start_daemon()
    assert d.proc is not None
    c = open_session(d.connect(timeout=60))
    with RssSampler(d.proc.pid) as rss:
        before = rss.window()
        expect(c.cmd("MAIL FROM:<admin@nic.example> SIZE=1000"), 250, "2.1.0")
        expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 250, "2.1.5")
        assert c.cmd("DATA")[0] == 354
        c.send(message("big", body=""))
        assert send_big(c, chunk, BIG) >= BIG  # nothing answered before the end of data
        # The end of data and a pipelined command in one write: both are answered.
        c.send(b"\r\n.\r\nNOOP\r\n")
        expect(c.reply(), code, enhanced)
        expect(c.reply(), 250, "2.0.0")
        peak = rss.window_peak
    # The SMTP process alone reads a refused body (the worker, starting on its own
    # schedule, would add its own tens of MB to a sum over the children).
    assert peak[1] - before[1] < MAX_GROWTH_MB, (before, peak)
    # The session goes on, with a fresh transaction that takes a normal message.
    expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 503, "5.5.1")
    start_transaction(c)
    c.send(message("after-big") + b".\r\n")
    queue_id(c.reply())
    assert spool_count(d) == 1
    assert_serving(d)


# -- the guard behind the one-line case, read by read ---------------------------------------

def passed_on(guard: LongLineGuard, reads: list[bytes]) -> bytes:
    return b"".join(guard.feed(r) for r in reads)


def test_the_guard_passes_every_line_within_the_limit_whatever_the_reads() -> None:
    """The count restarts at each CRLF, also one split between two reads: lines of exactly
    the limit, cut anywhere, pass untouched (counted across the split CRLF, they would not)."""
    reads = [b"x" * 9 + b"\r", b"\n" + b"y" * 9 + b"\r", b"\n", b"z" * 5, b"z" * 5 + b"\r\n.\r\n"]
    guard = LongLineGuard(10)
    assert passed_on(guard, reads) == b"".join(reads)
    assert not guard.dropping


def test_the_guard_drops_the_rest_of_a_long_line_up_to_the_end_of_data() -> None:
    guard = LongLineGuard(10)
    out = passed_on(guard, [b"ok\r\n" + b"x" * 8, b"x" * 8, b"x" * 1000,
                            b"\r\nMAIL FROM:<a@b.example>\r\n", b"more\r", b"\n.", b"\r\nNOOP\r\n"])
    # What aiosmtpd sees: the line up to the read that passed the limit, then the end of
    # data and what follows it (a pipelined command), nothing in between.
    assert out == b"ok\r\n" + b"x" * 16 + b"\r\n.\r\nNOOP\r\n"
    assert not guard.dropping and guard.unended == 0


def test_the_guard_sees_an_end_of_data_split_between_reads_and_no_fake_one() -> None:
    guard = LongLineGuard(4)
    # A CR that may begin the end of data is held back, neither lost nor passed twice.
    assert passed_on(guard, [b"abcdefgh\r", b"\n.\r\n"]) == b"abcdefgh\r\n.\r\n"
    guard = LongLineGuard(10)
    out = passed_on(guard, [b"x" * 20, b"\n.\n", b"\r.\r", b"\r\n.", b"\r", b"\n"])
    assert out == b"x" * 20 + b"\r\n.\r\n"  # only the real one ends the dropping
