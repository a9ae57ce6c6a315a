"""The fuzz targets: one check per subject, shared by atheris (tests/fuzz/fuzz_*.py) and
hypothesis (tests/test_fuzz.py), so both hold the code to the same contract.

Each check feeds octets to the daemon's own code the way the daemon does, lets through only
the refusals that code documents (``AddressError``, ``AnswerError``), and asserts cheap
invariants on what it returns. Any other exception, or an ``AssertionError`` raised here, is
a finding: atheris stops and writes the input out.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import string
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from tldops_mta import logs
from tldops_mta.auth import addresses, dkim_verify, iana, iana_answers, message_facts
from tldops_mta.daemon.children import SpoolLink
from tldops_mta.intake import content_checks, replies, smtp_paths
from tldops_mta.intake.appender import Appender
from tldops_mta.intake.smtp_server import Runtime
from tldops_mta.mail import tlp
from tldops_mta.policy import request_form
from tldops_mta.settings import config as config_mod
from tldops_mta.settings.recipients import classify
from tldops_mta.store import spool, storage

REPO = Path(__file__).resolve().parents[2]

# -- addresses -------------------------------------------------------------------------------

_SOURCE = (REPO / "tldops_mta" / "auth" / "addresses.py").read_text(encoding="utf-8")
ADDRESS_CODES = frozenset(re.findall(r"""(?:AddressError|fail)\(\s*"([a-z_]+)\"""", _SOURCE))
"""Every refusal code the parser can give, read from its source: a code outside this set
means an AddressError was made somewhere else than the parser's own refusals."""
_LDH = frozenset(string.ascii_letters + string.digits + "-")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def address_value(data: bytes) -> str:
    """A header value from fuzz octets. The first octet picks how the rest is read: as the
    stdlib's compat32 parser hands raw header bytes over (ASCII, other bytes as surrogate
    escapes: the worker's case), as UTF-8 text, or as UTF-16 (any code point, lone
    surrogates included)."""
    if not data:
        return ""
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        return rest.decode("ascii", "surrogateescape")
    if mode == 1:
        return rest.decode("utf-8", "replace")
    return rest[: len(rest) // 2 * 2].decode("utf-16-le", "surrogatepass")


def _refused(e: addresses.AddressError) -> None:
    assert e.code in ADDRESS_CODES, f"unknown refusal code {e.code!r}"
    assert isinstance(e.reason, str) and e.reason, "a refusal without a reason"


def _shown_text(value: str) -> str:
    """The value as a reader sees it: surrogate-escaped bytes read as UTF-8."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return value


def check_mailbox(box: addresses.Mailbox, value: str) -> None:
    """What an accepted mailbox must be: one plain ASCII address in DNS form, found in the
    value as written (never invented), with a display name that cannot pass for one."""
    addr = box.address
    assert addr.count("@") == 1, f"{addr!r}: not exactly one '@'"
    assert all(0x21 <= ord(c) < 0x7F for c in addr), f"{addr!r}: space, control or non-ASCII"
    assert "=?" not in addr, f"{addr!r}: encoded word in the address"
    local, _, domain = addr.partition("@")
    assert 0 < len(local) <= addresses.MAX_LOCAL_PART, f"{addr!r}: local part length"
    assert not (local.startswith(".") or local.endswith(".") or ".." in local), f"{addr!r}: dots"
    assert len(addr) <= addresses.MAX_ADDRESS, f"{addr!r}: too long"
    labels = domain.split(".")
    assert domain == domain.lower() and len(labels) >= 2, f"{addr!r}: domain form"
    for label in labels:
        assert 0 < len(label) <= addresses.MAX_LABEL and set(label) <= _LDH, f"{addr!r}: label {label!r}"
        assert not (label.startswith("-") or label.endswith("-")), f"{addr!r}: hyphen"
    assert addr.translate(_ASCII_LOWER) in _shown_text(value).translate(_ASCII_LOWER), \
        f"{addr!r} does not stand in {value!r}"
    shown = unicodedata.normalize("NFKC", box.display)
    assert not any(c in shown for c in "@<>"), f"display {box.display!r} holds '@', '<' or '>'"
    assert "=?" not in shown, f"display {box.display!r} still encoded"
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in box.display), \
        f"display {box.display!r} holds control or invisible characters"
    # Written plainly, the address reads back as itself.
    assert addresses.parse_single(f"<{addr}>") == addresses.Mailbox(addr, ""), f"{addr!r} round trip"
    assert addresses.parse_single(addr) == addresses.Mailbox(addr, ""), f"{addr!r} bare round trip"


def check_address(value: str, field: str = "From") -> None:
    """Both entry points on one value: parse_single for From/Sender, parse_address_list for
    Cc/To. Where the single reading accepts, the list reading must give the same mailbox."""
    single: addresses.Mailbox | None = None
    try:
        single = addresses.parse_single(value, field=field)
    except addresses.AddressError as e:
        _refused(e)
    try:
        boxes = addresses.parse_address_list(value, field=field)
    except addresses.AddressError as e:
        _refused(e)
        assert single is None, f"{value!r}: single accepts {single}, list refuses ({e.code})"
        return
    assert len(boxes) <= addresses.MAX_MAILBOXES
    for box in boxes:
        check_mailbox(box, value)
    if single is not None:
        assert boxes == [single], f"{value!r}: single {single} but list {boxes}"


def address_one(data: bytes) -> None:
    check_address(address_value(data))


# -- the request form ------------------------------------------------------------------------

_ROLES = frozenset(request_form.ROLES.values())


def check_form(text: str) -> None:
    """parse_form and named_tlds over one text: a form is ok exactly when it has no problems,
    every line number is one of the text's lines, and an ok form is complete for its action."""
    n_lines = len(text.splitlines())
    form = request_form.parse_form(text)
    assert form.ok == (not form.problems)
    keys = [p.line or 0 for p in form.problems]
    assert keys == sorted(keys), "problems not in line order"
    for p in form.problems:
        assert p.line is None or 1 <= p.line <= n_lines, f"problem on line {p.line} of {n_lines}"
        assert p.what and p.fix and str(p)
    for entry in form.sscs:
        assert entry.role in _ROLES
        for line in (entry.line, entry.phone_line, entry.email_line):
            assert 1 <= line <= n_lines, f"SSC entry on line {line} of {n_lines}"
        for v in (entry.first_name, entry.last_name, entry.phone, entry.email, entry.replaces or ""):
            assert v == " ".join(v.split()), f"value {v!r} not whitespace-normalised"
    assert len({e.role for e in form.sscs}) == len(form.sscs), "a role twice"
    if form.ok:
        assert form.action in request_form.ACTIONS
        assert form.tld and not form.tld.startswith(".")
        if form.action == "remove":
            assert not form.sscs and (form.removals or form.remove_all)
            assert not (form.removals and form.remove_all)
        else:
            assert form.sscs and not form.removals and not form.remove_all
            for e in form.sscs:
                assert (e.replaces is not None) == (form.action == "update")
                assert request_form._EMAIL.match(e.email)
                assert sum(c.isdigit() for c in e.phone) >= 6
                assert any(c.isalpha() for c in e.first_name) and any(c.isalpha() for c in e.last_name)
    tlds = request_form.named_tlds(text)
    assert len({t.lower() for t in tlds}) == len(tlds), f"named_tlds repeats: {tlds}"
    assert all(t and not any(c.isspace() for c in t) for t in tlds), f"named_tlds: {tlds}"


def form_one(data: bytes) -> None:
    """The text as body_text hands it over (decoded with 'replace'), read as a plain-text
    form and, through html_to_text, as an HTML-only mail's."""
    text = data.decode("utf-8", "replace")
    check_form(text)
    check_form(request_form.html_to_text(text))


# -- a spooled message, as the worker reads it -------------------------------------------------

FIXED_NOW = 1_767_225_600.0  # 2026-01-01 UTC: signatures' x= compare against a fixed clock
_RESULTS = frozenset({"pass", "fail", "neutral", "temperror", "permerror"})
_DKIM_RECORDS: dict[str, bytes] = {}
"""Selector -> key record: what the key lookups of dkim_verify.verify would fetch from DNS
(seeds sets the keys its signed seed messages use; an unknown selector gets the first)."""


def use_dkim_records(records: dict[str, bytes]) -> None:
    _DKIM_RECORDS.clear()
    _DKIM_RECORDS.update(records)


def check_message(raw: bytes) -> None:
    """What the worker does with a spooled message before any I/O: message_facts.read, the
    singleton-header check, the strict address fields (as requests_desk reads them), the body
    text and form, the TLP label, and DKIM (every signature parsed and, where it names a key,
    verified against the seeds' key record in place of DNS)."""
    facts = message_facts.read(raw)
    problem = facts.problem()
    if problem is None:
        assert facts.counts.get("from") == 1 and facts.from_value is not None
        assert all(n <= 1 for n in facts.counts.values())
    if facts.problem(message_facts.REQUIRED_FOR_REQUESTS) is None:
        assert facts.date_value is not None and facts.subject is not None
    assert isinstance(facts.automatic, bool)
    for value, field in ((facts.from_value, "From"), (facts.sender_value, "Sender"),
                         (facts.cc_value, "Cc")):
        if value is not None:
            assert isinstance(value, str)
            check_address(value, field)
    if facts.message is None:  # unreadable (nested too deeply): refused before anything reads on
        assert problem is not None, "no parsed message, yet no problem"
        return
    text = request_form.body_text(facts.message)
    assert text == request_form.body_text(raw), "the parsed message reads differently from the octets"
    check_form(text)
    assert tlp.of_message(facts.subject or "", text) in tlp.Tlp
    prepared = dkim_verify._prepare(raw, FIXED_NOW, dkim_verify.MAX_SIGNATURES)
    fallback = next(iter(_DKIM_RECORDS.values()), None)
    keys: dict[str, Any] = {s.key_name: _DKIM_RECORDS.get(s.selector, fallback)
                            for s in prepared.signatures if s.key_name and s.outcome is None}
    results = dkim_verify._check_all(prepared, keys, 2048)
    assert [r.index for r in results] == list(range(len(prepared.signatures)))
    for r in results:
        assert r.result in _RESULTS, r
        if r.counts:
            assert r.result == "pass" and not r.reason, r
            assert r.algorithm in ("rsa-sha256", "ed25519-sha256"), r


def message_one(data: bytes) -> None:
    check_message(data)


# -- IANA answers ----------------------------------------------------------------------------

TLDS = ("mt", "xn--90ae")


def _json_strings(doc: Any) -> Iterator[str]:
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())


