"""``tldops invite``: the report's main recommendation, growing the list, as a command.

Each ccTLD in the root that has no SSC on the roster is invited by mail to its IANA
administrative contact (looked up as for authentication: the address IANA lists, never one
from elsewhere), with the request form, at most once per outreach.interval_days. Each
invitation is recorded with the mail in one transaction, and the interval is checked again
inside it, so two runs at once never invite twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from dataclasses import dataclass

from tldops_mta.auth.iana import IanaClient, LookupUnavailable
from tldops_mta.mail import mailing
from tldops_mta.mail.tlp import Tlp
from tldops_mta.ops import stats
from tldops_mta.policy import texts
from tldops_mta.settings import cctlds, policy_files
from tldops_mta.settings.config import Config
from tldops_mta.settings.live import Live
from tldops_mta.store import storage

DAY = 86400.0

FAILURES_IN_A_ROW = 3
"""IANA lookups that may fail one after the other before a run stops: past that, IANA is
down or out of reach from here, and asking for each of some 300 ccTLDs only takes long."""


@dataclass(frozen=True)
class Invite:
    tld: str
    shown: str
    country: str
    region: str
    admin: str | None = None
    skipped: str | None = None
    """Why not invited (None: invited, or would be with --dry-run)."""

    def as_dict(self) -> dict[str, object]:
        return {"tld": self.tld, "cctld": self.shown, "country": self.country, "region": self.region,
                "admin": self.admin, "invited": self.skipped is None, "skipped": self.skipped}


class IanaUnreachable(Exception):
    """Lookups for several ccTLDs in a row failed: the run stopped (what it did so far is kept)."""

    def __init__(self, tlds: list[str], reason: str, done: list[Invite]) -> None:
        super().__init__(reason)
        self.tlds, self.reason, self.done = tlds, reason, done


def candidates(table: list[cctlds.Cctld], subscribed: set[str], day: dt.date, region: str | None
               ) -> list[cctlds.Cctld]:
    """The ccTLDs to consider: in the root and counted that day, not subscribed, in ``region``."""
    return sorted((c for c in table if c.counts_on(day) and c.tld not in subscribed
                   and (region is None or c.region == region)), key=lambda c: (c.region, c.idn, c.tld))


def too_soon(last: float | None, now: float, interval_days: int) -> str | None:
    if last is not None and now - last < interval_days * DAY:
        return f"invited {texts.utc_day(last)}; again after {interval_days} days"
    return None


def run(cfg: Config, *, region: str | None, dry_run: bool, now: float | None = None) -> list[Invite]:
    """Invite (or, dry, list) every candidate; the outcome of each."""
    table = cctlds.load(cfg.rules_dir)
    live = Live(cfg, policy_files.load(cfg.rules_dir))
    return asyncio.run(_run(live, table, region, dry_run, time.time() if now is None else now))


async def _run(live: Live, table: list[cctlds.Cctld], region: str | None, dry_run: bool,
               now: float) -> list[Invite]:
    cfg = live.cfg
    interval = cfg.outreach.interval_days
    async with storage.standalone(cfg) as (writer, reader):
        day = dt.datetime.fromtimestamp(now, dt.UTC).date()
        subscribed = await reader.run(stats.subscribed_now)
        last = await reader.run(stats.last_invitations)
        iana = IanaClient(cfg.iana, writer, reader)
        out: list[Invite] = []
        failed: list[str] = []
        for c in candidates(table, subscribed, day, region):
            base = Invite(c.tld, c.shown, c.country, c.region)
            why = too_soon(last.get(c.tld), now, interval)
            if why:
                out.append(_with(base, skipped=why))
                continue
            try:
                contact = await iana.admin_contact(c.tld)
            except LookupUnavailable as e:
                failed.append(c.tld)
                if len(failed) == FAILURES_IN_A_ROW:
                    raise IanaUnreachable(failed, e.reason, out) from e
                out.append(_with(base, skipped=f"IANA lookup unavailable now ({e.reason})"))
                continue
            failed = []
            if contact.status != "ok" or not contact.email:
                out.append(_with(base, skipped=f"IANA lists no administrative contact ({contact.status})"))
                continue
            if dry_run:
                out.append(_with(base, admin=contact.email))
                continue
            sent = await writer.run(_invitation(live, c, contact.email, now, interval))
            out.append(_with(base, admin=contact.email, skipped=sent))
        return out


def _with(base: Invite, **changes: str | None) -> Invite:
    return Invite(**{**base.__dict__, **changes})


def _invitation(live: Live, c: cctlds.Cctld, admin: str, now: float, interval: int
                ) -> storage.Job:
    def job(conn: sqlite3.Connection) -> str | None:
        last = conn.execute("SELECT max(sent_at) FROM invitations WHERE tld = ?", (c.tld,)).fetchone()[0]
        why = too_soon(last, now, interval)
        if why:
            return why
        home = live.cfg.outreach.home_url
        mailing.send(live, conn, "invitation", [admin],
                     {"tld": c.unicode or c.tld, "country": c.country,
                      "requests": live.service_address("requests"), "help": live.service_address("help"),
                      "home": f"More: {home}" if home else ""},
                     tlp=Tlp.CLEAR, bounce_tag=f"i{c.tld}", purpose="invitation", ref=f"invite-{c.tld}")
        conn.execute("INSERT INTO invitations (tld, admin_email, sent_at, outbox_message_id)"
                     " VALUES (?, ?, ?, (SELECT max(id) FROM outbox_messages))", (c.tld, admin.lower(), now))
        return None

    return job
