"""The daemon's health in figures: one read of the database that ``tldops status``, systemd's
``STATUS=`` line and the metrics endpoint all show, so the three can never disagree.

Only counts and times: nothing here names a person.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tldops_mta.policy.texts import counted
from tldops_mta.store import lanes, storage

SPOOL_STATUSES = ("received", "processing", "done", "rejected", "failed")
OUTBOX_STATUSES = ("queued", "sent", "failed")
OPEN_REQUEST_STATES = ("awaiting-confirmation", "awaiting-validator", "escalated")


@dataclass(frozen=True)
class Health:
    at: float
    schema_version: int
    spool: dict[str, int] = field(default_factory=dict)
    """Messages by status (all of them: received and processing are still to do)."""
    oldest_waiting_s: float | None = None
    """Age of the oldest message not yet processed."""
    waiting_lanes: dict[str, int] = field(default_factory=dict)
    """Messages waiting for the worker (received) by priority lane (store/lanes.py)."""
    queue: dict[str, int] = field(default_factory=dict)
    """Requests by state."""
    outbox: dict[str, int] = field(default_factory=dict)
    """Outgoing deliveries by status."""
    oldest_queued_mail_s: float | None = None
    last_broadcast_at: float | None = None
    last_broadcast_period: str | None = None
    last_broadcast_undelivered: int = 0
    """Deliveries of the last broadcast still queued."""
    last_broadcast_completed_at: float | None = None
    """When the newest broadcast with nothing left queued had its last delivery done."""
    subscribed_cctlds: int = 0
    sscs: int = 0
    postmaster_unread: int = 0
    """Mail to postmaster@ or abuse@ neither forwarded nor marked read."""
    oldest_postmaster_unread_s: float | None = None
    sscs_unconfirmed: int = 0
    """SSCs marked unconfirmed by freshness (no answer to the yearly ask, or a bounce)."""
    sscs_awaiting_answer: int = 0
    """SSCs asked to re-confirm who have not answered yet."""

    @property
    def spool_waiting(self) -> int:
        return self.spool.get("received", 0) + self.spool.get("processing", 0)

    @property
    def queue_open(self) -> int:
        return sum(self.queue.get(s, 0) for s in OPEN_REQUEST_STATES)

    @property
    def outbox_queued(self) -> int:
        return self.outbox.get("queued", 0)

    @property
    def problems(self) -> list[str]:
        """What an operator should look at, in words; empty when all is well."""
        out = []
        if self.spool.get("failed", 0):
            out.append(f"{counted(self.spool['failed'], 'message')} failed processing "
                       "(tldops spool list --status failed)")
        if self.outbox.get("failed", 0):
            out.append(f"{counted(self.outbox['failed'], 'outgoing mail')} failed for good")
        if self.oldest_waiting_s is not None and self.oldest_waiting_s > 600:
            out.append(f"the oldest unprocessed message waits since {age_text(self.oldest_waiting_s)}")
        if self.oldest_queued_mail_s is not None and self.oldest_queued_mail_s > 3600:
            out.append(f"outgoing mail waits since {age_text(self.oldest_queued_mail_s)} (smarthost?)")
        if self.postmaster_unread and self.oldest_postmaster_unread_s is not None:
            out.append(f"{self.postmaster_unread} mail(s) to postmaster@/abuse@ unread, the oldest "
                       f"since {age_text(self.oldest_postmaster_unread_s)} (tldops spool list "
                       "--service postmaster, or abuse; then tldops spool read ID)")
        return out

    def status_line(self) -> str:
        """systemd's STATUS=: one short line for ``systemctl status``."""
        line = (f"spool {self.spool_waiting} waiting, queue {self.queue_open} open, "
                f"outbox {self.outbox_queued} queued")
        if self.oldest_queued_mail_s is not None:
            line += f" (oldest {age_text(self.oldest_queued_mail_s)})"
        return line

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(spool_waiting=self.spool_waiting, queue_open=self.queue_open,
                 outbox_queued=self.outbox_queued, problems=self.problems)
        return d


def read(conn: sqlite3.Connection, now: float | None = None) -> Health:
    """One consistent snapshot (a single read transaction)."""
    now = time.time() if now is None else now
    conn.execute("BEGIN")
    try:
        spool_counts = dict.fromkeys(SPOOL_STATUSES, 0)
        spool_counts.update(conn.execute("SELECT status, count(*) FROM spool GROUP BY status").fetchall())
        waiting_lanes = lanes.waiting_by_lane(conn)
        oldest = conn.execute("SELECT min(received_at) FROM spool WHERE status IN ('received', 'processing')"
                              ).fetchone()[0]
        queue = dict(conn.execute("SELECT state, count(*) FROM requests GROUP BY state").fetchall())
        outbox = dict.fromkeys(OUTBOX_STATUSES, 0)
        outbox.update(conn.execute("SELECT status, count(*) FROM outbox_deliveries GROUP BY status")
                      .fetchall())
        oldest_mail = conn.execute(
            "SELECT min(m.created_at) FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
            " WHERE d.status = 'queued'").fetchone()[0]
        last = conn.execute("SELECT claimed_at, period, outbox_message_id FROM broadcasts"
                            " ORDER BY claimed_at DESC, id DESC LIMIT 1").fetchone()
        undelivered = 0
        if last is not None and last[2] is not None:
            undelivered = conn.execute("SELECT count(*) FROM outbox_deliveries WHERE message_id = ?"
                                       " AND status = 'queued'", (last[2],)).fetchone()[0]
        completed = conn.execute(
            "SELECT max(d.updated_at) FROM broadcasts b"
            " JOIN outbox_deliveries d ON d.message_id = b.outbox_message_id GROUP BY b.id"
            " HAVING sum(d.status = 'queued') = 0 ORDER BY b.claimed_at DESC, b.id DESC LIMIT 1"
        ).fetchone()
        tlds, sscs = conn.execute("SELECT count(DISTINCT tld), count(*) FROM roster").fetchone()
        unread, oldest_unread = conn.execute(
            "SELECT count(*), min(received_at) FROM postmaster_mail"
            " WHERE outbox_id IS NULL AND read_at IS NULL").fetchone()
        unconfirmed, awaiting = conn.execute(
            "SELECT coalesce(sum(unconfirmed_since IS NOT NULL), 0), coalesce(sum(asked_at >= due_at"
            " AND unconfirmed_since IS NULL), 0) FROM freshness").fetchone()
        version = storage.schema_version(conn)
    finally:
        conn.execute("COMMIT")
    return Health(
        at=now, schema_version=version, spool=spool_counts, waiting_lanes=waiting_lanes,
        oldest_waiting_s=None if oldest is None else max(0.0, now - oldest),
        queue=queue, outbox=outbox,
        oldest_queued_mail_s=None if oldest_mail is None else max(0.0, now - oldest_mail),
        last_broadcast_at=None if last is None else last[0],
        last_broadcast_period=None if last is None else last[1],
        last_broadcast_undelivered=undelivered,
        last_broadcast_completed_at=None if completed is None else completed[0],
        subscribed_cctlds=tlds, sscs=sscs, postmaster_unread=unread,
        oldest_postmaster_unread_s=None if oldest_unread is None else max(0.0, now - oldest_unread),
        sscs_unconfirmed=unconfirmed, sscs_awaiting_answer=awaiting)


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