def _check_answer(a: iana.Answer, body: bytes, source: str) -> None:
    assert a.source == source and a.raw == body, "the evidence is not the answer received"
    assert a.status in ("ok", "not-delegated", "unreadable"), a.status
    assert isinstance(a.reason, str) and a.reason
    if a.status != "ok":
        assert a.email is None
        return
    email = a.email
    assert isinstance(email, str), f"{email!r} is not a str"
    assert email.count("@") == 1 and email == email.lower(), email
    assert all(0x21 <= ord(c) < 0x7F for c in email) and len(email) <= 254, email
    assert iana_answers.plain_address(email) == email, f"{email!r} is not plain"


def rdap_one(body: bytes) -> None:
    """iana.read_rdap as the client calls it, for a 200 and a 404, for each TLD: an Answer,
    and an address only if the answer holds it (as a JSON string, mailto: and case aside)."""
    for tld in TLDS:
        for status in (200, 404):
            a = iana.read_rdap(status, body, tld)
            _check_answer(a, body, "rdap")
            if a.status == "ok":
                assert status == 200
                strings = {s.strip().lower().removeprefix("mailto:")
                           for s in _json_strings(json.loads(body))}
                assert a.email in strings, f"{a.email!r} is not in the answer"


def whois_one(body: bytes) -> None:
    """iana.read_whois for each TLD: an Answer, and an address only if the text holds it."""
    for tld in TLDS:
        a = iana.read_whois(body, tld)
        _check_answer(a, body, "whois")
        if a.status == "ok":
            assert a.email is not None and a.email in body.decode("utf-8").lower(), a.email


