"""The durable outbox: every mail the daemon writes is committed here before anyone sends it.

A mail is enqueued in the same transaction as the decision that caused it, so a crash either
loses both or keeps both. The deliverer then hands each (message, recipient) to the
smarthost, or, with none configured, writes it as an .eml file under the outbox directory
(how a fresh install keeps its outgoing mail). Temporary failures retry with backoff; a
permanent refusal is recorded as failed, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import secrets
import sqlite3
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email import quoprimime
from email.header import Header
from pathlib import Path
from typing import Any

from tldops_mta import logs, metrics
from tldops_mta.mail.tlp import Tlp, labelled
from tldops_mta.settings.config import Config, parse_listen
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.retry import backoff
from tldops_mta.store.storage import Reader, Writer

MAX_ATTEMPTS = 30
"""With the default backoff (30 s doubling to an hour), about a day of retries before a
delivery is failed (and reported)."""


@dataclass(frozen=True)
class Due:
    id: int
    message_id: int
    rcpt: str
    attempts: int
    mail_from: str
    raw: bytes
    purpose: str = ""
    ref: str | None = None
    """What caused it (request-N, a spool queue id, a broadcast period): in its log lines."""


def compose(*, from_addr: str, to: str, subject: str, body: str, domain: str, tlp: Tlp,
            reply_to: str | None = None, in_reply_to: str | None = None,
            auto: str = "auto-generated", extra_headers: Sequence[tuple[str, str]] = (),
            attached: bytes | None = None) -> bytes:
    """An RFC 5322 message in CRLF form. ``auto`` is the RFC 3834 Auto-Submitted value, so
    that other robots (and we ourselves) never answer it. ``tlp`` heads the Subject: every
    mail the daemon writes is labelled (tlp.py says which label). ``attached``, a whole
    message as received, follows the text as a message/rfc822 part, octet for octet (a
    forward: see postmaster_desk).

    Written out directly, not through email.message.EmailMessage, which costs more than the
    rest of a request's handling needs (docs/architecture.md). Every value is checked for
    line breaks, so no header can be smuggled in; a Subject that is not ASCII is an RFC 2047
    encoded word; addresses go as they are (RFC 6532 when not ASCII).
    """
    now = time.time()
    headers = [("From", from_addr), ("To", to), ("Subject", _subject(labelled(subject, tlp))),
               ("Date", date_field(now)), ("Message-ID", message_id(now, domain)),
               ("Auto-Submitted", auto)]
    if reply_to:
        headers.append(("Reply-To", reply_to))
    if in_reply_to:
        headers += [("In-Reply-To", in_reply_to), ("References", in_reply_to)]
    headers += extra_headers
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    plain = text.isascii() and max(map(len, text.split("\n"))) <= 998
    # Plain 7bit when it can be: readable as stored in the outbox directory and by any
    # client; quoted-printable only for text that is not ASCII (or has very long lines).
    # (quoprimime encodes one octet per character: give it the UTF-8 octets as latin-1.)
    encoded = text if plain else quoprimime.body_encode(
        text.encode("utf-8").decode("latin-1"), maxlinelen=76, eol="\n")
    text_part = [("Content-Type", 'text/plain; charset="utf-8"'),
                 ("Content-Transfer-Encoding", "7bit" if plain else "quoted-printable")]
    boundary = _boundary(attached) if attached is not None else ""
    headers += ([("Content-Type", f'multipart/mixed; boundary="{boundary}"')] if attached is not None
                else text_part) + [("MIME-Version", "1.0")]
    for name, value in headers:
        if "\n" in value or "\r" in value or len(value) > 990:
            raise ValueError(f"the {name} value would break the header: {value[:60]!r}")
    head = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if attached is None:
        return (head + "\r\n" + encoded.replace("\n", "\r\n")).encode("utf-8")
    # RFC 2046 5.2.1: a message/rfc822 part is 7bit or 8bit, never re-encoded, so the
    # original travels exactly as it came (SMTP intake allows only CRLF lines of <= 998).
    # The CRLF before a boundary belongs to the boundary: one more keeps the original's last.
    inner = attached + b"\r\n"
    part_head = "".join(f"{n}: {v}\r\n" for n, v in text_part)
    rfc822 = ("Content-Type: message/rfc822\r\nContent-Disposition: attachment;"
              ' filename="original.eml"\r\n'
              f"Content-Transfer-Encoding: {'7bit' if attached.isascii() else '8bit'}\r\n")
    dash = f"--{boundary}\r\n".encode()
    return (head.encode("utf-8") + b"\r\n" + dash + part_head.encode() + b"\r\n"
            + encoded.replace("\n", "\r\n").encode("utf-8") + dash + rfc822.encode() + b"\r\n"
            + inner + f"--{boundary}--\r\n".encode())


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def date_field(t: float) -> str:
    """``email.utils.format_datetime`` of ``t`` as a UTC datetime (``+0000``), the same text
    without the datetime and its formatting at every mail (tests/test_outbox_compose.py holds
    it to the original)."""
    second = int(t)
    last = _last_date[0]
    if last[0] == second:  # mail written in the same second: the same text
        return last[1]
    g = time.gmtime(second)
    text = (f"{_DAYS[g.tm_wday]}, {g.tm_mday:02d} {_MONTHS[g.tm_mon - 1]} {g.tm_year:04d}"
            f" {g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000")
    _last_date[0] = (second, text)
    return text


_last_date = [(-1, "")]
"""The last second written and its text (a tuple, replaced whole: safe between threads)."""


def message_id(t: float, domain: str) -> str:
    """``email.utils.make_msgid(domain=domain)`` at time ``t``: the same form (centiseconds,
    process id, 64 random bits; tests/test_outbox_compose.py holds it to the original)."""
    return f"<{int(t * 100)}.{_pid[0]}.{random.getrandbits(64)}@{domain}>"


_pid = [os.getpid()]
"""This process's id, asked once (a system call each time), again in a forked child."""
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _boundary(attached: bytes) -> str:
    """A multipart boundary that occurs nowhere in the attached message."""
    while True:
        b = "=_tldops_" + secrets.token_hex(12)
        if b.encode() not in attached:
            return b


