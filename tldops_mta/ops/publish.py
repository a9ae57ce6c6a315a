"""Writing the public membership page (``membership_page``) into a directory a web server
serves: ``tldops publish DIR``, and the nightly housekeeping with ``publish.dir`` set.

Each file is written to a temporary file beside it, fsynced, made 0644 and renamed over the
old one, so a web server serves the old page or the new one, never half of one; a write that
fails leaves the old page and no temporary file. members.json goes last: it is what the next
night compares with, so a page cut off half-way is written again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldops_mta.ops import membership_page, stats
from tldops_mta.settings.cctlds import Cctld
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service

PUBLIC_FILE = 0o644
PUBLIC_DIR = 0o755
"""Readable by the web server's account: the daemon runs under umask 077, so set explicitly."""

FILES = ("index.html", "members.json")


@dataclass(frozen=True)
class Written:
    directory: Path
    files: tuple[Path, ...]
    page: membership_page.Page
    changed: bool
    """False when the page there already said the same (and was left alone)."""

    def as_dict(self) -> dict[str, Any]:
        return {"dir": str(self.directory), "files": [str(p) for p in self.files],
                "written": self.changed, "date": self.page.day.isoformat(),
                "roster_version": self.page.roster_version, "subscribed": self.page.subscribed}


def roster_version(conn: sqlite3.Connection) -> int:
    """The roster's last change: every change of the roster is a roster_changes row."""
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM roster_changes").fetchone()[0])


def gather(conn: sqlite3.Connection, table: Iterable[Cctld], live: Live,
           day: dt.date) -> membership_page.Page:
    """The page's data on ``day`` (UTC), read in one look at the database."""
    cctlds = list(table)
    subscribed = stats.subscribed_now(conn)
    summary = stats.summarise(cctlds, subscribed, day, "roster")
    return membership_page.build(summary, cctlds, subscribed, roster_version(conn),
                                 live.service_address(Service.REQUESTS), live.service_address(Service.HELP))


def _same_but_date(old: Any, new: dict[str, Any]) -> bool:
    if not isinstance(old, dict):
        return False
    return {k: v for k, v in old.items() if k != "date"} == {k: v for k, v in new.items() if k != "date"}


def is_current(directory: Path, page: membership_page.Page) -> bool:
    """The page in ``directory`` shows what ``page`` would (its date aside): the roster, the
    ccTLDs and the addresses are unchanged since it was written. A missing or unreadable
    page is not current."""
    if not (directory / FILES[0]).is_file():
        return False
    try:
        old = json.loads((directory / FILES[1]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _same_but_date(old, membership_page.as_dict(page))


def _make_dir(directory: Path) -> None:
    """``directory`` and any missing parent, each 0755 (a directory that was there keeps its mode)."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir()
            p.chmod(PUBLIC_DIR)


def _temporary(directory: Path, name: str, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fchmod(f.fileno(), PUBLIC_FILE)
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write(directory: Path, page: membership_page.Page) -> Written:
    """Both files, atomically each (OSError: nothing replaced, no temporary file left)."""
    _make_dir(directory)
    texts = {FILES[0]: membership_page.render_html(page), FILES[1]: membership_page.render_json(page)}
    temporary: dict[str, Path] = {}
    try:
        for name, text in texts.items():
            temporary[name] = _temporary(directory, name, text)
        for name in FILES:  # members.json last: the mark of a whole page
            os.replace(temporary.pop(name), directory / name)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the renames themselves
    finally:
        os.close(fd)
    return Written(directory, tuple(directory / n for n in FILES), page, True)


def publish_if_changed(directory: Path, page: membership_page.Page) -> Written:
    """The nightly run: write only when the page would show something else."""
    if is_current(directory, page):
        return Written(directory, tuple(directory / n for n in FILES), page, False)
    return write(directory, page)