# -- the SMTP session ------------------------------------------------------------------------

SENTINEL = b"\r\n.\r\nQUIT\r\n"
"""Sent after every input: ends a DATA left open, then the session. aiosmtpd cancels a
session at end of file without reading what is buffered, so the harness cannot half-close;
it waits for the server to close instead."""
SESSION_TIMEOUT = 20.0
_REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])")
_QUEUED = re.compile(rb"250 2\.0\.0 Ok: queued as ([0-9A-F]+)")
_SMTP_SETTINGS: dict[str, Any] = {
    # Lowered limits, so the fuzzer reaches each within a few KiB of input.
    "server.max_message_size": 2048,
    "server.max_recipients": 3,
    "server.max_commands": 40,
    "server.idle_timeout": 10.0,
    "server.session_timeout": 15.0,
    # Loopback is a trusted relay: XFORWARD, and the client address it sets, are live.
    "server.trusted_relays": ["127.0.0.0/8"],
    "log.level": "error",
}


class _ErrorLines(io.StringIO):
    """The log sink: at level error, any line written is a finding."""


class SmtpHarness:
    """The daemon's SMTP front in this process: ``Runtime.protocol_factory`` served by
    ``loop.create_server`` on 127.0.0.1 (as ``tldops serve`` does), its spool link to an
    ``Appender`` (the appender process's loop, here in a thread) over a real socket pair,
    committing to an in-memory SQLite database with the real schema. Each input is one TCP
    connection: the octets, then SENTINEL, then every reply up to the server's close."""

    def __init__(self) -> None:
        self.errors = _ErrorLines()
        self._saved_logging = (structlog.get_config(), list(logging.getLogger().handlers),
                               logging.getLogger().level, logging.getLogger("mail.log").level)
        logs.setup("error", stream=self.errors)
        self.cfg = config_mod.load(None, _SMTP_SETTINGS)
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.db = storage.connect(Path(":memory:"))
        storage.migrate(self.db)
        self.appender_errors: list[str] = []
        self.spooled = 0
        self.sessions = 0
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        import socket
        import threading

        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        self.link = SpoolLink()
        await loop.create_unix_connection(lambda: self.link, sock=ours)

        def log(level: str, event: str, **fields: Any) -> None:
            if level in ("error", "warning"):
                self.appender_errors.append(f"{event} {fields}")

        self.appender = Appender(theirs, self.db, 64, log)  # type: ignore[arg-type]
        self.appender_thread = threading.Thread(target=self._serve_appender, daemon=True)
        self.appender_thread.start()

        async def append(arrival: spool.Arrival) -> None:
            await self.link.append(arrival)

        def on_spooled() -> None:
            self.spooled += 1

        self.rt = Runtime(self.cfg, append, on_spooled)
        self.server = await loop.create_server(self.rt.protocol_factory(), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def _serve_appender(self) -> None:
        with contextlib.suppress(OSError):
            self.appender.serve()

    def close(self) -> None:
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        if self.link.transport is not None:
            self.link.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.appender_thread.join(timeout=10)
        self.loop.close()
        self.db.close()
        config, handlers, level, mail_level = self._saved_logging
        structlog.configure(**config)
        root = logging.getLogger()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("mail.log").setLevel(mail_level)

    async def _talk(self, data: bytes) -> tuple[bytes, bool]:
        """Every octet the server sent, and whether the connection ended in a reset (the
        server closed with input unread: replies after the last one read may be lost)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        received = bytearray()

        async def read_all() -> bool:
            try:
                while chunk := await reader.read(65536):
                    received.extend(chunk)
            except ConnectionResetError:
                return True
            return False

        reading = asyncio.create_task(read_all())  # reads while we write: no deadlock on full buffers
        writer.write(data + SENTINEL)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.drain()
        try:
            reset = await asyncio.wait_for(reading, SESSION_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"the session did not end within {SESSION_TIMEOUT} s") from None
        finally:
            writer.close()
        # An append whose session was cut short still gets its commit and its reply: wait for
        # them, so that what this session spooled is in the database when it is checked.
        if self.link.pending:
            await asyncio.wait(list(self.link.pending.values()), timeout=SESSION_TIMEOUT)
        # The server's connection_lost comes a few loop turns after its close.
        for _ in range(1000):
            if not self.rt.sessions and self.rt.limiter.total == 0:
                break
            await asyncio.sleep(0)
        return bytes(received), reset

    def _clear(self) -> None:
        """Forget what an earlier input left (a failed check stops before its clean-up), so
        that each input is judged on its own and hypothesis shrinks to the real cause."""
        self.errors.seek(0)
        self.errors.truncate()
        self.loop_errors.clear()
        self.appender_errors.clear()
        self.db.execute("DELETE FROM spool_messages")
        self.db.execute("DELETE FROM spool")
        self.spooled = 0

    def check(self, data: bytes) -> None:
        self._clear()
        self.sessions += 1
        out, reset = self.loop.run_until_complete(self._talk(data))
        assert not self.rt.sessions and self.rt.limiter.total == 0 and not self.rt.limiter.by_ip, \
            "the session was not released (connection counts leak)"
        assert not self.loop_errors, f"unhandled in the event loop: {self.loop_errors[:1]}"
        logged = self.errors.getvalue()
        assert not logged, f"error logged: {logged[:2000]}"
        assert not self.appender_errors, f"appender: {self.appender_errors[:1]}"
        lines = out.split(b"\r\n")
        if lines[-1]:
            assert reset, f"reply cut short: {lines[-1][:200]!r}"
        lines = lines[:-1]
        assert lines, "no greeting"
        assert lines[0].startswith(b"220 "), f"greeting {lines[0][:200]!r}"
        queued: list[str] = []
        after_354 = False
        previous: tuple[bytes, bytes] | None = None
        for line in lines:
            m = _REPLY_LINE.match(line)
            assert m, f"not a reply line: {line[:200]!r}"
            code, sep = m.groups()
            if previous is not None and previous[1] == b"-":
                assert code == previous[0], f"multi-line reply changes code: {line[:200]!r}"
            assert not line.startswith(replies.INTERNAL_ERROR.encode()), "internal error in the session"
            assert not line.startswith(b"500 Error: ("), "aiosmtpd's exception reply"
            assert not line.startswith((replies.STORAGE_FAILED.encode(), replies.STORAGE_FULL.encode())), \
                f"spool commit failed: {line!r}"
            # SENTINEL ends any DATA and the session at once: a timeout means the server
            # missed the end of data or the QUIT.
            assert not line.startswith((replies.IDLE_TIMEOUT.encode(), replies.SESSION_TIMEOUT.encode())), \
                f"the session timed out: {line!r}"
            if after_354 and sep == b" ":
                assert code != b"354", "DATA answered twice with 354"
                after_354 = False
            if code == b"354":
                after_354 = True
            if q := _QUEUED.fullmatch(line):
                queued.append(q.group(1).decode())
            previous = (code, sep)
        assert not after_354 or reset, "a DATA without a final reply"
        rows = self.db.execute(
            "SELECT s.queue_id, s.mail_from, s.rcpt_to, m.raw FROM spool s "
            "JOIN spool_messages m ON m.id = s.id").fetchall()
        assert len(set(queued)) == len(queued), "one queue id in two replies"
        by_id = {r[0]: r for r in rows}
        assert set(queued) <= set(by_id), f"250 for a message not in the spool: {set(queued) - set(by_id)}"
        if not reset:
            assert len(rows) == len(queued) == self.spooled, \
                f"{len(rows)} spooled, {len(queued)} replies say so, {self.spooled} counted"
        domain, parts = self.cfg.server.domain, self.rt.parts
        for queue_id, mail_from, rcpt_json, raw in rows:
            assert content_checks.refusal(raw) is None, f"{queue_id}: spooled content that is refused"
            assert len(raw) <= self.cfg.server.max_message_size, f"{queue_id}: over the size limit"
            rcpts = json.loads(rcpt_json)
            assert 1 <= len(rcpts) <= self.cfg.server.max_recipients, f"{queue_id}: {rcpts}"
            assert all(classify(r, domain, parts) is not None for r in rcpts), f"{queue_id}: {rcpts}"
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in mail_from), \
                f"{queue_id}: control characters in MAIL FROM {mail_from!r}"
            # Never rewritten: each address is an RFC 5321 path that the client wrote as it is.
            for address, reverse in ((mail_from or "<>", True), *((r, False) for r in rcpts)):
                path = address if address == "<>" else f"<{address}>"
                assert smtp_paths.parse(path, reverse=reverse).address == address, f"{queue_id}: {path!r}"
                assert path.encode() in data, f"{queue_id}: {path!r} is not what the client wrote"


_harness: list[SmtpHarness] = []


def smtp_harness() -> SmtpHarness:
    if not _harness:
        _harness.append(SmtpHarness())
    return _harness[0]


def smtp_one(data: bytes) -> None:
    smtp_harness().check(data)


ENTRIES: dict[str, Callable[[bytes], None]] = {
    "address": address_one,
    "form": form_one,
    "message": message_one,
    "rdap": rdap_one,
    "whois": whois_one,
    "smtp": smtp_one,
}
