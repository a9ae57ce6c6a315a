"""Fuzzing the parsers and the SMTP session (issue 8): hypothesis here, atheris in tests/fuzz.

The property tests drive the same checks as the atheris targets (tests/fuzz/targets.py:
documented refusals only, and the invariants named there) with hypothesis, from the same
seeds spliced with random octets; a short atheris run goes through tests/fuzz/run. The
regression tests replay what fuzzing found, each against the code that had the fault: the
parsers directly, the SMTP front as the real daemon over a real socket.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_proc import DaemonProc
from fuzz import seeds, targets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from smtp_checks import deliver, spool_count
from smtp_raw import RawClient, open_session

from tldops_mta.auth.addresses import AddressError
from tldops_mta.intake import smtp_paths
from tldops_mta.policy import request_form

RUN = Path(__file__).resolve().parent / "fuzz" / "run"


def fast(examples: int) -> settings:
    return settings(deadline=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def _spliced(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed with a few ranges replaced by random octets: near the valid inputs, where the
    parsers decide the most."""
    data = draw(st.sampled_from(pool))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 16)))
        data = data[:i] + draw(st.binary(max_size=16)) + data[j:]
    return data


def inputs(name: str, max_size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), _spliced(seeds.for_target(name)))


@st.composite
def _spliced_path(draw: st.DrawFn) -> str:
    """An envelope path of the seeds with a little text put in somewhere."""
    path = draw(st.sampled_from(seeds.ENVELOPE_PATHS))
    i = draw(st.integers(0, len(path)))
    return path[:i] + draw(st.text(max_size=4)) + path[i:]


# -- property tests ----------------------------------------------------------------------------

@fast(2000)
@given(data=inputs("address", 300))
def test_address_parser_refuses_or_reads_a_plain_address(data: bytes) -> None:
    targets.address_one(data)


@fast(1000)
@given(value=st.text(max_size=200))
def test_address_parser_on_any_text(value: str) -> None:
    targets.check_address(value)


@fast(1000)
@given(path=st.one_of(st.text(max_size=80).map(lambda t: "<" + t), _spliced_path()), reverse=st.booleans())
def test_envelope_path_is_refused_or_taken_exactly_as_written(path: str, reverse: bool) -> None:
    try:
        read = smtp_paths.parse(path, reverse=reverse)
    except AddressError as e:
        assert e.reason and e.code
        return
    written = read.address if read.address == "<>" else f"<{read.address}>"
    assert path == written + read.rest and (not read.rest or read.rest[0] == " ")
    assert smtp_paths.parse(written, reverse=reverse).address == read.address
    assert not any(c in read.address for c in " \t()[]\\\",:;") and read.address.count("@") <= 1


@fast(800)
@given(data=inputs("form", 2000))
def test_request_form_never_raises_and_reports_real_lines(data: bytes) -> None:
    targets.form_one(data)


@fast(600)
@given(data=inputs("message", 3000))
@example(b"Content-Type: text/plain; charset=\"a\x00b\"\r\n\r\nccTLD: mt\r\n")
def test_spooled_message_is_read_without_unhandled_errors(data: bytes) -> None:
    targets.message_one(data)


@fast(2000)
@given(data=inputs("rdap", 4000))
def test_rdap_answer_gives_an_answer_and_never_invents_an_address(data: bytes) -> None:
    targets.rdap_one(data)


@fast(2000)
@given(data=inputs("whois", 2000))
def test_whois_answer_gives_an_answer_and_never_invents_an_address(data: bytes) -> None:
    targets.whois_one(data)


@pytest.fixture(scope="module")
def smtp() -> Iterator[targets.SmtpHarness]:
    h = targets.SmtpHarness()
    yield h
    h.close()


@fast(400)
@given(data=inputs("smtp", 2000))
def test_smtp_session_on_raw_octets(smtp: targets.SmtpHarness, data: bytes) -> None:
    smtp.check(data)


# -- regressions: the parsers ------------------------------------------------------------------