_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def wire_form(raw: bytes) -> bytes:
    """``raw`` as SMTP DATA sends it (RFC 5321 4.5.2): CRLF line endings, a leading dot
    doubled, the end marked by CRLF.CRLF."""
    text = _LINE_ENDINGS.sub(b"\r\n", raw)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    return _LEADING_DOT.sub(b"..", text) + b".\r\n"


async def _data(client: Any, wire: bytes) -> None:
    """DATA with a message already in wire form, on an aiosmtplib client after MAIL and
    RCPT. aiosmtplib's own data() normalises and dot-stuffs the message again for every
    delivery; this is aiosmtplib 5.1.3's ``SMTPProtocol.execute_data_command`` without that,
    its private lock and flag included (tests/test_patched_libraries.py holds it to that code)."""
    import aiosmtplib  # only a configured smarthost needs it (see _relay)

    proto = client.protocol
    if proto is None or proto._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    async with proto._command_lock:
        proto._response_pending = True
        proto.write(b"DATA\r\n")
        start = await proto.read_response(timeout=30)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        proto._response_pending = True
        proto.write(wire)
        done = await proto.read_response(timeout=30)
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)


def _subject(subject: str) -> str:
    one_line = " ".join(subject.split())[:300]
    if one_line.isascii():
        return one_line
    encoded = Header(one_line, "utf-8", header_name="Subject").encode(maxlinelen=990)
    return " ".join(encoded.split())  # encoded words side by side: the same when unfolded


