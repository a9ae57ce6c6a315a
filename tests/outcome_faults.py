"""A storage fault in the commit of one message's outcome, for the tests of the one commit rule.

``fail_outcome_once`` puts a trigger into the running daemon's own database: the statement
that records how the next message to some recipients ends (done, rejected, failed) fails,
as a storage error would, inside the worker's transaction. The worker rolls that outcome
back with its effects and takes the message up again; the trigger fires once, then lets
everything pass. Deterministic: no timing, no kill.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from daemon_proc import DaemonProc

NOT_RECORDED = "could not record the outcome: injected fault"


def fail_outcome_once(db_path: Path, rcpt_like: str) -> str:
    """Arm the fault for the next message with a recipient matching the LIKE pattern
    ``rcpt_like`` (``confirm+%``, ``who@%``); the fault's name."""
    assert re.fullmatch(r"[a-z+@%]+", rcpt_like), rcpt_like
    tag = re.sub(r"[^a-z]", "", rcpt_like)
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        armed = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                             " AND name LIKE 'fail!_%!_outcome!_%' ESCAPE '!'").fetchone()[0]
        name = f"fail_{tag}_outcome_{armed + 1}"  # each fires once: a new one for each fault
        # Names and literals only from the pattern above: nothing else reaches the SQL.
        conn.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON spool_events"
            " WHEN NEW.status IN ('done', 'rejected', 'failed')"
            f" AND EXISTS (SELECT 1 FROM spool s, json_each(s.rcpt_to) r WHERE s.id = NEW.spool_id"
            f"             AND r.value LIKE '{rcpt_like}')"
            f" AND NOT EXISTS (SELECT 1 FROM spool_events WHERE reason = '{NOT_RECORDED} {name}')"
            f" BEGIN SELECT RAISE(ABORT, 'injected fault {name}'); END")
        conn.commit()
    finally:
        conn.close()
    return name


def failed_once(d: DaemonProc, queue_id: str, name: str) -> None:
    """The fault hit this message's outcome, once."""
    rows = d.query("SELECT e.reason FROM spool_events e JOIN spool s ON s.id = e.spool_id"
                   " WHERE s.queue_id = ? AND e.reason LIKE 'could not record%'", (queue_id,))
    assert rows == [(f"{NOT_RECORDED} {name}",)], rows


def faults(d: DaemonProc) -> int:
    """How many outcomes an armed fault kept from committing (the worker logged a retry for each)."""
    return sum(1 for r in d.events("outcome not recorded, will retry")
               if NOT_RECORDED in str(r.get("reason", "")))