@pytest.mark.parametrize("section", ["<![ abc [ d ]]>", "<![foo[ x ]]>", "<![ x"])
def test_html_with_an_unnamed_marked_section_is_read(section: str) -> None:
    """Found by the form target: the stdlib's HTMLParser raised AssertionError on "<![ x[",
    which failed every attempt at an HTML-only request until it was given up."""
    raw = (f"From: admin@nic.org.mt\r\nContent-Type: text/html\r\n\r\n{section}"
           "<p>Action: remove</p><p>ccTLD: mt</p>").encode()
    text = request_form.body_text(raw)
    assert request_form.named_tlds(text) == ["mt"], text
    targets.message_one(raw)


@pytest.mark.parametrize("param", ['charset="a\x00b"', "charset=idna", "charset*=x\x00y''abc"])
def test_a_charset_no_codec_takes_falls_back_to_utf8(param: str) -> None:
    """Found by the message target: a charset name with a NUL raised ValueError out of
    body_text (from the decoding, or from the stdlib's reading of an RFC 2231 charset), and
    idna, which has no 'replace', UnicodeError."""
    raw = f"Content-Type: text/plain; {param}\r\n\r\nccTLD: mt\r\n".encode()
    assert request_form.named_tlds(request_form.body_text(raw)) == ["mt"]


# -- regressions: the SMTP front (the real daemon) -------------------------------------------

MESSAGE = (b"From: admin@nic.org.mt\r\nTo: requests@tld-ops.localhost\r\nSubject: s\r\n"
           b"Date: Thu, 01 Jan 2026 10:00:00 +0000\r\n\r\nccTLD: mt\r\n")


@pytest.fixture(scope="module")
def relay_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """One daemon for the SMTP regressions; loopback is a trusted relay (XFORWARD is live)."""
    d = DaemonProc(tmp_path_factory.mktemp("fuzz-regressions"),
                   {"server.trusted_relays": ["127.0.0.1/32"]}).start()
    yield d
    if d.alive:
        d.stop()


def _session(d: DaemonProc, octets: bytes) -> list[tuple[int, str]]:
    """Send ``octets`` at once (pipelined), then every reply until the server closes."""
    c = RawClient(d.connect())
    c.send(octets)
    out: list[tuple[int, str]] = []
    try:
        while True:
            out.append(c.reply())
    except (ConnectionError, TimeoutError):
        pass
    finally:
        c.close()
    return out


def _no_session_errors(d: DaemonProc, mark: int) -> None:
    """No error logged since ``mark``. Log lines arrive in order: once a message delivered
    now is logged as spooled, every line the session before it wrote is in."""
    qid = deliver(d, "barrier")
    d.wait_for("message spooled", lambda r: r.get("queue_id") == qid, after=mark)
    errors = [r for r in d.lines[mark:] if r.get("level") == "error"]
    assert not errors, errors[:2]


def test_nothing_pipelined_after_quit_is_spooled(relay_daemon: DaemonProc) -> None:
    """Found by the smtp target: a transaction sent behind QUIT in the same packet was run
    after the 221 and its message spooled without any 250 (Protocol.push returned without
    yielding once the transport was closing, so aiosmtpd went on reading its buffer)."""
    d = relay_daemon
    before = spool_count(d)
    replies = _session(d, b"EHLO client.test\r\nQUIT\r\nMAIL FROM:<admin@nic.org.mt>\r\n"
                          b"RCPT TO:<requests@tld-ops.localhost>\r\nDATA\r\n" + MESSAGE + b".\r\n")
    assert replies[-1][0] == 221, replies
    # A message delivered after it is committed after it (one appender, in order): once it
    # is in the spool, the smuggled one would be too.
    barrier = deliver(d, "after-quit-barrier")
    spooled = [q for (q,) in d.query("SELECT queue_id FROM spool ORDER BY id")][before:]
    assert spooled == [barrier], f"spooled after the QUIT: {spooled}"


@pytest.mark.parametrize("command", [b"MAIL FROM:<", b"MAIL FROM:<a@", b"RCPT TO:<",
                                     b"MAIL FROM:<a@[b>", b"RCPT TO:<nobody@[ld-ops.localhost>"])
