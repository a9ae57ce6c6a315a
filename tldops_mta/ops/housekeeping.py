"""The nightly housekeeping, once a day at housekeeping.hour (UTC), in the worker:

- the retention purge: the octets of processed messages, and of outgoing mail no longer
  queued, older than storage.retention_days, are removed (the roster is personal data, and
  so are requests: kept only as long as the operator said). Envelopes, statuses and the
  audit trail stay, so the history is still whole;
- once a month, the subscription statistics (``tldops stats``) to the Validators and the
  Standing Committee, as the report asks of the TLD-OPS secretariat;
- with publish.dir set, the public membership page, rewritten when it would change (a
  failed write is logged and tried again the next night).

Each day is claimed in ``housekeeping_runs`` (each month in ``stats_reports``) in the same
transaction as its work: a restart never purges twice nor mails the statistics twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tldops_mta import logs
from tldops_mta.mail import mailing
from tldops_mta.mail.tlp import Tlp
from tldops_mta.ops import publish, stats
from tldops_mta.settings import cctlds
from tldops_mta.settings.live import Live
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.storage import Reader, Writer

DAY = 86400.0


@dataclass(frozen=True)
class Purged:
    spool_raw: int
    outbox_raw: int


def purge(conn: sqlite3.Connection, cutoff: float) -> Purged:
    """Remove the octets older than ``cutoff`` of what no longer needs them."""
    spool_raw = conn.execute(
        "DELETE FROM spool_messages WHERE id IN (SELECT id FROM spool"
        " WHERE status IN ('done', 'rejected', 'failed') AND received_at < ?)", (cutoff,)).rowcount
    outbox_raw = conn.execute(
        "UPDATE outbox_messages SET raw = x'' WHERE created_at < ? AND length(raw) > 0"
        " AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d"
        "                 WHERE d.message_id = outbox_messages.id AND d.status = 'queued')",
        (cutoff,)).rowcount
    # Imported here: the SMTP process imports this module (work_due) and must not load the
    # desks' libraries (dkimpy). The list's unconfirmed posts are kept in their tokens.
    from tldops_mta.desks import list_desk

    spool_raw += list_desk.forget_posts(conn, expired_before=time.time())
    return Purged(spool_raw, outbox_raw)


def run_time(day: dt.date, hour: int) -> float:
    return dt.datetime.combine(day, dt.time(hour), dt.UTC).timestamp()


def next_due_at(conn: sqlite3.Connection, hour: int, now: float | None = None) -> float:
    """Today's run time if today's run is still to do, else tomorrow's."""
    now = time.time() if now is None else now
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    done = conn.execute("SELECT 1 FROM housekeeping_runs WHERE day = ?", (today.isoformat(),)).fetchone()
    return run_time(today + dt.timedelta(days=1) if done else today, hour)


class Housekeeping(DueLoop):
    def __init__(self, live: Live, writer: Writer, reader: Reader) -> None:
        super().__init__(reader, logs.get("housekeeping"))
        self.rt = live
        self.writer = writer
        self.on_mail: Callable[[], None] = lambda: None
        """Called when the monthly statistics were queued for the outbox."""

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return next_due_at(conn, self.rt.cfg.housekeeping.hour)

    async def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        cfg = self.rt.cfg
        hour = cfg.housekeeping.hour
        if await self.reader.run(lambda c: next_due_at(c, hour, now)) > now:
            return False
        day = dt.datetime.fromtimestamp(now, dt.UTC).date()
        cutoff = now - cfg.storage.retention_days * DAY
        table = None
        if cfg.housekeeping.monthly_stats:
            try:
                table = self.rt.cctld_table()
            except cctlds.CctldsError as e:
                self.log.error("no monthly statistics: rules/cctlds.csv", problems=e.problems[:3])
        live = self.rt

        def job(conn: sqlite3.Connection) -> tuple[Purged | None, bool]:
            claimed = conn.execute("INSERT INTO housekeeping_runs (day, at, spool_raw, outbox_raw)"
                                   " VALUES (?, ?, 0, 0) ON CONFLICT DO NOTHING",
                                   (day.isoformat(), now)).rowcount
            if not claimed:
                return None, False
            purged = purge(conn, cutoff)
            conn.execute("UPDATE housekeeping_runs SET spool_raw = ?, outbox_raw = ? WHERE day = ?",
                         (purged.spool_raw, purged.outbox_raw, day.isoformat()))
            mailed = table is not None and monthly_stats(live, conn, table, day, now)
            return purged, mailed

        purged, mailed = await self.writer.run(job)
        if mailed:
            self.on_mail()
        if purged is not None:
            page = await self.membership_page(day) if cfg.publish.dir else "off"
            self.log.info("housekeeping done", day=day.isoformat(), spool_raw_purged=purged.spool_raw,
                          outbox_raw_purged=purged.outbox_raw, monthly_stats_mailed=mailed,
                          membership_page=page)
        return True

    async def membership_page(self, day: dt.date) -> str:
        """The public page in publish.dir, when it would change: 'written', 'unchanged', or
        'failed' (logged; the next night tries again, nothing else depends on it)."""
        live = self.rt
        directory = Path(live.cfg.publish.dir)
        try:
            table = live.cctld_table()
            page = await self.reader.run(lambda c: publish.gather(c, table, live, day))
            # Files and fsync: off the event loop.
            done = await asyncio.to_thread(publish.publish_if_changed, directory, page)
        except (OSError, sqlite3.Error, cctlds.CctldsError) as e:
            self.log.error("membership page not written; tried again next night",
                           dir=str(directory), error=str(e))
            return "failed"
        if done.changed:
            self.log.info("membership page written", dir=str(directory),
                          roster_version=page.roster_version, subscribed=page.subscribed)
        return "written" if done.changed else "unchanged"


def monthly_stats(live: Live, conn: sqlite3.Connection, table: list[cctlds.Cctld], day: dt.date,
                  now: float) -> bool:
    """The month's statistics to the Validators and the Standing Committee, once per month
    (claimed in stats_reports); False when already sent or nobody to send to."""
    cfg = live.cfg
    to = sorted({*cfg.validation.validators, cfg.validation.committee} - {""})
    if not to:
        return False
    period = f"stats-{day:%Y-%m}"
    if not conn.execute("INSERT INTO stats_reports (period, claimed_at) VALUES (?, ?)"
                        " ON CONFLICT DO NOTHING", (period, now)).rowcount:
        return False
    summary = stats.with_freshness_now(stats.summarise(table, stats.subscribed_now(conn), day, "roster",
                                                       stats.last_invitations(conn)), conn, cfg, table, now)
    # Counts and ccTLD names only, no person: GREEN, it may go around the community.
    mailing.send(live, conn, "stats_report", to,
                 {"month": f"{day:%B %Y}", "summary": stats.render_text(summary),
                  "csv": stats.render_csv(summary)},
                 tlp=Tlp.GREEN, bounce_tag=period, purpose="stats", ref=period)
    return True
