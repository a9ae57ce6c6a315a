"""SQLite: opening, numbered migrations, and the one writer that commits in groups.

``Writer`` (one thread owning one connection) and the spool appender take every job
waiting, run them in one transaction and commit once (``commit``): concurrent writers share
an fsync. When one job fails they run again, each in a savepoint, so a job touches nothing
but the connection: run twice after a rollback, it does what it does once. Jobs of one kind
that arrive together (``Grouped``) run as one statement each, to keep a commit short while
the event loop holds the interpreter lock. Why, and measured: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:  # the spool appender process imports this module and not asyncio
    import asyncio
    from collections.abc import AsyncIterator

    from tldops_mta.settings.config import Config

T = TypeVar("T")
A = TypeVar("A")
Job = Callable[[sqlite3.Connection], Any]
Delivery = tuple["asyncio.Future[Any]", Any, BaseException | None]
"""A job's future, its result, and the error that replaces the result."""

SQLITE_FULL = 13
SQLITE_BUSY = 5
SQLITE_LOCKED = 6


class StorageError(Exception):
    """A write did not reach the disk; nothing of it was kept. Try again later."""


class StorageFull(StorageError):
    """The disk or the configured size cap is full."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer tldops-mta than this one."""


def storage_error(e: sqlite3.Error) -> StorageError:
    code = getattr(e, "sqlite_errorcode", None)
    if code == SQLITE_FULL or "full" in str(e).lower():
        return StorageFull(str(e))
    return StorageError(str(e))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS = Path(__file__).with_name("migrations")


def migrations() -> list[Migration]:
    found = []
    # The package's own directory, not importlib.resources: that module brings tempfile,
    # shutil, bz2 and lzma into every process (the spool appender's memory), for files
    # that a wheel installs on disk anyway.
    for entry in MIGRATIONS.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("migrations must be numbered 0001, 0002, ... without gaps")
    return found


def latest_version() -> int:
    return len(migrations())


