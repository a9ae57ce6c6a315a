"""When the worker next has something to do: the earliest due time of all it works on.

The SMTP process asks this to start the worker process on demand (children.WorkerProcess),
and the worker asks it before exiting idle, so both agree on what "nothing to do" means.
A new kind of scheduled work (a broadcast, an expiry) adds its due time here.
"""

from __future__ import annotations

import sqlite3

from tldops_mta.mail import outbox
from tldops_mta.ops import housekeeping
from tldops_mta.request_queue import queue_clock
from tldops_mta.roster import broadcast, freshness, mailman, redelegation
from tldops_mta.settings.config import Config
from tldops_mta.store import spool


def next_work_at(conn: sqlite3.Connection, cfg: Config) -> float | None:
    """Unix time of the earliest due piece of work, or None when nothing waits."""
    times = [t for t in (spool.next_due_at(conn), outbox.next_due_at(conn),
                         queue_clock.next_due_at(conn, cfg), broadcast.next_due_at(conn, cfg),
                         _redelegation_check(conn, cfg), mailman.next_due_at(conn, cfg),
                         housekeeping.next_due_at(conn, cfg.housekeeping.hour),
                         freshness.next_due_at(conn, cfg))
             if t is not None]
    return min(times) if times else None


def _redelegation_check(conn: sqlite3.Connection, cfg: Config) -> float | None:
    found = redelegation.next_check(conn, cfg)
    return None if found is None else found[1]
