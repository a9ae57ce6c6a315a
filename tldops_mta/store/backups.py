"""``tldops backup`` and ``tldops restore``: the whole database in one file.

The backup uses SQLite's online backup API, so it is safe while the daemon runs: it copies
a consistent snapshot (WAL readers do not block the writers for long, and a page changed
during the copy makes SQLite copy it again). The file is written whole (temporary name,
fsync, rename), so a backup is never half a database; and 0600 from its first byte,
wherever it is written, since it holds the roster's personal data.

A restore replaces the database of a stopped daemon; it refuses a backup from a newer
schema than this code knows (as the daemon refuses such a database), and a backup that
fails SQLite's integrity check. An older one is migrated, as at start.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tldops_mta.store import storage


class BackupError(Exception):
    """Why a backup or restore was refused; nothing was changed."""


@dataclass(frozen=True)
class Done:
    path: Path
    size: int
    schema_version: int
    migrations_applied: tuple[int, ...] = ()


def backup(database: Path, target: Path, *, busy_timeout_ms: int = 5000) -> Done:
    if not database.exists():
        raise BackupError(f"no database at {database}")
    if target.exists():
        raise BackupError(f"{target} exists: choose a new file name (a backup never overwrites)")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a directory: create it first")
    tmp = target.with_name(f".{target.name}.tmp")
    src = storage.connect(database, busy_timeout_ms=busy_timeout_ms)
    try:
        os.close(_create_private(tmp))  # SQLite keeps an existing file's mode (and its journal's)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            # One self-contained file: not WAL (a copy of it must not need a -wal beside it).
            dst.execute("PRAGMA journal_mode = DELETE")
            version = storage.schema_version(dst)
        finally:
            dst.close()
    except sqlite3.Error as e:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"backup failed: {e}") from e
    finally:
        src.close()
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    return Done(target, target.stat().st_size, version)


def check(backup_file: Path) -> int:
    """The schema version of a usable backup; BackupError when it is not one."""
    if not backup_file.is_file():
        raise BackupError(f"{backup_file} is not a file")
    try:
        conn = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
            version = storage.schema_version(conn)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise BackupError(f"{backup_file} is not a tldops-mta backup: {e}") from e
    if result != "ok":
        raise BackupError(f"{backup_file} fails SQLite's integrity check: {result}")
    if "spool" not in tables:
        raise BackupError(f"{backup_file} is not a tldops-mta database (no spool table)")
    if version > storage.latest_version():
        raise BackupError(f"{backup_file} has schema version {version}; this tldops-mta knows up to "
                          f"{storage.latest_version()}: restore it with the newer tldops-mta")
    return version


def restore(backup_file: Path, database: Path) -> Done:
    """Put ``backup_file`` in place of ``database`` (the daemon must be stopped: the caller
    checks), then migrate it to this code's schema."""
    check(backup_file)
    database.parent.mkdir(parents=True, exist_ok=True)
    tmp = database.with_name(f".{database.name}.restore")
    with open(backup_file, "rb") as src, os.fdopen(_create_private(tmp), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    # The old database's WAL belongs to the old file: left beside the new one, SQLite would
    # replay it into the restored database.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{database}{suffix}").unlink()
    os.replace(tmp, database)
    _fsync_dir(database.parent)
    conn = storage.connect(database)
    try:
        applied = storage.migrate(conn)
        version = storage.schema_version(conn)
    finally:
        conn.close()
    return Done(database, database.stat().st_size, version, tuple(applied))


def _create_private(path: Path) -> int:
    """A new empty file at ``path`` (replacing a leftover one), 0600 whatever the umask."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)
