"""Freshness: each SSC re-confirms their roster entry once per ``freshness.interval_days``.

A round: the ask (their entry as the broadcast shows it, and a one-time confirm+TOKEN@
address), reminders after ``remind_after`` and twice that, and with no answer by
``stale_after`` the SSC is *unconfirmed*; a permanent failure of the ask or of the broadcast
makes them unconfirmed at once. The ccTLD's IANA administrative contact and the Validators
then get one notice per ccTLD. A "yes" to the token, or an own correction through update@,
confirms. Nobody is removed.

Exactly once: every ask, reminder and notice changes the SSC's row of ``freshness`` (the
claim) in the transaction that queues its mail, under a condition read in that transaction;
a daemon that was down finds the rows as they were and catches up without doubling.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tldops_mta import logs
from tldops_mta.auth.iana import IanaClient, LookupUnavailable
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.mail import mailing
from tldops_mta.mail.tlp import Tlp
from tldops_mta.policy import texts
from tldops_mta.settings.config import Config
from tldops_mta.settings.live import Live
from tldops_mta.store import tokens
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.storage import Reader, Writer

PURPOSE_FRESHNESS = "freshness"
"""The token of an ask or a reminder: answering it confirms the entry."""

HOUR = 3600.0
REFUSALS_WITHIN = 7 * 86400.0
RETRY_AFTER_FAILURE = 3600.0
"""An IANA lookup for a notice failed: the notice waits this long, then tries again."""
# Mail whose permanent failure makes its SSC unconfirmed at once: the outbox purposes
# 'freshness' (an ask or a reminder) and 'broadcast'.
# A round is open while asked_at >= due_at: asked, and neither confirmed (asked_at NULL) nor
# closed by staleness or a bounce (due_at moved to one interval after the ask). The SQL
# below spells that condition out each time: no query is built from strings.


def interval(cfg: Config) -> float:
    return cfg.freshness.interval_days * 86400.0


# -- the rows -----------------------------------------------------------------------------------

def sync(conn: sqlite3.Connection, cfg: Config, now: float) -> int:
    """Give every SSC on the roster a row, and drop the rows of those who left. An SSC's
    first ask falls one interval after they were added; those already older than that when
    freshness first sees them (turning it on with an existing roster) are spread evenly over
    the next interval in the order they were added, never asked in one burst."""
    conn.execute("DELETE FROM freshness WHERE NOT EXISTS (SELECT 1 FROM roster r"
                 " WHERE r.tld = freshness.tld AND lower(r.email) = freshness.email)")
    new = conn.execute("SELECT r.tld, lower(r.email), r.since FROM roster r WHERE NOT EXISTS"
                       " (SELECT 1 FROM freshness f WHERE f.tld = r.tld AND f.email = lower(r.email))"
                       " ORDER BY r.since, r.tld, r.email").fetchall()
    span = interval(cfg)
    overdue = [r for r in new if r[2] + span <= now]
    for i, (tld, email, _since) in enumerate(overdue):
        conn.execute("INSERT INTO freshness (tld, email, due_at) VALUES (?,?,?)",
                     (tld, email, now + span * i / len(overdue)))
    for tld, email, since in new:
        if since + span > now:
            conn.execute("INSERT INTO freshness (tld, email, due_at) VALUES (?,?,?)",
                         (tld, email, since + span))
    return len(new)


def confirmed(conn: sqlite3.Connection, cfg: Config, tld: str, email: str, now: float) -> bool:
    """Inside a transaction: ``email`` confirmed their entry for ``tld``; the next ask is one
    interval from now and any unconfirmed mark goes. False when they are not an SSC of it."""
    email = email.lower()
    if not conn.execute("SELECT 1 FROM roster WHERE tld = ? AND lower(email) = ?", (tld, email)).fetchone():
        return False
    conn.execute("INSERT INTO freshness (tld, email, due_at, confirmed_at) VALUES (?,?,?,?)"
                 " ON CONFLICT (tld, email) DO UPDATE SET due_at = excluded.due_at,"
                 " confirmed_at = excluded.confirmed_at, asked_at = NULL, reminders = 0,"
                 " unconfirmed_since = NULL, notified_at = NULL",
                 (tld, email, now + interval(cfg), now))
    return True


def mark_unconfirmed(conn: sqlite3.Connection, cfg: Config, email: str, now: float) -> int:
    """Inside a transaction: mail to ``email`` failed for good; each of their entries is
    unconfirmed from now (an open round is closed: the next ask comes one interval after it)."""
    return conn.execute(
        "UPDATE freshness SET due_at = CASE WHEN asked_at IS NOT NULL AND asked_at >= due_at"
        " THEN asked_at + ? ELSE due_at END, unconfirmed_since = ?"
        " WHERE email = ? AND unconfirmed_since IS NULL",
        (interval(cfg), now, email.lower())).rowcount


def _failures(conn: sqlite3.Connection, cfg: Config, now: float) -> int:
    """Permanent failures of asks and broadcasts not read yet, bounce reports and the
    smarthost's refusals alike, each read once (what was read is noted in the same
    transaction)."""
    last = conn.execute("SELECT value FROM freshness_cursor WHERE name = 'bounce'").fetchone()[0]
    bounced = conn.execute(
        "SELECT lower(d.rcpt) FROM bounces b JOIN outbox_deliveries d ON d.id = b.delivery_id"
        " JOIN outbox_messages m ON m.id = d.message_id"
        " WHERE b.id > ? AND b.permanent = 1 AND m.purpose IN ('freshness', 'broadcast')", (last,)).fetchall()
    conn.execute("UPDATE freshness_cursor SET value = (SELECT coalesce(max(id), 0) FROM bounces)"
                 " WHERE name = 'bounce'")
    refused = _refusals(conn, now).fetchall()
    conn.executemany("INSERT INTO freshness_refusals (delivery_id) VALUES (?)", [(r[0],) for r in refused])
    failing = {*(r[0] for r in bounced), *(r[1] for r in refused)}
    return sum(mark_unconfirmed(conn, cfg, a, now) for a in failing)


def _refusals(conn: sqlite3.Connection, now: float) -> sqlite3.Cursor:
    """(delivery, address) of each refusal of an ask or a broadcast not counted yet. Read by
    delivery, not by a time cursor: the outbox's times are taken before its commits, which
    need not come in that order. Only the last REFUSALS_WITHIN count (a refusal from before
    freshness was turned on is old news)."""
    return conn.execute(
        "SELECT d.id, lower(d.rcpt) FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
        " WHERE d.status = 'failed' AND d.updated_at > ? AND m.purpose IN ('freshness', 'broadcast')"
        " AND NOT EXISTS (SELECT 1 FROM freshness_refusals s WHERE s.delivery_id = d.id)",
        (now - REFUSALS_WITHIN,))


def _failures_unread(conn: sqlite3.Connection, now: float) -> bool:
    last = conn.execute("SELECT value FROM freshness_cursor WHERE name = 'bounce'").fetchone()[0]
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM bounces WHERE id > ?)", (last,)).fetchone()[0]
                or _refusals(conn, now).fetchone())


def _stale(conn: sqlite3.Connection, cfg: Config, now: float) -> int:
    """Open rounds without an answer by stale_after: unconfirmed since that moment (the same
    moment however late a daemon that was down gets to it)."""
    return conn.execute(
        "UPDATE freshness SET unconfirmed_since = asked_at + ?, due_at = asked_at + ?"
        " WHERE asked_at IS NOT NULL AND asked_at >= due_at AND unconfirmed_since IS NULL"
        " AND asked_at + ? <= ?",
        (cfg.freshness.stale_after, interval(cfg), cfg.freshness.stale_after, now)).rowcount


# -- the mail -----------------------------------------------------------------------------------

def _sent_last_hour(conn: sqlite3.Connection, now: float) -> list[float]:
    return [r[0] for r in conn.execute("SELECT at FROM freshness_mails WHERE kind != 'notice' AND at > ?"
                                       " ORDER BY at", (now - HOUR,))]


def _ask(live: Live, conn: sqlite3.Connection, tld: str, email: str, now: float,
         asked: float | None) -> bool:
    """The ask (``asked`` None) or a reminder of the round asked at ``asked``, with a new
    one-time address; each delivery has its own return path, so a bounce names the SSC."""
    # Imported here: the SMTP process imports this module (work_due) only to ask when the
    # next ask is due, and must stay small (formats reads the ccTLD table).
    from tldops_mta.roster import formats, roster_table

    entry = next((e for e in roster_table.current(conn, tld) if e.email.lower() == email), None)
    if entry is None:
        return False
    row = formats.rows({tld: [entry]})[0]
    cfg = live.cfg
    address = mailing.one_time_address(live, conn, PURPOSE_FRESHNESS, to=email, now=now, ttl=interval(cfg),
                                       payload=json.dumps({"tld": tld, "email": email}))
    values: dict[str, object] = {
        "tld": tld, "entry": "\n".join([row.shown_tld, *formats.entry_lines(row)]),
        "confirm_address": address, "update": live.service_address("update"),
        "help": live.service_address("help")}
    if asked is not None:
        values["asked"] = texts.utc_day(asked)
    mailing.send(live, conn, "freshness_ask" if asked is None else "freshness_reminder", [email], values,
                 tlp=Tlp.parse(cfg.broadcast.tlp), bounce_tag=None, purpose="freshness",
                 reply_to=address, ref=tld)
    conn.execute("INSERT INTO freshness_mails (tld, email, kind, at) VALUES (?,?,?,?)",
                 (tld, email, "ask" if asked is None else "reminder", now))
    return True


@dataclass(frozen=True)
class Sent:
    """What one look did."""

    asks: int = 0
    reminders: int = 0
    stale: int = 0
    bounced: int = 0
    added: int = 0
    held: int = 0
    """Due, but held back by freshness.max_per_hour."""

    @property
    def anything(self) -> bool:
        return bool(self.asks or self.reminders or self.stale or self.bounced or self.added)


def run_due(live: Live, conn: sqlite3.Connection, now: float) -> Sent:
    """Inside one transaction: everything due but the notices (which need IANA first)."""
    cfg = live.cfg
    added = sync(conn, cfg, now)
    bounced = _failures(conn, cfg, now)
    stale = _stale(conn, cfg, now)
    room = max(0, cfg.freshness.max_per_hour - len(_sent_last_hour(conn, now)))
    remind_after = cfg.freshness.remind_after
    # A reminder a daemon that was down missed is not sent late with the next one: the
    # latest due is sent, once.
    reminders = conn.execute(
        "SELECT tld, email, asked_at, min(2, CAST((? - asked_at) / ? AS INTEGER)) FROM freshness"
        " WHERE asked_at IS NOT NULL AND asked_at >= due_at AND unconfirmed_since IS NULL AND reminders < 2"
        " AND asked_at + (reminders + 1) * ? <= ? ORDER BY asked_at, tld, email",
        (now, remind_after, remind_after, now)).fetchall()
    asks = conn.execute("SELECT tld, email FROM freshness WHERE due_at <= ?"
                        " AND (asked_at IS NULL OR asked_at < due_at) ORDER BY due_at, tld, email",
                        (now,)).fetchall()
    sent_reminders = sent_asks = 0
    for tld, email, asked, n in reminders[:room]:
        conn.execute("UPDATE freshness SET reminders = ? WHERE tld = ? AND email = ?", (n, tld, email))
        sent_reminders += _ask(live, conn, tld, email, now, asked)
    room -= min(room, len(reminders))
    for tld, email in asks[:room]:
        conn.execute("UPDATE freshness SET asked_at = ?, reminders = 0 WHERE tld = ? AND email = ?",
                     (now, tld, email))
        sent_asks += _ask(live, conn, tld, email, now, None)
    held = max(0, len(reminders) + len(asks) - sent_reminders - sent_asks)
    return Sent(sent_asks, sent_reminders, stale, bounced, added, held)


def notice_due(conn: sqlite3.Connection, now: float) -> str | None:
    """The ccTLD of the next notice: one with unconfirmed SSCs nobody was told of."""
    row = conn.execute("SELECT tld FROM freshness WHERE unconfirmed_since IS NOT NULL AND notified_at IS NULL"
                       " AND coalesce(notice_after, 0) <= ? ORDER BY unconfirmed_since, tld LIMIT 1",
                       (now,)).fetchone()
    return None if row is None else str(row[0])


def notify(live: Live, conn: sqlite3.Connection, tld: str, admin: str | None, now: float) -> int:
    """Inside a transaction: one notice about ``tld``'s unconfirmed SSCs not told of yet, to
    its IANA administrative contact (``admin``, None when IANA lists none) and the Validators."""
    from tldops_mta.roster import formats, roster_table  # see _ask

    waiting = {r[0]: r[1] for r in conn.execute(
        "SELECT email, unconfirmed_since FROM freshness WHERE tld = ? AND unconfirmed_since IS NOT NULL"
        " AND notified_at IS NULL", (tld,))}
    entries = [e for e in roster_table.current(conn, tld) if e.email.lower() in waiting]
    if not entries:
        return 0
    blocks = []
    for row in formats.rows({tld: entries}):
        since = texts.utc_day(waiting[row.entry.email.lower()])
        blocks.append("\n".join([*formats.entry_lines(row), f"    unconfirmed since {since}"]))
    to = list(dict.fromkeys([*([admin] if admin else []), *live.cfg.validation.validators]))
    mailing.send(live, conn, "freshness_notice", to, {
        "tld": tld, "sscs": "\n\n".join(blocks), "requests": live.service_address("requests"),
        "help": live.service_address("help")}, tlp=Tlp.parse(live.cfg.broadcast.tlp),
        bounce_tag="freshness-notice", purpose="freshness-notice", ref=tld)
    conn.execute("UPDATE freshness SET notified_at = ? WHERE tld = ? AND unconfirmed_since IS NOT NULL"
                 " AND notified_at IS NULL", (now, tld))
    conn.execute("INSERT INTO freshness_mails (tld, email, kind, at) VALUES (?, '', 'notice', ?)", (tld, now))
    return len(entries)


# -- when ---------------------------------------------------------------------------------------

def next_due_at(conn: sqlite3.Connection, cfg: Config, now: float | None = None) -> float | None:
    """For work_due: when the clock next has something to do (None: nothing, or turned off)."""
    if not cfg.freshness.enabled:
        return None
    now = time.time() if now is None else now
    unsynced = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM roster r WHERE NOT EXISTS (SELECT 1 FROM freshness f"
        " WHERE f.tld = r.tld AND f.email = lower(r.email))) OR EXISTS (SELECT 1 FROM freshness f"
        " WHERE NOT EXISTS (SELECT 1 FROM roster r WHERE r.tld = f.tld AND lower(r.email) = f.email))"
    ).fetchone()[0]
    if unsynced or _failures_unread(conn, now):
        return now
    r, s = cfg.freshness.remind_after, cfg.freshness.stale_after
    mailed = conn.execute(
        "SELECT min(CASE WHEN asked_at IS NOT NULL AND asked_at >= due_at AND unconfirmed_since IS NULL"
        " AND reminders < 2 THEN asked_at + (reminders + 1) * ? END),"
        " min(CASE WHEN asked_at IS NULL OR asked_at < due_at THEN due_at END) FROM freshness",
        (r,)).fetchone()
    other = conn.execute(
        "SELECT min(CASE WHEN asked_at IS NOT NULL AND asked_at >= due_at AND unconfirmed_since IS NULL"
        " THEN asked_at + ? END),"
        " min(CASE WHEN unconfirmed_since IS NOT NULL AND notified_at IS NULL"
        " THEN coalesce(notice_after, 0) END) FROM freshness", (s,)).fetchone()
    times = [t for t in other if t is not None]
    mail_at = [t for t in mailed if t is not None]
    if mail_at:
        sent = _sent_last_hour(conn, now)
        capped = len(sent) >= cfg.freshness.max_per_hour
        times.append(max(min(mail_at), sent[0] + HOUR) if capped else min(mail_at))
    return min(times) if times else None


# -- the answer ---------------------------------------------------------------------------------

def _answered(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str, now: float) -> str:
    wanted = json.loads(r.payload or "{}")
    tld = str(wanted.get("tld", ""))
    if confirmed(conn, live.cfg, tld, sender_key, now):
        return f"the entry for .{tld} is confirmed"
    return f"nothing confirmed: no longer an SSC of .{tld}"


PURPOSES = (Purpose(PURPOSE_FRESHNESS, "freshness", _answered, "freshness: {result}", "freshness confirmed",
                    ("result",)),)


# -- the clock ----------------------------------------------------------------------------------

class FreshnessClock(DueLoop):
    """In the worker: asks, reminders, staleness and notices as they fall due."""

    wake_gap = 1.0  # woken after every batch of the worker; a look is a few queries over the roster

    def __init__(self, live: Live, writer: Writer, reader: Reader, iana: IanaClient) -> None:
        super().__init__(reader, logs.get("freshness"))
        self.rt = live
        self.writer = writer
        self.iana = iana
        self.on_mail: Callable[[], None] = lambda: None

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return next_due_at(conn, self.rt.cfg)

    async def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        live = self.rt
        if not live.cfg.freshness.enabled:
            return False
        done = await self.writer.run(lambda c: run_due(live, c, now))
        if done.anything or done.held:
            self.log.info("freshness", asks=done.asks, reminders=done.reminders, stale=done.stale,
                          bounced=done.bounced, added=done.added, held=done.held)
        else:
            self.log.debug("freshness: nothing due")
        told = await self._notice(now)
        if done.asks or done.reminders or told:
            self.on_mail()
        return done.anything or told

    async def _notice(self, now: float) -> bool:
        tld = await self.reader.run(notice_due, now)
        if tld is None:
            return False
        live = self.rt
        try:
            contact = await self.iana.admin_contact(tld, refresh=True)
        except LookupUnavailable as e:
            await self.writer.run(lambda c: c.execute(
                "UPDATE freshness SET notice_after = ? WHERE tld = ? AND unconfirmed_since IS NOT NULL"
                " AND notified_at IS NULL", (now + RETRY_AFTER_FAILURE, tld)))
            self.log.warning("freshness notice deferred", tld=tld, reason=e.reason)
            return True
        admin = contact.email if contact.status == "ok" else None
        count = await self.writer.run(lambda c: notify(live, c, tld, admin, now))
        self.log.info("freshness notice", tld=tld, unconfirmed=count, admin_told=admin is not None)
        return True


def marks(conn: sqlite3.Connection, cfg: Config) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """(ccTLD, address) -> (last confirmed, unconfirmed since), for the roster's formats;
    none while freshness is turned off."""
    if not cfg.freshness.enabled:
        return {}
    return {(str(r[0]), str(r[1])): (r[2], r[3]) for r in conn.execute(
        "SELECT tld, email, confirmed_at, unconfirmed_since FROM freshness")}


def overview(conn: sqlite3.Connection, cfg: Config, next_asks: int) -> dict[str, list[dict[str, Any]]]:
    """For ``tldops freshness``: the unconfirmed SSCs, those asked and not answered yet, and
    the next ``next_asks`` asks due (the times are Unix times)."""
    cols = ("tld", "role", "email", "confirmed_at", "asked_at", "reminders", "unconfirmed_since",
            "notified_at", "due_at")
    query = ("SELECT f.tld, r.role, f.email, f.confirmed_at, f.asked_at, f.reminders, f.unconfirmed_since,"
             " f.notified_at, f.due_at FROM freshness f JOIN roster r ON r.tld = f.tld"
             " AND lower(r.email) = f.email WHERE ")

    def listed(where: str, *params: object) -> list[dict[str, Any]]:
        return [dict(zip(cols, r, strict=True)) for r in conn.execute(query + where, params)]

    return {
        "unconfirmed": listed("f.unconfirmed_since IS NOT NULL ORDER BY f.unconfirmed_since, f.tld, f.email"),
        "awaiting_answer": listed("f.asked_at IS NOT NULL AND f.asked_at >= f.due_at"
                                  " AND f.unconfirmed_since IS NULL ORDER BY f.asked_at, f.tld, f.email"),
        "next_asks": listed("(f.asked_at IS NULL OR f.asked_at < f.due_at) ORDER BY f.due_at, f.tld, f.email"
                            " LIMIT ?", next_asks) if cfg.freshness.enabled else [],
    }


def confirmed_within(conn: sqlite3.Connection, cfg: Config, now: float) -> dict[str, tuple[int, int]]:
    """ccTLD -> (SSCs, those who confirmed or were added within the last interval)."""
    out: dict[str, tuple[int, int]] = {}
    for tld, last in conn.execute(
            "SELECT r.tld, max(coalesce(f.confirmed_at, 0), r.since) FROM roster r LEFT JOIN freshness f"
            " ON f.tld = r.tld AND f.email = lower(r.email)"):
        n, fresh = out.get(tld, (0, 0))
        out[tld] = (n + 1, fresh + (last >= now - interval(cfg)))
    return out
