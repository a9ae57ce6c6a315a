"""The request queue as the Validator and the CLI see it: reads over the ``requests`` table.

Items are made by request_auth (verified or awaiting confirmation); their states are those
of queue_states. The decisions (approve, deny, escalate) and the audit log come with the
rest of the request workflow.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

_COLUMNS = ("r.id, r.tld, r.requester, r.admin_email, r.auth, r.state, r.created_at,"
            " r.updated_at, s.queue_id")


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
    evidence: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _item(r: tuple[Any, ...], evidence: str | None = None) -> Item:
    return Item(id=int(r[0]), tld=str(r[1]), requester=str(r[2]), admin_email=str(r[3]),
                auth=str(r[4]), state=str(r[5]), created_at=float(r[6]), updated_at=float(r[7]),
                queue_id=str(r[8]), evidence=json.loads(evidence) if evidence else None)


def listing(conn: sqlite3.Connection, state: str | None = None, limit: int = 100) -> list[Item]:
    """Newest first; only items in ``state`` when given."""
    where, args = ("WHERE r.state = ?", [state]) if state else ("", [])
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM requests r JOIN spool s ON s.id = r.spool_id {where}"  # noqa: S608
        " ORDER BY r.id DESC LIMIT ?", (*args, limit)).fetchall()
    return [_item(r) for r in rows]


def show(conn: sqlite3.Connection, item_id: int) -> Item | None:
    """One item with its evidence (DKIM results, IANA's answer, the decision's reasons)."""
    row = conn.execute(
        f"SELECT {_COLUMNS}, r.evidence FROM requests r JOIN spool s ON s.id = r.spool_id"  # noqa: S608
        " WHERE r.id = ?", (item_id,)).fetchone()
    return None if row is None else _item(row[:-1], row[-1])
