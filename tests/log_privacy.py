"""No personal data in what an operator's logs keep: the check the end-to-end flows run over
every line the daemon (DaemonProc) and the CLI wrote.

An operator runs at level info, so a log record at info or above must not hold an SSC's
address or phone number, neither as the request wrote it nor as the roster stores it; the
redacted form (``j***@nic.org.mt``) is what the logs may show. A line of the daemon's output
that is no log record at all (a traceback, a library's print) counts too.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

SHOWN = frozenset({"info", "warning", "error", "critical", "exception"})
"""The levels written at ``log.level = "info"``."""


def _record(line: str) -> dict[str, object] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and "event" in rec and "level" in rec else None


def shown(lines: Iterable[str], *, records_only: bool = False) -> list[str]:
    """The lines kept at level info: records at info or above and, unless ``records_only``
    (a command's output, whose answer is no log), every line that is no record."""
    def kept(line: str) -> bool:
        rec = _record(line)
        if rec is None:
            return not records_only and bool(line.strip())
        return rec["level"] in SHOWN

    return [line for line in lines if kept(line)]


def people(sscs: Iterable[tuple[str, ...]], db: Path | None = None) -> set[str]:
    """Each SSC's phone and address as written in a request (``sscs``: role, first name, last
    name, phone, email), and as stored in the roster and its history in ``db``."""
    found = {v for s in sscs for v in (s[3], s[4])}
    if db is not None and db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            found |= {v for row in conn.execute("SELECT phone, email FROM roster") for v in row}
            for before, after in conn.execute("SELECT before, after FROM roster_changes"):
                for entry in [*json.loads(before), *json.loads(after)]:
                    found |= {entry["phone"], entry["email"]}
        finally:
            conn.close()
    return {v for v in found if v}


def leaks(lines: Iterable[str], needles: Iterable[str]) -> list[str]:
    """The lines that hold any of ``needles`` (case aside), each with what it holds."""
    wanted = sorted({n.lower() for n in needles})
    return [f"{[n for n in wanted if n in line.lower()]}: {line}" for line in lines
            if any(n in line.lower() for n in wanted)]