def test_a_malformed_angle_address_is_refused_for_good(relay_daemon: DaemonProc, command: bytes) -> None:
    """Found by the smtp target: the stdlib parser behind Protocol._getaddr raised IndexError
    ("MAIL FROM:<") or AttributeError ("<a@[b>", an unclosed domain literal) instead of its
    HeaderParseError: a traceback and 451 (try again) where a malformed address deserves a
    permanent refusal."""
    d = relay_daemon
    mark = d.mark()
    c = open_session(d.connect())
    if command.startswith(b"RCPT"):
        assert c.cmd("MAIL FROM:<admin@nic.org.mt>")[0] == 250
    code, text = c.cmd(command)
    c.close()
    assert code // 100 == 5, text
    _no_session_errors(d, mark)


@pytest.mark.parametrize(("helo", "sender"), [
    (b"EHLO client.te\xeest", b"admin@nic.org.mt"),
    (b"EHLO client.test", b"adm\xff\xffin@nic.org.mt"),
    (b"HELO client.\xc3", b"admin@nic.org.mt"),
])
def test_octets_that_are_not_utf8_never_end_in_a_failed_commit(relay_daemon: DaemonProc, helo: bytes,
                                                               sender: bytes) -> None:
    """Found by the smtp target: a HELO name or sender with octets that are not UTF-8 was
    accepted, then every commit of the message failed (SQLite takes no lone surrogates):
    451 at the end of DATA, each time the client retried. Refused, or stored: not both."""
    d = relay_daemon
    mark, before = d.mark(), spool_count(d)
    replies = _session(d, helo + b"\r\nMAIL FROM:<" + sender + b">\r\n"
                          b"RCPT TO:<requests@tld-ops.localhost>\r\nDATA\r\n" + MESSAGE + b".\r\nQUIT\r\n")
    queued = [t for code, t in replies if t.startswith("250 2.0.0 Ok: queued as")]
    assert not any(code == 451 for code, _ in replies), replies
    assert spool_count(d) == before + len(queued), replies
    _no_session_errors(d, mark)


def test_an_envelope_sender_with_control_characters_is_not_spooled(relay_daemon: DaemonProc) -> None:
    """Found by the smtp target: MAIL FROM:<admin\\x01\\x00@...> was accepted and spooled, and
    automatic replies go to the envelope sender."""
    d = relay_daemon
    replies = _session(d, b"EHLO client.test\r\nMAIL FROM:<adm\x01\x00in@nic.org.mt>\r\n"
                          b"RCPT TO:<requests@tld-ops.localhost>\r\nDATA\r\n" + MESSAGE + b".\r\nQUIT\r\n")
    senders = [s for (s,) in d.query("SELECT mail_from FROM spool")]
    assert not [s for s in senders if re.search(r"[\x00-\x1f\x7f]", s)], (senders, replies)


def test_xforward_without_attributes_is_a_syntax_error(relay_daemon: DaemonProc) -> None:
    """Found by the smtp target: a bare XFORWARD from a trusted relay raised AttributeError
    (its argument is None): a traceback and 451."""
    d = relay_daemon
    mark = d.mark()
    c = open_session(d.connect())
    code, text = c.cmd("XFORWARD")
    c.close()
    assert code == 501, text
    _no_session_errors(d, mark)


# -- the atheris runner ------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_short_atheris_run_finds_nothing() -> None:
    """20,000 executions over the six atheris targets (CI-sized; the long run is
    ``tests/fuzz/run --execs 1000000``)."""
    proc = subprocess.run([sys.executable, str(RUN), "--execs", "20000"], capture_output=True,
                          text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.strip()}
    for name in ("address", "form", "message", "rdap", "whois", "smtp"):
        assert name in lines and lines[name].rstrip().endswith("ok"), proc.stdout
    total = re.match(r"total\s+(\d+) execs", lines["total"])
    assert total is not None and int(total.group(1)) >= 20000, lines["total"]