def enqueue(raw: bytes, mail_from: str, rcpts: Sequence[str], purpose: str,
            ref: str | None = None, *, cfg: Config,
            verp: bool = False) -> Callable[[sqlite3.Connection], int]:
    """A writer job that queues ``raw`` for each recipient; returns the outbox message id.

    Every mail the daemon sends comes through here: it is DKIM-signed here, once, with the
    daemon's key (``cfg``'s ``dkim.key``), before its octets are stored, so each delivery
    and each retry sends the same signed octets. ``verp``: each delivery gets its own
    envelope sender, ``mail_from``'s local part ``+b<delivery id>``, so that a bounce names
    the delivery, and with it the person it was for."""
    if cfg.dkim_key is not None:
        from tldops_mta.mail import dkim_keys  # signing pulls in dkimpy: the SMTP process never signs

        raw = dkim_keys.sign_outgoing(cfg, raw)

    def job(conn: sqlite3.Connection) -> int:
        now = time.time()
        cur = conn.execute(
            "INSERT INTO outbox_messages (created_at, purpose, ref, mail_from, raw) VALUES (?,?,?,?,?)",
            (now, purpose, ref, mail_from, raw))
        mid = int(cur.lastrowid or 0)
        conn.executemany(
            "INSERT INTO outbox_deliveries (message_id, rcpt, updated_at) VALUES (?,?,?)",
            [(mid, r, now) for r in rcpts])
        if verp:
            local, _, domain = mail_from.rpartition("@")
            conn.execute("UPDATE outbox_deliveries SET mail_from = ? || '+b' || id || '@' || ?"
                         " WHERE message_id = ?", (local, domain, mid))
        return mid

    return job


def due(conn: sqlite3.Connection, now: float, limit: int) -> list[Due]:
    """The deliveries due, each message's octets read once however many of its deliveries
    are in the batch (a broadcast's half-megabyte, to hundreds of SSCs)."""
    rows = conn.execute(
        "SELECT d.id, d.message_id, d.rcpt, d.attempts, coalesce(d.mail_from, m.mail_from), m.purpose, m.ref"
        " FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
        " WHERE d.status = 'queued' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at, d.id"
        " LIMIT ?", (now, limit)).fetchall()
    ids = sorted({r[1] for r in rows})
    raws = dict(conn.execute(f"SELECT id, raw FROM outbox_messages WHERE id IN ({','.join('?' * len(ids))})",  # noqa: S608
                             ids).fetchall()) if ids else {}
    return [Due(r[0], r[1], r[2], r[3], r[4], bytes(raws[r[1]]), r[5], r[6]) for r in rows]


def next_due_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT min(next_attempt_at) FROM outbox_deliveries WHERE status = 'queued'").fetchone()
    return None if row[0] is None else float(row[0])


def record(delivery_id: int, status: str, error: str | None, retry_at: float,
           ) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE outbox_deliveries SET status = ?, attempts = attempts + 1, last_error = ?,"
            " next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (status, error, retry_at, time.time(), delivery_id))

    return job


