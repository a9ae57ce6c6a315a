"""Each SMTP limit, proved over real sockets against the real daemon.

Every refusal is checked for its exact reply code and enhanced status code, for leaving the
spool empty, and for leaving the daemon serving. Waits are on events (a reply, a close, a
log line), never on sleeps.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
from daemon_proc import DOMAIN, DaemonProc
from smtp_checks import (
    GOOD_RCPT,
    assert_serving,
    expect,
    expect_close,
    queue_id,
    spool_count,
    spooled,
    start_transaction,
    wait_readable,
)
from smtp_raw import RawClient, message, open_session

Start = Callable[..., DaemonProc]

DEFAULT_MAX_SIZE = 2 * 1024 * 1024


def padded(size: int) -> bytes:
    """A well-formed message of exactly ``size`` octets (CRLF line ends, short lines)."""
    head = message("size", body="")
    full, rest = divmod(size - len(head), 80)
    line = b"x" * 78 + b"\r\n"
    if rest == 1:  # no line is 1 octet long: make one line 81 octets instead
        body = line * (full - 1) + b"x" * 79 + b"\r\n"
    else:
        body = line * full + (b"x" * (rest - 2) + b"\r\n" if rest else b"")
    data = head + body
    assert len(data) == size
    return data


def connect_from(d: DaemonProc, source: str | None = None) -> RawClient:
    sock = socket.create_connection((d.host, d.port), timeout=10,
                                    source_address=(source, 0) if source else None)
    return RawClient(sock)


def admitted(c: RawClient) -> None:
    code, text = c.reply()
    assert code == 220, text
    expect(c.cmd("NOOP"), 250, "2.0.0")


def refused(c: RawClient, text: str) -> None:
    got = expect(c.reply(), 421, "4.7.0")
    assert got == text
    expect_close(c)


def close_and_wait(d: DaemonProc, c: RawClient) -> None:
    """Close a session and wait until the daemon has seen it close (its debug log line)."""
    mark = d.mark()
    c.close()
    d.wait_for("connection closed", after=mark)


# -- message size ------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [None, 4096], ids=["default-2MiB", "configured-4096"])
def test_size_parameter_over_the_limit_is_refused(start_daemon: Start, limit: int | None) -> None:
    d = start_daemon({} if limit is None else {"server.max_message_size": limit})
    size = limit or DEFAULT_MAX_SIZE
    c = open_session(d.connect())
    code, ehlo = c.cmd("EHLO client.test")
    assert code == 250 and f"250-SIZE {size}\r\n" in ehlo + "\r\n", ehlo
    expect(c.cmd(f"MAIL FROM:<admin@nic.example> SIZE={size + 1}"), 552, "5.3.4")
    expect(c.cmd(f"MAIL FROM:<admin@nic.example> SIZE={size * 10}"), 552, "5.3.4")
    # The refused MAIL opened no transaction: RCPT still needs a MAIL first.
    expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 503, "5.5.1")
    expect(c.cmd(f"MAIL FROM:<admin@nic.example> SIZE={size}"), 250, "2.1.0")
    expect(c.cmd("RSET"), 250, "2.0.0")
    expect(c.cmd("QUIT"), 221, "2.0.0")
    assert spool_count(d) == 0
    assert_serving(d)


def test_message_data_over_the_limit_is_refused(start_daemon: Start) -> None:
    limit = 2048
    d = start_daemon({"server.max_message_size": limit})
    c = open_session(d.connect())

    exact = padded(limit)
    start_transaction(c)
    c.send(exact + b".\r\n")
    qid = queue_id(c.reply())
    assert spooled(d) == [(qid, json.dumps([GOOD_RCPT]), exact)]

    for too_big in (padded(limit + 1), padded(limit * 50)):
        start_transaction(c)
        c.send(too_big + b".\r\n")
        expect(c.reply(), 552, "5.3.4")
        assert spool_count(d) == 1
    # A small SIZE= promise does not let more data through either.
    expect(c.cmd("MAIL FROM:<admin@nic.example> SIZE=100"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 250, "2.1.5")
    assert c.cmd("DATA")[0] == 354
    c.send(padded(limit + 500) + b".\r\n")
    expect(c.reply(), 552, "5.3.4")
    assert spool_count(d) == 1
    # The session goes on after the refusal, with a fresh transaction.
    expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 503, "5.5.1")
    expect(c.cmd("QUIT"), 221, "2.0.0")
    assert_serving(d)


# -- connections -------------------------------------------------------------------------

def test_total_connection_limit(start_daemon: Start) -> None:
    d = start_daemon({"server.max_connections": 2, "server.max_connections_per_ip": 100,
                      "server.limit_exempt": ["127.0.0.0/8"]})
    first, second = connect_from(d), connect_from(d, "127.0.0.2")
    admitted(first)
    admitted(second)
    mark = d.mark()
    for source in (None, "127.0.0.2", "127.0.0.3"):  # exempt networks count in the total
        refused(connect_from(d, source), "421 4.7.0 Too many connections, try again later")
    assert d.wait_for("connection refused", after=mark)["reply"] == "421 4.7.0"
    assert spool_count(d) == 0

    close_and_wait(d, first)
    third = connect_from(d)
    admitted(third)
    refused(connect_from(d), "421 4.7.0 Too many connections, try again later")
    for c in (second, third):
        close_and_wait(d, c)
    assert_serving(d)


def test_per_address_connection_limit_and_exempt_networks(start_daemon: Start) -> None:
    d = start_daemon({"server.max_connections_per_ip": 2,
                      "server.limit_exempt": ["127.0.0.2/32"]})
    mine = [connect_from(d, "127.0.0.1") for _ in range(2)]
    for c in mine:
        admitted(c)
    too_many = "421 4.7.0 Too many connections from your address, try again later"
    refused(connect_from(d, "127.0.0.1"), too_many)

    # Another address has its own count ...
    other = [connect_from(d, "127.0.0.3") for _ in range(2)]
    for c in other:
        admitted(c)
    refused(connect_from(d, "127.0.0.3"), too_many)
    # ... and an exempt one is not counted at all.
    exempt = [connect_from(d, "127.0.0.2") for _ in range(5)]
    for c in exempt:
        admitted(c)
    assert spool_count(d) == 0

    # Closing one of 127.0.0.1's sessions frees exactly one place for it.
    close_and_wait(d, mine.pop())
    again = connect_from(d, "127.0.0.1")
    admitted(again)
    mine.append(again)
    refused(connect_from(d, "127.0.0.1"), too_many)
    for c in mine + other + exempt:
        close_and_wait(d, c)
    assert_serving(d)


# -- recipients --------------------------------------------------------------------------

def test_recipient_limit(start_daemon: Start) -> None:
    d = start_daemon({"server.max_recipients": 2})
    c = open_session(d.connect())
    expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<nobody@{DOMAIN}>"), 550, "5.1.1")  # refused ones take no place
    expect(c.cmd(f"RCPT TO:<requests@{DOMAIN}>"), 250, "2.1.5")
    expect(c.cmd(f"RCPT TO:<who@{DOMAIN}>"), 250, "2.1.5")
    expect(c.cmd(f"RCPT TO:<help@{DOMAIN}>"), 452, "4.5.3")
    expect(c.cmd(f"RCPT TO:<postmaster@{DOMAIN}>"), 452, "4.5.3")
    assert spool_count(d) == 0
    assert c.cmd("DATA")[0] == 354
    data = message("two-rcpts")
    c.send(data + b".\r\n")
    qid = queue_id(c.reply())
    # Only the two accepted recipients were spooled.
    assert spooled(d) == [(qid, json.dumps([f"requests@{DOMAIN}", f"who@{DOMAIN}"]), data)]
    # The limit is per transaction: the next one starts from zero.
    start_transaction(c, [f"help@{DOMAIN}", f"postmaster@{DOMAIN}"])
    c.send(b".\r\n")
    queue_id(c.reply())
    expect(c.cmd("QUIT"), 221, "2.0.0")
    assert spool_count(d) == 2
    assert_serving(d)


# -- timeouts ----------------------------------------------------------------------------

def test_idle_timeout_after_the_greeting(start_daemon: Start) -> None:
    d = start_daemon({"server.idle_timeout": 0.5})
    c = RawClient(d.connect())
    assert c.reply()[0] == 220
    t0 = time.monotonic()
    text = expect(c.reply(), 421, "4.4.2")  # blocks until the server acts
    waited = time.monotonic() - t0
    assert text == "421 4.4.2 Timeout, closing connection"
    expect_close(c)
    assert 0.3 <= waited < 5, waited
    assert spool_count(d) == 0
    assert_serving(d)


def test_idle_timeout_in_the_middle_of_data(start_daemon: Start) -> None:
    d = start_daemon({"server.idle_timeout": 0.5})
    c = open_session(d.connect())
    start_transaction(c)
    c.send(message("never-finished"))  # no end-of-data dot
    expect(c.reply(), 421, "4.4.2")
    expect_close(c)
    assert spool_count(d) == 0
    assert_serving(d)


def test_session_timeout_cuts_a_slowloris(start_daemon: Start) -> None:
    d = start_daemon({"server.idle_timeout": 60.0, "server.session_timeout": 1.0})
    sock = d.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = RawClient(sock)
    assert c.reply()[0] == 220
    t0 = time.monotonic()
    command = b"MAIL FROM:<" + b"a" * 400  # a line that never ends, one octet at a time
    sent = 0
    while sent < len(command) and not wait_readable(sock, 0.02):
        sock.send(command[sent:sent + 1])
        sent += 1
    text = expect(c.reply(), 421, "4.4.2")
    waited = time.monotonic() - t0
    assert text == "421 4.4.2 Session too long, closing connection"
    expect_close(c)
    assert 0 < sent < len(command)
    assert 0.8 <= waited < 10, waited  # the session deadline, not the 60 s idle timeout
    assert spool_count(d) == 0
    assert_serving(d)


def test_session_timeout_cuts_a_busy_client_too(start_daemon: Start) -> None:
    d = start_daemon({"server.idle_timeout": 0.5, "server.session_timeout": 1.5})
    c = open_session(d.connect())
    t0 = time.monotonic()
    noops = 0
    while not wait_readable(c.sock, 0.05):  # stop as soon as the server speaks
        reply = c.cmd("NOOP")  # each command restarts the idle timer
        if reply[0] != 250:
            break
        noops += 1
    else:
        reply = c.reply()
    waited = time.monotonic() - t0
    assert reply == (421, "421 4.4.2 Session too long, closing connection")
    expect_close(c)
    assert waited >= 1.2 and noops > 5, (waited, noops)  # outlived the idle timeout
    assert spool_count(d) == 0
    assert_serving(d)


# -- commands per session ----------------------------------------------------------------

def test_command_limit(start_daemon: Start) -> None:
    d = start_daemon({"server.max_commands": 5})
    c = open_session(d.connect())  # EHLO is command 1
    expect(c.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 250, "2.1.5")
    expect(c.cmd("NOOP"), 250, "2.0.0")
    expect(c.cmd("RSET"), 250, "2.0.0")
    text = expect(c.cmd("NOOP"), 421, "4.7.0")
    assert text == "421 4.7.0 Too many commands in one session"
    expect_close(c)
    assert spool_count(d) == 0
    assert_serving(d)


def test_command_limit_with_pipelined_commands(start_daemon: Start) -> None:
    d = start_daemon({"server.max_commands": 5})
    c = open_session(d.connect())
    c.send(b"MAIL FROM:<admin@nic.example>\r\n" + f"RCPT TO:<{GOOD_RCPT}>\r\n".encode()
           + b"DATA\r\n" + message("over-budget") + b".\r\n" + b"NOOP\r\n" * 20)
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 250, "2.1.5")
    assert c.reply()[0] == 354
    queue_id(c.reply())  # DATA was command 4; its message is kept
    expect(c.reply(), 250, "2.0.0")  # command 5
    expect(c.reply(), 421, "4.7.0")
    expect_close(c)  # and not one reply more to the other pipelined commands
    assert spool_count(d) == 1
    assert_serving(d)
