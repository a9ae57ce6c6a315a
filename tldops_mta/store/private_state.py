"""Personal data at rest: the state directory, and every file the daemon and the CLI write
there or as a backup, readable and writable by their owner only, whatever umask they run under.

Two halves. Each entry point (``tldops``, the spool appender) first takes umask 077, which
the children it starts inherit: every file and directory made from then on is private
without each writer having to remember it (the database, and with it its WAL and shared
memory, which SQLite creates with the database's mode; outgoing mail, the worker's metrics
files, the pid file, backups). And a state made before, under umask 022 or by an older
version, is tightened where it is opened (``secure``): group and other permissions are taken
from the state directory and everything in it, and what changed is reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PRIVATE_UMASK = 0o077
SHOWN = 20
"""At most this many changed paths are named (a state with years of outgoing mail would
otherwise fill pages); the count says how many there were."""


def restrict_umask() -> None:
    """From now on this process and its children create files 0600 and directories 0700."""
    os.umask(PRIVATE_UMASK)


@dataclass(frozen=True)
class Tightened:
    path: Path
    old: int
    new: int

    def shown_path(self) -> str:
        """The path with any component naming an address redacted (outgoing mail is filed
        under its recipient's address)."""
        from tldops_mta.logs import redact_address  # here: the spool appender keeps structlog out

        return str(Path(*(redact_address(p) if "@" in p else p for p in self.path.parts)))

    def as_dict(self) -> dict[str, str]:
        return {"path": self.shown_path(), "old_mode": f"{self.old:04o}", "new_mode": f"{self.new:04o}"}

    def __str__(self) -> str:
        return f"{self.shown_path()} {self.old:04o} -> {self.new:04o}"


def secure(state_dir: Path, database: Path) -> list[Tightened]:
    """Create ``state_dir`` (0700) if it is missing, take group and other permissions from
    it and everything under it, and from the database and its WAL and shared memory where
    they live elsewhere; what was changed. A state directory that cannot be made private is
    an error (OSError); a file below it that cannot be changed (another owner's) is left,
    unreachable by others through the private directory."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = state_dir.resolve()  # a state directory given as a symlink: the directory it names
    first = _tighten(root, strict=True)
    changed = [first] if first else []
    for dirpath, dirnames, filenames in os.walk(root):  # never into a symlinked directory
        changed += [t for name in dirnames + filenames if (t := _tighten(Path(dirpath) / name))]
    if not database.resolve().is_relative_to(root):
        changed += [t for p in _database_files(database) if (t := _tighten(p))]
    return changed


def _database_files(database: Path) -> Iterable[Path]:
    return (database, Path(f"{database}-wal"), Path(f"{database}-shm"))


def _tighten(path: Path, *, strict: bool = False) -> Tightened | None:
    """``path`` without group and other permissions; None when it had none, is a symlink
    (chmod would change its target), or is gone (a temporary file renamed meanwhile)."""
    try:
        st = os.lstat(path)
        old = stat.S_IMODE(st.st_mode)
        new = old & ~PRIVATE_UMASK
        if stat.S_ISLNK(st.st_mode) or new == old:
            return None
        os.chmod(path, new)
    except FileNotFoundError:
        return None
    except PermissionError:
        if strict:
            raise
        return None
    return Tightened(path, old, new)


def summary(changed: list[Tightened]) -> list[str]:
    """The changes in words, the first ``SHOWN`` of them, then how many more."""
    lines = [str(t) for t in changed[:SHOWN]]
    if len(changed) > SHOWN:
        lines.append(f"and {len(changed) - SHOWN} more")
    return lines