def record_sent(delivery_ids: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
    """Several deliveries sent, in one statement."""
    def job(conn: sqlite3.Connection) -> None:
        now = time.time()
        conn.executemany(
            "UPDATE outbox_deliveries SET status = 'sent', attempts = attempts + 1, last_error = NULL,"
            " next_attempt_at = 0, updated_at = ? WHERE id = ?", [(now, i) for i in delivery_ids])

    return job


def depth(conn: sqlite3.Connection) -> dict[str, int]:
    out = {"queued": 0, "sent": 0, "failed": 0}
    for st, n in conn.execute("SELECT status, count(*) FROM outbox_deliveries GROUP BY status"):
        out[st] = n
    return out


class PermanentFailure(Exception):
    """The next hop refused the mail for good (5xx)."""


class Deliverer(DueLoop):
    """Sends what the outbox holds, one delivery at a time, until stopped."""

    def __init__(self, cfg: Config, writer: Writer, reader: Reader) -> None:
        super().__init__(reader, logs.get("outbox"))
        self.cfg = cfg
        self.writer = writer
        self._wire: dict[int, bytes] = {}

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return next_due_at(conn)

    def reconfigure(self, cfg: Config) -> None:
        """A new smarthost or outbox directory applies to the next delivery (SIGHUP)."""
        self.cfg = cfg

    @property
    def maildir(self) -> Path:
        d = Path(self.cfg.outbox.maildir)
        return d if d.is_absolute() else self.cfg.state_dir / d

    async def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        batch = await self.reader.run(due, now, 32)
        if batch and not self.cfg.outbox.smarthost:
            await self._write_files(batch)
            return True
        recording: list[asyncio.Future[None]] = []
        try:
            for d in batch:
                if self._stopping:
                    break
                sent = await self._deliver(d)
                if sent is not None:
                    recording.append(sent)
        finally:
            # A delivery's "sent" commits while the next one goes out (the writer groups
            # them). Until it commits, a crash sends that mail again: at least once, as ever.
            await asyncio.gather(*recording)
        return bool(batch)

    async def _write_files(self, batch: list[Due]) -> None:
        """No smarthost: the batch written as files in one trip to a thread (one directory
        fsync for all), then their "sent" rows in one job. Each file is on disk before its
        row says sent, as for a relay."""
        errors = await asyncio.to_thread(self._write_batch, batch)
        sent = [d for d, e in zip(batch, errors, strict=True) if e is None]
        # Logged after the commit, as a relayed mail is: the row says sent.
        if sent:
            metrics.worker_metrics().outgoing.labels("sent").inc(len(sent))
            await self.writer.run(record_sent([d.id for d in sent]))
        for d, e in zip(batch, errors, strict=True):
            log = self._log_for(d)
            if e is None:
                log.info("mail delivered", how="written")
            else:
                await self._failed(d, e, log)

    async def _deliver(self, d: Due) -> asyncio.Future[None] | None:
        """Hand ``d`` to the smarthost; on success, the (running) commit of its "sent" row."""
        log = self._log_for(d)
        try:
            await self._relay(d)
        except PermanentFailure as e:
            metrics.worker_metrics().outgoing.labels("failed").inc()
            await self.writer.run(record(d.id, "failed", str(e)[:500], 0))
            log.error("delivery refused for good", error=logs.redact_in(str(e), d.rcpt)[:200])
            return None
        except Exception as e:
            await self._failed(d, e, log)
            return None

        metrics.worker_metrics().outgoing.labels("sent").inc()

        async def sent() -> None:
            await self.writer.run(record_sent([d.id]))
            log.info("mail delivered", how="relayed")  # after the commit: the row says sent

        return asyncio.ensure_future(sent())

    def _log_for(self, d: Due) -> Any:
        """The logger of one delivery: its ids and purpose, the recipient redacted."""
        return self.log.bind(outbox_id=d.message_id, delivery=d.id, rcpt=logs.redact_address(d.rcpt),
                             purpose=d.purpose, ref=d.ref)

    async def _failed(self, d: Due, e: BaseException, log: Any) -> None:
        """A delivery that did not go: deferred with backoff, or failed after MAX_ATTEMPTS."""
        attempts = d.attempts + 1
        error = f"{type(e).__name__}: {e}"[:500]
        logged = logs.redact_in(error, d.rcpt)  # a refusal names the recipient
        gave_up = attempts >= MAX_ATTEMPTS
        metrics.worker_metrics().outgoing.labels("failed" if gave_up else "deferred").inc()
        if gave_up:
            await self.writer.run(record(d.id, "failed", f"gave up: {error}", 0))
            log.error("delivery failed after retries", attempts=attempts, error=logged)
            return
        delay = backoff(attempts, self.cfg.worker.retry_base, self.cfg.worker.retry_max)
        await self.writer.run(record(d.id, "queued", error, time.time() + delay))
        log.warning("delivery deferred", attempts=attempts, retry_in=delay, error=logged)

    async def _relay(self, d: Due) -> None:
        # Imported here: only a configured smarthost needs it, and the SMTP process imports
        # this module (work_due) without ever relaying.
        import aiosmtplib

        host, port = parse_listen(self.cfg.outbox.smarthost)
        mode = self.cfg.outbox.smarthost_tls
        user = self.cfg.outbox.smarthost_user or None
        password = None
        if user and self.cfg.outbox.smarthost_password_file:
            password = self._password()
        tls = None
        if mode != "none":
            tls = ssl.create_default_context()
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # The client, not aiosmtplib.send: send() refuses an empty sender with a raw
            # message, and automatic replies must go out from the null sender (RFC 3834).
            client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, use_tls=mode == "tls",
                                     start_tls=mode == "starttls", tls_context=tls,
                                     username=user, password=password,
                                     local_hostname=self.cfg.hostname)
            async with client:
                # SMTPUTF8 when an address needs it (IDN domains, UTF-8 local parts).
                utf8 = not (d.mail_from + d.rcpt).isascii()
                options, encoding = (["SMTPUTF8"], "utf-8") if utf8 else ([], "ascii")
                await client.mail(d.mail_from, options=options, encoding=encoding)
                await client.rcpt(d.rcpt, encoding=encoding)
                await _data(client, self._wire_form(d))
        except aiosmtplib.SMTPAuthenticationError:
            raise  # our login is wrong: retried, so fixing the password file sends the mail
        except aiosmtplib.SMTPResponseException as e:  # a refused RCPT (one per mail) too
            if 500 <= e.code < 600:
                raise PermanentFailure(f"{e.code} {e.message}") from e
            raise

    def _wire_form(self, d: Due) -> bytes:
        """The message as DATA carries it, prepared once per message, not once per recipient
        as aiosmtplib's data() would: a broadcast goes to every SSC."""
        cached = self._wire.get(d.message_id)
        if cached is None:
            cached = wire_form(d.raw)
            self._wire = {d.message_id: cached}  # one message at a time is what repeats
        return cached

    def _password(self) -> str:
        """Read at each relay, so a changed password file needs no restart."""
        text = Path(self.cfg.outbox.smarthost_password_file).read_text(encoding="utf-8")
        return (text.splitlines() or [""])[0]

    def _write_batch(self, batch: Sequence[Due]) -> list[OSError | None]:
        """The batch's files in the outbox directory (``write_files``). A file that could not
        be written is that delivery's error."""
        directory = self.maildir
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return [e] * len(batch)
        try:
            return write_files(dir_fd, batch)
        finally:
            os.close(dir_fd)


