"""The scheduler of the request queue: reminders to the Validators, and expiry.

A request waiting for its IANA admin's confirmation expires with its token
(``auth.token_ttl`` after it came). One waiting for a Validator is reminded every
``validation.remind_after`` and expires ``validation.expire_after`` after it began to wait;
an escalated one waits for the Standing Committee without end. Times are computed from the
configuration in force, so a SIGHUP that shortens them applies to waiting requests too.
Expiry goes through transitions.act like any decision (audit row, requester told).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tldops_mta import logs
from tldops_mta.policy.queue_states import Actor, Event
from tldops_mta.settings.config import Config
from tldops_mta.settings.live import Live
from tldops_mta.store.due_loop import DueLoop
from tldops_mta.store.storage import Reader, Writer

BATCH = 50
WAKE_GAP = 1.0


def _times(cfg: Config) -> tuple[float, float, float]:
    return (cfg.auth.token_ttl, cfg.validation.remind_after,
            cfg.validation.expire_after)


def next_due_at(conn: sqlite3.Connection, cfg: Config) -> float | None:
    ttl, remind, expire = _times(cfg)
    row = conn.execute(
        "SELECT min(CASE state WHEN 'awaiting-confirmation' THEN created_at + :ttl"
        " ELSE min(updated_at + :expire, max(updated_at, coalesce(reminded_at, 0)) + :remind) END)"
        " FROM requests WHERE state IN ('awaiting-confirmation', 'awaiting-validator')",
        {"ttl": ttl, "remind": remind, "expire": expire}).fetchone()
    return None if row[0] is None else float(row[0])


def due(conn: sqlite3.Connection, cfg: Config, now: float) -> list[tuple[int, str]]:
    """(request id, 'expire' or 'remind') for what is due at ``now``, oldest first."""
    ttl, remind, expire = _times(cfg)
    rows = conn.execute(
        "SELECT id, CASE WHEN state = 'awaiting-confirmation' OR updated_at + :expire <= :now"
        " THEN 'expire' ELSE 'remind' END FROM requests"
        " WHERE (state = 'awaiting-confirmation' AND created_at + :ttl <= :now)"
        " OR (state = 'awaiting-validator' AND (updated_at + :expire <= :now"
        "     OR max(updated_at, coalesce(reminded_at, 0)) + :remind <= :now))"
        " ORDER BY id LIMIT :n",
        {"ttl": ttl, "remind": remind, "expire": expire, "now": now, "n": BATCH}).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


class QueueClock(DueLoop):
    wake_gap = WAKE_GAP  # woken after every batch of the worker; each look scans open requests
    def __init__(self, live: Live, writer: Writer, reader: Reader) -> None:
        super().__init__(reader, logs.get("queue"))
        self.rt = live
        self.writer = writer
        self.on_mail: Any = lambda: None
        """Called after a step queued mail (the outbox's wake)."""

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        return next_due_at(conn, self.rt.cfg)

    async def step(self, now: float | None = None) -> bool:
        # Imported here: the SMTP process imports this module (work_due) for next_due_at alone.
        from tldops_mta.request_queue import transitions

        now = time.time() if now is None else now
        live = self.rt
        scheduler = transitions.By(Actor.SCHEDULER, "scheduler", "-")

        def job(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
            done = []
            for request_id, what in due(conn, live.cfg, now):
                if what == "expire":
                    days = live.cfg.validation.expire_after / 86400
                    result = transitions.act(live, conn, request_id, Event.EXPIRE, scheduler,
                                             f"nobody decided within {days:g} days", now=now)
                    done.append((request_id, what, result.message))
                else:
                    n = transitions.ask_validators(live, conn, request_id, now=now, reminder=True)
                    done.append((request_id, what, f"{n} Validators reminded"))
            return done

        done = await self.writer.run(job)
        for request_id, what, message in done:
            self.log.info("queue " + what, request_id=request_id, result=message)
        if done:
            self.on_mail()
        return bool(done)
