"""The roster broadcast: claim a period, build the mail once, queue it (signed once) to all.

Exactly once per period: the claim (a row in ``broadcasts``, unique per period) and the
mail with one delivery per SSC are written in one transaction. A crash before the commit
leaves nothing (the period is claimed again later); after it, the durable outbox delivers
what is left, each delivery once, so a restart in the middle of sending resumes without
duplicates. Each delivery has its own envelope sender (VERP, ``bounces+b<delivery>@``), so a
bounce names the SSC it is about.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from tldops_mta import logs
from tldops_mta.mail import outbox
from tldops_mta.mail.tlp import Tlp
from tldops_mta.policy.texts import counted, utc_day
from tldops_mta.roster import mailman
from tldops_mta.roster.broadcast_schedule import WEEKDAYS, Period, Schedule, due, next_check
from tldops_mta.settings.config import Config
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.storage import Reader, Writer


def schedule(cfg: Config) -> Schedule:
    return Schedule(weekday=WEEKDAYS.index(cfg.broadcast.weekday), hour=cfg.broadcast.hour,
                    weekly_if_changed=cfg.broadcast.weekly_if_changed,
                    catch_up=cfg.broadcast.catch_up)


def due_period(conn: sqlite3.Connection, cfg: Config, now: float) -> Period | None:
    if not cfg.broadcast.enabled:
        return None
    claimed = {r[0] for r in conn.execute("SELECT period FROM broadcasts")}
    roster_since = conn.execute("SELECT min(since) FROM roster").fetchone()[0]
    last = conn.execute("SELECT max(claimed_at) FROM broadcasts").fetchone()[0]
    changed = conn.execute("SELECT min(at) FROM roster_changes WHERE ? IS NULL OR at > ?",
                           (last, last)).fetchone()[0]
    return due(now, schedule(cfg), claimed, roster_since, changed)


def next_due_at(conn: sqlite3.Connection, cfg: Config, now: float | None = None) -> float | None:
    """For work_due: now when a period is due, else when one may next be."""
    if not cfg.broadcast.enabled:
        return None
    now = time.time() if now is None else now
    return now if due_period(conn, cfg, now) is not None else next_check(now, schedule(cfg))


@dataclass(frozen=True)
class Built:
    raw: bytes
    recipients: list[str]
    label: Tlp


def build(conn: sqlite3.Connection, cfg: Config, now: float, period: str, to: str | None = None) -> Built:
    """The broadcast mail: the roster as text, with CSV and vCard attached, labelled. Built
    once, whatever the number of SSCs, and signed once where it is queued (outbox.enqueue).
    ``to``: the To header (the Mailman list's address when it is posted there)."""
    # Imported here: the SMTP process imports this module (work_due) only to ask when the
    # next period is, and must stay small (the formats pull in vobject).
    from tldops_mta.roster import formats, freshness, roster_table

    tlds = [r[0] for r in conn.execute("SELECT DISTINCT tld FROM roster ORDER BY tld")]
    table = formats.rows({tld: roster_table.current(conn, tld) for tld in tlds}, freshness.marks(conn, cfg))
    label = Tlp.parse(cfg.broadcast.tlp)
    domain = cfg.server.domain
    ccs, sscs = formats.counts(table)
    day = utc_day(now)
    msg = EmailMessage()
    msg["From"] = f"TLD-OPS <{cfg.addresses.postmaster}@{domain}>"
    msg["To"] = f"TLD-OPS Security and Stability Contacts <{to or cfg.addresses.who + '@' + domain}>"
    msg["Subject"] = (f"[{label.label}] TLD-OPS roster {day}: {counted(ccs, 'ccTLD')}, "
                      f"{counted(sscs, 'contact')}")
    msg["Date"] = format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
    msg["Message-ID"] = make_msgid(idstring=period, domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(formats.text(table, now, label.label)
                    + f"\nAsk for the current roster at any time: mail {cfg.addresses.who}@{domain}.\n"
                    + "The roster is attached as CSV and as vCards for your address book.\n")
    msg.add_attachment(formats.to_csv(table).encode(), maintype="text", subtype="csv",
                       filename="tld-ops-roster.csv")
    msg.add_attachment(formats.to_vcard(table).encode(), maintype="text", subtype="vcard",
                       filename="tld-ops-roster.vcf")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    recipients = list(dict.fromkeys(r.entry.email.lower() for r in table))
    return Built(raw, recipients, label)


def claim_and_queue(conn: sqlite3.Connection, cfg: Config, period: str, kind: str,
                    now: float) -> int | None:
    """Inside the caller's transaction: claim ``period`` and queue its mail to every SSC.
    None when the period was already claimed (nothing is queued twice)."""
    if conn.execute("SELECT 1 FROM broadcasts WHERE period = ?", (period,)).fetchone():
        return None
    domain = cfg.server.domain
    bounces = cfg.addresses.bounces
    if mailman.enabled(cfg):
        # One post to the list (Mailman delivers it to its members, the roster's SSCs).
        from tldops_mta.mail import dkim_keys  # the post skips the outbox: signed as outbox.enqueue signs

        built = build(conn, cfg, now, period, to=cfg.mailman.list)
        mailman.queue_post(conn, period, dkim_keys.sign_outgoing(cfg, built.raw), f"{bounces}@{domain}", now)
        conn.execute("INSERT INTO broadcasts (period, kind, claimed_at, outbox_message_id, recipients, tlp)"
                     " VALUES (?,?,?,NULL,?,?)", (period, kind, now, len(built.recipients),
                                                  built.label.label))
        return len(built.recipients)
    built = build(conn, cfg, now, period)
    message_id = outbox.enqueue(built.raw, f"{bounces}@{domain}", built.recipients, "broadcast",
                                ref=period, cfg=cfg, verp=True)(conn)
    conn.execute("INSERT INTO broadcasts (period, kind, claimed_at, outbox_message_id, recipients, tlp)"
                 " VALUES (?,?,?,?,?,?)", (period, kind, now, message_id, len(built.recipients),
                                           built.label.label))
    return len(built.recipients)


def send_one(conn: sqlite3.Connection, cfg: Config, to: str, now: float) -> None:
    """The broadcast's mail, built now for one SSC (a who@ query), through the outbox."""
    built = build(conn, cfg, now, f"who-{int(now)}")
    outbox.enqueue(built.raw, f"{cfg.addresses.bounces}+who@{cfg.server.domain}", [to], "who",
                   cfg=cfg)(conn)


def status(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The latest broadcasts, newest first, with their deliveries by status."""
    out = []
    for b in conn.execute("SELECT id, period, kind, claimed_at, outbox_message_id, recipients, tlp"
                          " FROM broadcasts ORDER BY id DESC LIMIT ?", (limit,)).fetchall():
        by_status = dict(conn.execute("SELECT status, count(*) FROM outbox_deliveries WHERE message_id = ?"
                                      " GROUP BY status", (b[4],)).fetchall())
        out.append({"id": b[0], "period": b[1], "kind": b[2], "claimed_at": b[3], "recipients": b[5],
                    "tlp": b[6], "queued": by_status.get("queued", 0), "sent": by_status.get("sent", 0),
                    "failed": by_status.get("failed", 0)})
    return out


class BroadcastClock(DueLoop):
    """In the worker: claims and queues each period when it falls due."""

    wake_gap = 1.0  # woken after every batch of the worker; each look is five queries

    def __init__(self, cfg_of: Callable[[], Config], writer: Writer, reader: Reader) -> None:
        super().__init__(reader, logs.get("broadcast"))
        self.cfg_of = cfg_of
        """The configuration in force, asked at each look (a SIGHUP replaces it)."""
        self.writer = writer
        self.on_mail: Callable[[], None] = lambda: None

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return next_due_at(conn, self.cfg_of())

    async def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        cfg = self.cfg_of()

        def job(conn: sqlite3.Connection) -> tuple[str, int | None] | None:
            period = due_period(conn, cfg, now)
            if period is None:
                return None
            return period.key, claim_and_queue(conn, cfg, period.key, period.kind, now)

        done = await self.writer.run(job)
        if done is None:
            self.log.debug("no roster broadcast due")
            return False
        self.log.info("roster broadcast queued", period=done[0], recipients=done[1])
        self.on_mail()
        return True