_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write_files(dir_fd: int, batch: Sequence[Due]) -> list[OSError | None]:
    """Each delivery as one file, written whole, in the directory ``dir_fd``: written and
    fsynced under a temporary name, renamed to its own, then the directory fsynced once for
    the batch's renames. So a reader of the directory never sees half a message, even after
    a crash, and each file is on disk before its row says sent. An fsync per file, not one
    syncfs(2) for the batch: syncfs would also flush every other program's data on that
    filesystem, a cost this daemon cannot bound (docs/performance.md)."""
    errors: list[OSError | None] = [None] * len(batch)
    renamed = False
    for i, d in enumerate(batch):
        safe_rcpt = "".join(c if c.isalnum() or c in "@.-_+" else "_" for c in d.rcpt)[:100]
        name = f"{d.message_id:08d}-{d.id:08d}-{safe_rcpt}.eml"
        tmp = f".{name}.tmp"
        data = f"X-Envelope-From: <{d.mail_from}>\r\nX-Envelope-To: <{d.rcpt}>\r\n".encode() + d.raw
        try:
            # Roster mail: the owner's alone, also where outbox.directory is outside the state.
            fd = os.open(tmp, _OPEN_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            # A full disk: the delivery is deferred; its half-written file must not stay
            # to take the space the retry needs.
            _unlink(tmp, dir_fd)
            errors[i] = e
            continue
        renamed = True
    if renamed:
        try:
            os.fsync(dir_fd)
        except OSError as e:
            return [e] * len(batch)
    return errors


def _unlink(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