def connect(path: Path, *, busy_timeout_ms: int = 5000, max_size_mb: int = 0) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT), WAL, synchronous=FULL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256,
                           timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if max_size_mb:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {max_size_mb * 1024 * 1024 // page_size}")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_schema(conn: sqlite3.Connection) -> int:
    """The schema version, refusing a database newer than this code."""
    have, know = schema_version(conn), latest_version()
    if have > know:
        raise SchemaTooNew(
            f"database schema is version {have}, this tldops-mta knows up to {know}; "
            "run the newer tldops-mta or restore a backup"
        )
    return have


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the migrations this database lacks, each in its own transaction."""
    applied = []
    have = check_schema(conn)
    for m in migrations():
        if m.version <= have:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(m.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {m.version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(m.version)
    return applied


def _statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip():
        out.append(buf)
    return out


class Reader:
    """A read-only connection on its own thread, so reads never stall the event loop."""

    def __init__(self, conn: sqlite3.Connection, *, inline: bool = False) -> None:
        """``inline``: query on the caller's thread. Right for the worker process, whose loop
        serves nobody else and whose reads are short; wrong for the SMTP loop."""
        self._conn = conn
        self._inline = inline
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tldops-reader")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline:
            return fn(self._conn, *args)
        import asyncio  # here: the spool appender imports this module and runs no event loop

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._conn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._conn.close()


@dataclass(frozen=True)
class Grouped(Generic[A, T]):
    """A job that can run together with others of its kind: ``together`` takes the items
    of consecutive jobs with the same ``together`` and returns their results in order.
    Alone, it is an ordinary job."""

    together: Callable[[sqlite3.Connection, list[A]], list[T]]
    item: A

    def __call__(self, conn: sqlite3.Connection) -> T:
        return self.together(conn, [self.item])[0]


Result = tuple[Any, BaseException | None]
"""A job's result, or the error that replaces it."""


def _runs(jobs: list[Job]) -> list[list[Job]]:
    """The jobs cut into runs of consecutive jobs that can run together (a job that cannot
    is a run of its own)."""
    runs: list[list[Job]] = []
    for job in jobs:
        last = runs[-1][-1] if runs else None
        if (isinstance(job, Grouped) and isinstance(last, Grouped)
                and job.together is last.together):
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


def commit(conn: sqlite3.Connection, jobs: list[Job], *, lock_wait: float | None = None) -> list[Result]:
    """Run ``jobs`` in one transaction and commit it (one fsync); each job's result or error.

    First straight through, without savepoints and with kindred jobs together: the common
    case, in the fewest statements. If something fails, again with each job in its own
    savepoint, so that only the failing one fails (jobs touch nothing but the connection,
    so running one twice after a rollback is the same as running it once). A storage error
    that ends the whole transaction (a full disk) fails them all, with that error.

    ``lock_wait``: seconds to wait for the write lock in short steps (``begin``), for a
    connection opened with ``busy_timeout_ms=0``; None leaves the wait to SQLite.
    """
    try:
        begin(conn, lock_wait)
    except sqlite3.Error as e:
        return [(None, storage_error(e))] * len(jobs)
    try:
        results = _straight(conn, jobs)
        conn.execute("COMMIT")
        return results
    except Exception as e:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if len(jobs) == 1:
            return [(None, _as_storage_error(e))]
    return _one_by_one(conn, jobs, lock_wait)


LOCK_POLL_FIRST = 0.00005
LOCK_POLL_MAX = 0.001


def begin(conn: sqlite3.Connection, lock_wait: float | None) -> None:
    """BEGIN IMMEDIATE, waiting up to ``lock_wait`` seconds for another writer to finish
    (None: as long as the connection's busy timeout, in SQLite's own steps).

    The waits start at 50 microseconds and double up to a millisecond, far shorter than
    SQLite's busy handler sleeps: an SMTP session waits for the spool appender's commit
    (docs/architecture.md). Raises the last "database is locked" when the time is up.
    """
    if lock_wait is None:
        conn.execute("BEGIN IMMEDIATE")
        return
    deadline = time.monotonic() + lock_wait
    pause = LOCK_POLL_FIRST
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", None) not in (SQLITE_BUSY, SQLITE_LOCKED) \
                    or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, LOCK_POLL_MAX)


def commit_one(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """``job`` in a transaction of its own (start-up, the CLI): its result, or its error raised."""
    [(result, error)] = commit(conn, [job])
    if error is not None:
        raise error
    return cast(T, result)


def _as_storage_error(e: BaseException) -> BaseException:
    return storage_error(e) if isinstance(e, sqlite3.Error) else e


def _straight(conn: sqlite3.Connection, jobs: list[Job]) -> list[Result]:
    results: list[Result] = []
    for run in _runs(jobs):
        first = run[0]
        if len(run) > 1 and isinstance(first, Grouped):
            items = [job.item for job in run if isinstance(job, Grouped)]
            results += [(r, None) for r in first.together(conn, items)]
        else:
            results += [(job(conn), None) for job in run]
    return results


def _one_by_one(conn: sqlite3.Connection, jobs: list[Job], lock_wait: float | None) -> list[Result]:
    try:
        begin(conn, lock_wait)
    except sqlite3.Error as e:
        return [(None, storage_error(e))] * len(jobs)
    results: list[Result] = []
    try:
        for job in jobs:
            conn.execute("SAVEPOINT job")
            try:
                result = job(conn)
            except Exception as e:
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (it does on SQLITE_FULL).
                    return [(None, _as_storage_error(e))] * len(jobs)
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append((None, _as_storage_error(e)))
            else:
                conn.execute("RELEASE job")
                results.append((result, None))
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        return [(None, storage_error(e))] * len(jobs)
    return results


_STOP = object()


class Writer:
    """The single writing connection, with group commit. See the module docstring."""

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int = 512) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        import asyncio  # here: the spool appender imports this module and runs no event loop

        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="tldops-writer", daemon=True)
        self._thread.start()

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` inside a transaction; returns once it is committed to disk.

        Cancelling the caller does not withdraw the job: it may already be committed.
        """
        assert self._loop is not None, "Writer.start() first"
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((job, fut))
        return await fut

    async def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        import asyncio  # here: the spool appender imports this module and runs no event loop

        await asyncio.to_thread(self._thread.join)
        self._thread = None
        self._conn.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            outcomes = self._commit(batch)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:  # loop closed under us: nobody is waiting any more
                return
        self._conn.close()

    def _commit(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> list[Delivery]:
        self.batches += 1
        self.jobs += len(batch)
        results = commit(self._conn, [job for job, _ in batch])
        return [(fut, result, error) for (_, fut), (result, error) in zip(batch, results, strict=True)]


def _deliver(outcomes: list[Delivery]) -> None:
    for fut, result, error in outcomes:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


@contextlib.asynccontextmanager
async def standalone(cfg: Config) -> AsyncIterator[tuple[Writer, Reader]]:
    """A Writer and a Reader on the database as the daemon opens them, for a command that
    does the daemon's kind of work (an IANA lookup, invitations): the schema is migrated
    first if the database is new."""
    kw = {"busy_timeout_ms": cfg.storage.busy_timeout_ms,
          "max_size_mb": cfg.storage.max_size_mb}
    wconn = connect(cfg.database_path, **kw)
    try:
        migrate(wconn)
        rconn = connect(cfg.database_path, **kw)
    except BaseException:
        wconn.close()
        raise
    writer = Writer(wconn, max_batch=cfg.storage.group_commit_max)
    reader = Reader(rconn)
    writer.start()
    try:
        yield writer, reader
    finally:
        await writer.close()
        reader.close()
