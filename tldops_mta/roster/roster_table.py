"""The roster in SQLite: the current SSCs of a ccTLD, and replacing them as one change.

The decisions about what a roster may become are roster_policy.judge's; this module only reads
and writes it, and records each change whole (before and after) in roster_changes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from tldops_mta.policy.request_form import SscEntry
from tldops_mta.policy.roster_policy import RosterEntry

ROLE_ORDER = {"primary": 0, "secondary": 1, "third": 2}


def current(conn: sqlite3.Connection, tld: str) -> list[RosterEntry]:
    rows = conn.execute("SELECT role, first_name, last_name, phone, email FROM roster WHERE tld = ?",
                        (tld,)).fetchall()
    return sorted((RosterEntry(*r) for r in rows), key=lambda e: ROLE_ORDER.get(e.role, 9))


def replace_all(conn: sqlite3.Connection, tld: str, after: Sequence[RosterEntry], request_id: int | None,
                now: float, by: str | None = None) -> list[RosterEntry]:
    """Make ``after`` the roster of ``tld``; returns what it was. An address that stays keeps
    its ``since``. ``by`` names who made a change no request made (an SSC's own correction).
    Runs inside the caller's transaction."""
    before = current(conn, tld)
    since = {r[0].lower(): (r[1], r[2]) for r in conn.execute(
        "SELECT email, since, request_id FROM roster WHERE tld = ?", (tld,))}
    conn.execute("DELETE FROM roster WHERE tld = ?", (tld,))
    for e in after:
        kept = since.get(e.email.lower())  # the same person (address) keeps their "since"
        conn.execute(
            "INSERT INTO roster (tld, role, first_name, last_name, phone, email, since, request_id)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (tld, e.role, e.first_name, e.last_name, e.phone, e.email,
             kept[0] if kept else now, kept[1] if kept else request_id))
    conn.execute("INSERT INTO roster_changes (request_id, tld, at, before, after, by) VALUES (?,?,?,?,?,?)",
                 (request_id, tld, now, as_json(before), as_json(after), by))
    return before


def as_dicts(entries: Sequence[RosterEntry] | Sequence[SscEntry]) -> list[dict[str, Any]]:
    """Flat copies (dataclasses.asdict deep-copies, at several times the cost)."""
    return [dict(e.__dict__) for e in entries]


def as_json(entries: Sequence[RosterEntry]) -> str:
    return json.dumps(as_dicts(entries), ensure_ascii=False)


def from_dicts(items: Sequence[dict[str, str]]) -> list[RosterEntry]:
    return [RosterEntry(**e) for e in items]


def diff_lines(before: Sequence[RosterEntry], after: Sequence[RosterEntry]) -> list[str]:
    """The change in the shape of a unified diff, one line per SSC: '-' leaves, '+' comes,
    ' ' stays (for the Validator's mail and ``tldops queue show``)."""
    out = [f"  {line(e)}" for e in before if e in after]
    out += [f"- {line(e)}" for e in before if e not in after]
    out += [f"+ {line(e)}" for e in after if e not in before]
    return out


def line(e: RosterEntry) -> str:
    return f"{e.role:<9} {e.first_name} {e.last_name} <{e.email}> {e.phone}"


def text(conn: sqlite3.Connection) -> str:
    """The whole roster as plain text, by ccTLD: what a new SSC is sent (and, on schedule,
    every SSC)."""
    out: list[str] = []
    tlds = [r[0] for r in conn.execute("SELECT DISTINCT tld FROM roster ORDER BY tld")]
    for tld in tlds:
        out.append(f".{tld}")
        out.extend(f"  {line(e)}" for e in current(conn, tld))
    return "\n".join(out) or "(the roster is empty)"
