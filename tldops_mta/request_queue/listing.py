"""The request queue as the Validator and the CLI see it: reads over the ``requests`` table.

Items are made by requests_desk (verified or awaiting confirmation); their states are those
of queue_states; transitions.act moves them and writes the audit log shown here.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

_COLUMNS = ("r.id, r.tld, r.requester, r.admin_email, r.auth, r.state, r.created_at,"
            " r.updated_at, s.queue_id, r.action")


@dataclass(frozen=True)
class Item:
    id: int
    tld: str
    requester: str
    admin_email: str
    auth: str
    state: str
    created_at: float
    updated_at: float
    queue_id: str
    action: str | None
    evidence: dict[str, Any] | None = None
    change: dict[str, Any] | None = None
    """The SSCs asked for (normalised), removals, policy warnings, the roster before and after."""
    events: list[dict[str, Any]] | None = None
    """The audit log of this request, oldest first."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _item(r: tuple[Any, ...]) -> Item:
    return Item(id=int(r[0]), tld=str(r[1]), requester=str(r[2]), admin_email=str(r[3]),
                auth=str(r[4]), state=str(r[5]), created_at=float(r[6]), updated_at=float(r[7]),
                queue_id=str(r[8]), action=r[9])


def listing(conn: sqlite3.Connection, state: str | None = None, limit: int = 100) -> list[Item]:
    """Newest first; only items in ``state`` when given."""
    where, args = ("WHERE r.state = ?", [state]) if state else ("", [])
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM requests r JOIN spool s ON s.id = r.spool_id {where}"  # noqa: S608
        " ORDER BY r.id DESC LIMIT ?", (*args, limit)).fetchall()
    return [_item(r) for r in rows]


def show(conn: sqlite3.Connection, item_id: int) -> Item | None:
    """One item with its evidence (DKIM results, IANA's answer, the decision's reasons), the
    change it asks for, and its audit log."""
    row = conn.execute(
        f"SELECT {_COLUMNS}, r.evidence, r.change FROM requests r JOIN spool s ON s.id = r.spool_id"  # noqa: S608
        " WHERE r.id = ?", (item_id,)).fetchone()
    if row is None:
        return None
    events = [
        {"at": e[0], "event": e[1], "from_state": e[2], "to_state": e[3], "actor": e[4], "who": e[5],
         "auth": e[6], "reason": e[7], "evidence": json.loads(e[8]) if e[8] else None}
        for e in conn.execute("SELECT at, event, from_state, to_state, actor, who, auth, reason, evidence"
                              " FROM request_events WHERE request_id = ? ORDER BY id", (item_id,))]
    return replace(_item(row[:-2]), evidence=json.loads(row[-2]) if row[-2] else None,
                   change=json.loads(row[-1]) if row[-1] else None, events=events)
