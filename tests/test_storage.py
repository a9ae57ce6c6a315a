"""The writer's group commit on a real SQLite file: jobs queued together commit together,
kindred jobs run as one call, and one failing job fails alone.

To queue jobs "together" deterministically, a first job holds the writer thread until the
test has queued the rest (a threading.Event, set by the test: no sleeps).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tldops_mta.store import spool, storage


def arrival(i: int, queue_id: str | None = None) -> spool.Arrival:
    return spool.Arrival(
        queue_id=queue_id or spool.new_queue_id(), received_at=time.time(), session_id=f"s{i}",
        client_addr="127.0.0.1", client_port=1000 + i, helo="h", mail_from=f"a{i}@nic.example",
        rcpt_to=("requests@tld-ops.localhost",), smtputf8=bool(i % 2),
        raw=f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[storage.Writer]:
    conn = storage.connect(tmp_path / "db.sqlite3")
    storage.migrate(conn)
    w = storage.Writer(conn)
    w.start()
    yield w
    await w.close()


def check(tmp_path: Path) -> sqlite3.Connection:
    return storage.connect(tmp_path / "db.sqlite3")


async def queued_together(writer: storage.Writer, jobs: list[storage.Job]) -> list[object]:
    """Run ``jobs`` so that the writer takes them in one batch, in this order."""
    entered, hold = threading.Event(), threading.Event()

    def holding(conn: sqlite3.Connection) -> None:
        entered.set()
        hold.wait(10)

    held = asyncio.ensure_future(writer.run(holding))
    assert await asyncio.to_thread(entered.wait, 10), "the writer never took the first job"
    batches_before = writer.batches
    futures = [asyncio.ensure_future(writer.run(j)) for j in jobs]
    await asyncio.sleep(0)  # one turn of the loop: each run() puts its job in the queue
    hold.set()
    await held
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert writer.batches == batches_before + 1, "the jobs were not committed as one batch"
    return results


async def test_kindred_jobs_run_as_one_call_and_each_gets_its_result(writer: storage.Writer) -> None:
    calls: list[list[int]] = []

    def together(conn: sqlite3.Connection, items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * 10 for i in items]

    other = storage.Grouped(lambda c, items: [f"other {i}" for i in items], 99)
    jobs: list[storage.Job] = [storage.Grouped(together, i) for i in (1, 2, 3)]
    results = await queued_together(writer, [*jobs, other, storage.Grouped(together, 4)])
    assert results == [10, 20, 30, "other 99", 40]
    # Consecutive kindred jobs together; a different kind in between starts a new run.
    assert calls == [[1, 2, 3], [4]]


async def test_spool_inserts_together_keep_every_field_and_raw(writer: storage.Writer,
                                                               tmp_path: Path) -> None:
    arrivals = [arrival(i) for i in range(70)]  # more than one statement's chunk
    results = await queued_together(writer, [spool.insert(a) for a in arrivals])
    assert results == [None] * 70
    conn = check(tmp_path)
    rows = conn.execute(
        "SELECT s.queue_id, s.session_id, s.client_port, s.mail_from, s.smtputf8, s.size, m.raw"
        " FROM spool s JOIN spool_messages m ON m.id = s.id ORDER BY s.id").fetchall()
    assert rows == [(a.queue_id, a.session_id, a.client_port, a.mail_from, int(a.smtputf8),
                     len(a.raw), a.raw) for a in arrivals]
    conn.close()


async def test_one_bad_job_among_kindred_ones_fails_alone(writer: storage.Writer,
                                                         tmp_path: Path) -> None:
    dup = arrival(1)
    first, second = dup, arrival(2, queue_id=dup.queue_id)  # UNIQUE queue_id violated
    good = arrival(3)
    results = await queued_together(writer, [spool.insert(first), spool.insert(second),
                                             spool.insert(good)])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], storage.StorageError)
    conn = check(tmp_path)
    assert conn.execute("SELECT session_id FROM spool ORDER BY id").fetchall() == [("s1",), ("s3",)]
    assert conn.execute("SELECT count(*) FROM spool_messages").fetchone() == (2,)
    conn.close()


async def test_a_failing_plain_job_does_not_sink_the_batch(writer: storage.Writer,
                                                           tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO spool_events (spool_id, at, status) VALUES (1, 0, 'x')")
        raise ValueError("job bug")

    a, b = arrival(1), arrival(2)
    results = await queued_together(writer, [spool.insert(a), broken, spool.insert(b)])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ValueError)
    conn = check(tmp_path)
    assert conn.execute("SELECT count(*) FROM spool").fetchone() == (2,)
    # The broken job's own write was undone with it.
    assert conn.execute("SELECT count(*) FROM spool_events").fetchone() == (0,)
    conn.close()


def _lock_holder(tmp_path: Path) -> sqlite3.Connection:
    """A second writer on the same database, holding the write lock until it commits."""
    holder = storage.connect(tmp_path / "db.sqlite3")
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_commit_with_a_lock_wait_retries_until_the_other_writer_is_done(tmp_path: Path) -> None:
    """The spool appender's way (storage.begin): its connection does not let SQLite sleep on
    a held lock; commit() tries again in short steps and goes on once the lock is free."""
    conn = storage.connect(tmp_path / "db.sqlite3", busy_timeout_ms=0)
    storage.migrate(conn)
    attempts = threading.Semaphore(0)
    conn.set_trace_callback(lambda sql: attempts.release() if sql == "BEGIN IMMEDIATE" else None)
    holder = _lock_holder(tmp_path)
    result: list[list[storage.Result]] = []
    t = threading.Thread(target=lambda: result.append(
        storage.commit(conn, [spool.insert(arrival(1))], lock_wait=30)))
    t.start()
    try:
        for _ in range(2):  # it tried, found the lock held, and tried again
            assert attempts.acquire(timeout=10), "commit() did not try (again) to take the lock"
    finally:
        holder.execute("COMMIT")
        holder.close()
    t.join(10)
    assert not t.is_alive()
    [[(_, error)]] = result
    assert error is None
    assert conn.execute("SELECT count(*) FROM spool").fetchone()[0] == 1
    conn.close()


def test_a_lock_wait_that_runs_out_fails_the_jobs_with_a_storage_error(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "db.sqlite3", busy_timeout_ms=0)
    storage.migrate(conn)
    holder = _lock_holder(tmp_path)
    ran: list[int] = []
    try:
        [(_, error)] = storage.commit(conn, [lambda c: ran.append(1)], lock_wait=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert isinstance(error, storage.StorageError) and "locked" in str(error)
    assert ran == [] and not conn.in_transaction
    conn.close()
