"""bounces+TAG@: delivery reports, tied to the SSC they are about; failing addresses are
reported to the Validators, never removed.

The VERP tag says which delivery bounced (``b<delivery id>``, the broadcast's), so which
address, whatever the report's format; flufl.bounce reads the report for whether the
failure is permanent (and for the addresses, when the tag names no delivery). Permanent
failures of an SSC address, from reports here and from refusals by the smarthost, are
counted over ``bounces.window``; at ``bounces.threshold`` the Validators get one mail, at
most once per window. Reports are robots' mail: nothing ever answers them.
"""

from __future__ import annotations

import re
import sqlite3
import time
from email import message_from_bytes

from flufl.bounce import all_failures

from tldops_mta import logs
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.mail import mailing
from tldops_mta.mail.tlp import Tlp
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, Services
from tldops_mta.store import spool
from tldops_mta.store.storage import Reader

_DELIVERY_TAG = re.compile(r"b(\d{1,18})")


def failures(conn: sqlite3.Connection, address: str, since: float) -> int:
    """Permanent failures of ``address`` since ``since``: bounce reports and refusals."""
    reported = conn.execute("SELECT count(*) FROM bounces WHERE address = ? AND permanent = 1"
                            " AND received_at >= ?", (address, since)).fetchone()[0]
    refused = conn.execute("SELECT count(*) FROM outbox_deliveries WHERE lower(rcpt) = ?"
                           " AND status = 'failed' AND updated_at >= ?", (address, since)).fetchone()[0]
    return int(reported) + int(refused)


def report_if_failing(live: Live, conn: sqlite3.Connection, address: str, now: float) -> bool:
    """Tell the Validators once per window about an SSC address that keeps failing."""
    window = live.cfg.bounces.window
    tlds = [r[0] for r in conn.execute("SELECT tld FROM roster WHERE lower(email) = ? ORDER BY tld",
                                       (address,))]
    if not tlds:
        return False  # not an SSC (a refusal to a stranger bounced, say): nobody to tell about
    count = failures(conn, address, now - window)
    last = conn.execute("SELECT reported_at FROM bounce_reports WHERE address = ?", (address,)).fetchone()
    if count < live.cfg.bounces.threshold or (last is not None and last[0] > now - window):
        return False
    mailing.send(live, conn, "bouncing", live.cfg.validation.validators, {
        "address": address, "tlds": ", ".join(f".{t}" for t in tlds), "failures": count,
        "days": f"{window / 86400:g}"}, tlp=Tlp.parse(live.cfg.broadcast.tlp),
        bounce_tag="report", purpose="bouncing")
    conn.execute("INSERT INTO bounce_reports (address, reported_at, failures) VALUES (?,?,?)"
                 " ON CONFLICT (address) DO UPDATE SET reported_at = excluded.reported_at,"
                 " failures = excluded.failures", (address, now, count))
    return True


class BounceDesk:
    def __init__(self, live: Live, reader: Reader) -> None:
        self.rt = live
        self.reader = reader
        self.log = logs.get("bounces")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        live = self.rt
        now = time.time()
        tag = services.tag(Service.BOUNCES)
        msg = facts.message or message_from_bytes(p.raw)
        try:
            temporary, permanent = all_failures(msg)
        except Exception:  # a detector choking on a strange report: the tag still counts
            temporary, permanent = frozenset(), frozenset()
        found = {a.decode("utf-8", "replace").lower(): True for a in permanent}
        found.update({a.decode("utf-8", "replace").lower(): False for a in temporary if a not in permanent})
        m = _DELIVERY_TAG.fullmatch(tag)
        delivery = int(m.group(1)) if m else None
        is_permanent = bool(permanent) or not temporary  # a bare report with a tag: a failure
        tagged = await self.reader.run(delivered_to, delivery) if delivery is not None else None
        about = {tagged: is_permanent} if tagged else found
        rows: list[tuple[str | None, bool]] = list(about.items()) or [(None, False)]

        def record(conn: sqlite3.Connection) -> spool.Verdict | None:
            for address, perm in rows:
                conn.execute("INSERT OR IGNORE INTO bounces (received_at, spool_id, tag, delivery_id,"
                             " address, permanent) VALUES (?,?,?,?,?,?)",
                             (now, p.id, tag, delivery if tagged else None, address, int(perm)))
            # Whether the Validators hear of it is what the counts say at the commit.
            reported = [a for a, perm in about.items() if perm and report_if_failing(live, conn, a, now)]
            return spool.Verdict(spool.Status.DONE, _reason(len(about), len(reported))) if reported else None

        self.log.info("bounce", tag=tag, addresses=len(about), permanent=is_permanent)
        return spool.Outcome(p.id, spool.Status.DONE, _reason(len(about), 0), ("bounces",), effects=(record,))


def delivered_to(conn: sqlite3.Connection, delivery: int) -> str | None:
    """The address (lower-case) of outgoing delivery ``delivery``, if there is one."""
    row = conn.execute("SELECT lower(rcpt) FROM outbox_deliveries WHERE id = ?", (delivery,)).fetchone()
    return None if row is None else str(row[0])


def _reason(addresses: int, reported: int) -> str:
    return f"bounce for {addresses} address(es); {reported} reported to the Validators"
