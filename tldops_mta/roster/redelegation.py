"""The redelegation watch: each ccTLD's IANA administrative contact, checked every night.

One ccTLD per ``redelegation.spacing`` seconds, each every ``redelegation.check_every``, so
a roster of hundreds is spread over hours and IANA sees no burst. When the contact changed
(the ccTLD may have been redelegated), that is recorded, the ccTLD is marked as needing
re-confirmation, the Validators are told, and the new contact is asked to confirm the SSCs
(a one-time reply) or replace them (a request). Nothing is removed: the SSCs stay on the
roster until a request or a Validator says otherwise.
"""

from __future__ import annotations

import sqlite3
import time

from tldops_mta import logs
from tldops_mta.auth.iana import AdminContact, IanaClient, LookupUnavailable
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.mail import mailing
from tldops_mta.mail.tlp import Tlp
from tldops_mta.roster import roster_table
from tldops_mta.settings.config import Config
from tldops_mta.settings.live import Live
from tldops_mta.store import tokens
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.storage import Reader, Writer

PURPOSE_RECONFIRM = "reconfirm"
RETRY_AFTER_FAILURE = 3600.0


def next_check(conn: sqlite3.Connection, cfg: Config) -> tuple[str, float] | None:
    """(ccTLD, when) of the next check: the one checked longest ago, among those on the roster."""
    row = conn.execute("SELECT c.tld, c.checked_at FROM cctlds c WHERE EXISTS"
                       " (SELECT 1 FROM roster r WHERE r.tld = c.tld) ORDER BY c.checked_at, c.tld LIMIT 1"
                       ).fetchone()
    return None if row is None else (str(row[0]), float(row[1]) + cfg.redelegation.check_every)


def record(live: Live, conn: sqlite3.Connection, tld: str, contact: AdminContact | None,
           now: float) -> str:
    """Inside a transaction: what a lookup found, and its consequences. Returns what happened."""
    known = conn.execute("SELECT admin_email FROM cctlds WHERE tld = ?", (tld,)).fetchone()
    old = known[0] if known else None
    new = contact.email if contact is not None and contact.status == "ok" else None
    conn.execute("UPDATE cctlds SET checked_at = ? WHERE tld = ?", (now, tld))
    if old is None:
        conn.execute("UPDATE cctlds SET admin_email = ? WHERE tld = ?", (new, tld))
        return "contact recorded"
    if new == old:
        return "unchanged"
    if conn.execute("SELECT 1 FROM redelegations WHERE tld = ? AND new_admin IS ? AND resolved_at IS NULL",
                    (tld, new)).fetchone():
        return "change already known"
    conn.execute("INSERT INTO redelegations (tld, detected_at, old_admin, new_admin) VALUES (?,?,?,?)",
                 (tld, now, old, new))
    conn.execute("UPDATE cctlds SET needs_reconfirmation = 1 WHERE tld = ?", (tld,))
    label = Tlp.parse(live.cfg.broadcast.tlp)
    listing = "\n".join(f"  {roster_table.line(e)}" for e in roster_table.current(conn, tld))
    mailing.send(live, conn, "redelegation", live.cfg.validation.validators, {
        "tld": tld, "old": old, "new": new or "(none: IANA lists no usable contact)", "roster": listing},
        tlp=label, bounce_tag="redelegation", purpose="redelegation")
    if new is not None:
        address = mailing.one_time_address(live, conn, PURPOSE_RECONFIRM, to=new, now=now, payload=tld)
        mailing.send(live, conn, "reconfirm", [new], {
            "tld": tld, "roster": listing, "confirm_address": address,
            "requests": live.service_address("requests"), "help": live.service_address("help")},
            tlp=label, bounce_tag="redelegation", purpose="redelegation", reply_to=address)
    return f"administrative contact changed from {old} to {new}"


def reconfirmed(conn: sqlite3.Connection, tld: str, admin: str, now: float) -> str:
    """The new contact answered the token: the SSCs stand, confirmed by them."""
    conn.execute("UPDATE cctlds SET admin_email = ?, needs_reconfirmation = 0 WHERE tld = ?", (admin, tld))
    conn.execute("UPDATE redelegations SET resolved_at = ? WHERE tld = ? AND resolved_at IS NULL", (now, tld))
    return f"the SSCs of .{tld} are confirmed by its new administrative contact"


def _reconfirmed(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str,
                 now: float) -> str:
    return reconfirmed(conn, r.payload or "", sender_key, now)


PURPOSES = (Purpose(PURPOSE_RECONFIRM, "redelegation", _reconfirmed, "reconfirm: {result}",
                    "ccTLD reconfirmed after a redelegation"),)


class RedelegationWatch(DueLoop):
    def __init__(self, live: Live, writer: Writer, reader: Reader, iana: IanaClient) -> None:
        super().__init__(reader, logs.get("redelegation"))
        self.rt = live
        self.writer = writer
        self.iana = iana
        self._last = 0.0
        """When the last lookup started (monotonic): the spacing is kept from it."""

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        found = next_check(conn, self.rt.cfg)
        if found is None:
            return None
        wait = self._last + self.rt.cfg.redelegation.spacing - time.monotonic()
        spaced = time.time() + max(0.0, wait)
        return max(found[1], spaced)

    async def step(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        found = await self.reader.run(lambda c: next_check(c, self.rt.cfg))
        spacing = self.rt.cfg.redelegation.spacing
        if found is None or found[1] > now or time.monotonic() - self._last < spacing:
            return False
        tld = found[0]
        self._last = time.monotonic()
        live = self.rt
        try:
            contact: AdminContact | None = await self.iana.admin_contact(tld, refresh=True)
        except LookupUnavailable as e:
            retry = now - live.cfg.redelegation.check_every + RETRY_AFTER_FAILURE
            await self.writer.run(lambda c: c.execute("UPDATE cctlds SET checked_at = ? WHERE tld = ?",
                                                      (retry, tld)))
            self.log.warning("redelegation check deferred", tld=tld, reason=e.reason)
            return True
        what = await self.writer.run(lambda c: record(live, c, tld, contact, now))
        level = self.log.warning if what.startswith("administrative contact changed") else self.log.info
        level("redelegation check", tld=tld, result=what.split(" from ")[0])
        return True
