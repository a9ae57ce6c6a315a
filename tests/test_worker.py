"""The worker in-process, on a real SQLite file: handler errors retry with backoff, then fail.

The handler here is the worker's plug-in point (what later issues replace), not a mock of
any part: storage, writer and reader are the real ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.settings import config
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service
from tldops_mta.store import due_loop, spool, storage
from tldops_mta.store.retry import backoff
from tldops_mta.store.storage import Reader
from tldops_mta.worker.spool_loop import Worker


def arrival(i: int, raw: bytes | None = None) -> spool.Arrival:
    return spool.Arrival(
        queue_id=spool.new_queue_id(), received_at=time.time(), session_id="s", client_addr="127.0.0.1",
        client_port=1, helo="h", mail_from="a@nic.example", rcpt_to=("requests@tld-ops.localhost",),
        smtputf8=False,
        raw=raw or f"From: a@nic.example\r\nSubject: {i}\r\n\r\nbody\r\n".encode())


async def make(tmp_path: Path, handler, **cfg_over) -> tuple[Worker, storage.Writer, Reader]:
    cfg = config.load(None, {"storage.state_dir": str(tmp_path), **cfg_over})
    conn = storage.connect(cfg.database_path)
    storage.migrate(conn)
    writer = storage.Writer(conn)
    writer.start()
    reader = Reader(storage.connect(cfg.database_path))
    return Worker(Live(cfg), writer, reader, handler), writer, reader


async def test_handler_error_retries_with_backoff_then_fails_and_keeps_the_message(tmp_path: Path) -> None:
    calls: list[int] = []

    async def broken(p: spool.Pending, facts: MessageFacts, services: frozenset[Service]) -> spool.Outcome:
        calls.append(p.attempts)
        raise RuntimeError("handler bug")

    w, writer, reader = await make(tmp_path, broken, **{"worker.max_attempts": 3,
                                                        "worker.retry_base": 0.01,
                                                        "worker.retry_max": 0.02})
    try:
        a = arrival(1)
        await writer.run(spool.insert(a))
        assert await w.step()
        row = await reader.run(lambda c: c.execute(
            "SELECT status, attempts, next_attempt_at, reason FROM spool").fetchone())
        assert row[0] == "received" and row[1] == 1
        assert row[2] > time.time() - 1  # a retry time was set
        assert "handler bug" in row[3]
        # Not due before its retry time.
        assert await reader.run(spool.due, row[2] - 0.001, 10) == []
        assert not await w.step(now=row[2] - 0.001)
        for _ in range(2):
            nxt = await reader.run(spool.next_due_at)
            assert nxt is not None
            assert await w.step(now=nxt)
        status, attempts, reason = await reader.run(lambda c: c.execute(
            "SELECT status, attempts, reason FROM spool").fetchone())
        assert (status, attempts) == ("failed", 3)
        assert reason.startswith("gave up after 3 attempts")
        assert calls == [0, 1, 2]
        # Failed is kept, visible, and an operator can re-queue it; its attempts still count.
        assert await writer.run(spool.retry(a.queue_id, time.time()))
        assert (await reader.run(lambda c: c.execute("SELECT status, attempts FROM spool").fetchone())
                == ("received", 3))
    finally:
        await writer.close()
        reader.close()


async def test_message_without_from_is_rejected_with_reason(tmp_path: Path) -> None:
    async def never(*a: object) -> spool.Outcome:
        raise AssertionError("must not be called for a malformed message")

    w, writer, reader = await make(tmp_path, never)
    try:
        await writer.run(spool.insert(arrival(1, raw=b"Subject: x\r\n\r\nbody\r\n")))
        await writer.run(spool.insert(arrival(2, raw=b"From: a@x\r\nFrom: b@y\r\n\r\nbody\r\n")))
        assert await w.step()
        rows = await reader.run(lambda c: c.execute(
            "SELECT status, reason FROM spool ORDER BY id").fetchall())
        assert rows[0] == ("rejected", "the message must have exactly one From: line (it has 0)")
        assert rows[1] == ("rejected", "the message must have exactly one From: line (it has 2)")
    finally:
        await writer.close()
        reader.close()


@pytest.mark.parametrize(("attempts", "expected"), [(1, 30), (2, 60), (3, 120), (10, 3600)])
def test_backoff_doubles_up_to_the_cap(attempts: int, expected: float) -> None:
    assert backoff(attempts, 30, 3600) == expected


async def test_group_commit_isolates_a_failing_job(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "db.sqlite3")
    storage.migrate(conn)
    writer = storage.Writer(conn)
    writer.start()
    try:
        a = arrival(1)
        import asyncio

        results = await asyncio.gather(
            writer.run(spool.insert(a)),
            writer.run(spool.insert(a)),  # same queue id: UNIQUE violation
            writer.run(spool.insert(arrival(2))),
            return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], storage.StorageError)
        check = storage.connect(tmp_path / "db.sqlite3")
        assert check.execute("SELECT count(*) FROM spool").fetchone() == (2,)
        assert check.execute("SELECT count(*) FROM spool_messages").fetchone() == (2,)
        check.close()
    finally:
        await writer.close()


async def test_effects_commit_with_the_outcome_and_a_failing_one_becomes_a_retry(tmp_path: Path) -> None:
    def mark(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (x)")
        conn.execute("INSERT INTO marks VALUES (1)")

    def broken(conn: sqlite3.Connection) -> None:
        mark(conn)  # written, then undone with the rest of this outcome
        raise sqlite3.IntegrityError("effect failed")

    async def handler(p: spool.Pending, facts: MessageFacts, services: frozenset[Service]) -> spool.Outcome:
        effect = broken if b"Subject: 2" in p.raw else mark
        return spool.Outcome(p.id, spool.Status.DONE, "ok", effects=(effect,))

    w, writer, reader = await make(tmp_path, handler)
    try:
        await writer.run(spool.insert(arrival(1)))
        await writer.run(spool.insert(arrival(2)))
        assert await w.step()
        rows = await reader.run(lambda c: c.execute(
            "SELECT status, reason FROM spool ORDER BY id").fetchall())
        assert rows[0] == ("done", "ok")
        assert rows[1][0] == "received" and "effect failed" in rows[1][1]
        assert await reader.run(lambda c: c.execute("SELECT count(*) FROM marks").fetchone()) == (1,)
    finally:
        await writer.close()
        reader.close()


async def test_an_effect_settles_the_outcome_in_the_same_transaction(tmp_path: Path) -> None:
    # The handler proposes done; its effect finds, inside the transaction, that the thing it
    # would change was already taken (a token used): the row and its event say so, and the
    # effect's own write commits with them.
    def effect(conn: sqlite3.Connection) -> spool.Verdict:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (spool_id INTEGER)")
        conn.execute("INSERT INTO marks VALUES (1)")
        return spool.Verdict(spool.Status.REJECTED, "token already used")

    async def handler(p: spool.Pending, facts: MessageFacts, services: frozenset[Service]) -> spool.Outcome:
        return spool.Outcome(p.id, spool.Status.DONE, "confirmed", ("confirm",),
                             effects=(lambda c: None, effect))

    w, writer, reader = await make(tmp_path, handler)
    try:
        await writer.run(spool.insert(arrival(1)))
        assert await w.step()
        assert await reader.run(lambda c: c.execute("SELECT status, reason FROM spool").fetchone()) == (
            "rejected", "token already used")
        assert await reader.run(lambda c: c.execute(
            "SELECT status, reason FROM spool_events ORDER BY rowid DESC LIMIT 1").fetchone()) == (
            "rejected", "token already used")
        assert await reader.run(lambda c: c.execute("SELECT count(*) FROM marks").fetchone()) == (1,)
    finally:
        await writer.close()
        reader.close()


async def test_what_an_effect_found_is_said_after_the_commit_and_only_if_it_committed(
        tmp_path: Path) -> None:
    # Two messages: the first's effect settles it as rejected, the second's fails (a retry
    # replaces it). The after-commit call runs for the first alone, when another connection
    # sees its row, and the worker's own line gives the status committed, not the proposed.
    said: list[tuple[int, tuple[str, str]]] = []

    def settled(conn: sqlite3.Connection) -> spool.Verdict:
        return spool.Verdict(spool.Status.REJECTED, "token already used")

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.IntegrityError("effect failed")

    async def handler(p: spool.Pending, facts: MessageFacts, services: frozenset[Service]) -> spool.Outcome:
        def after() -> None:
            other = storage.connect(tmp_path / "tldops.sqlite3")
            said.append((p.id, other.execute("SELECT status, reason FROM spool WHERE id = ?",
                                             (p.id,)).fetchone()))
            other.close()

        return spool.Outcome(p.id, spool.Status.DONE, "confirmed", ("confirm",), after_commit=after,
                             effects=(broken if b"Subject: 2" in p.raw else settled,))

    w, writer, reader = await make(tmp_path, handler)
    try:
        await writer.run(spool.insert(arrival(1)))
        await writer.run(spool.insert(arrival(2)))
        with capture_logs() as logs:
            assert await w.step()
        assert said == [(1, ("rejected", "token already used"))]
        assert sorted((e["event"], e.get("status")) for e in logs) == [
            ("message processed", "rejected"), ("outcome not recorded, will retry", None)]
    finally:
        await writer.close()
        reader.close()


async def test_a_deferral_does_not_use_up_an_attempt(tmp_path: Path) -> None:
    async def wait(p: spool.Pending, facts: MessageFacts, services: frozenset[Service]) -> spool.Outcome:
        return spool.Outcome(p.id, spool.Status.RECEIVED, "waiting for IANA", retry_at=0,
                             counts_attempt=False)

    w, writer, reader = await make(tmp_path, wait, **{"worker.max_attempts": 2})
    try:
        await writer.run(spool.insert(arrival(1)))
        for _ in range(5):
            assert await w.step()
        assert await reader.run(lambda c: c.execute("SELECT status, attempts FROM spool").fetchone()) == (
            "received", 0)
    finally:
        await writer.close()
        reader.close()


async def test_an_outcome_for_a_lost_claim_is_dropped_with_its_effects(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "db.sqlite3")
    storage.migrate(conn)
    writer = storage.Writer(conn)
    writer.start()
    try:
        await writer.run(spool.insert(arrival(1)))
        assert await writer.run(spool.claim([1], time.time(), "old")) == [1]
        # The daemon restarted: the message is requeued and claimed by the new worker.
        await writer.run(spool.requeue_interrupted)
        assert await writer.run(spool.claim([1], time.time(), "new")) == [1]

        def effect(c: sqlite3.Connection) -> None:
            c.execute("CREATE TABLE IF NOT EXISTS marks (who)")
            c.execute("INSERT INTO marks VALUES ('old')")

        late = spool.Outcome(1, spool.Status.DONE, "old worker", effects=(effect,))
        await writer.run(spool.finish([late], time.time(), 0, "old"))
        check = storage.connect(tmp_path / "db.sqlite3")
        assert check.execute("SELECT status, claimed_by FROM spool").fetchone() == ("processing", "new")
        assert check.execute("SELECT count(*) FROM sqlite_master WHERE name = 'marks'").fetchone() == (0,)
        await writer.run(spool.finish([spool.Outcome(1, spool.Status.DONE, "new worker")],
                                      time.time(), 0, "new"))
        assert check.execute("SELECT status, reason FROM spool").fetchone() == ("done", "new worker")
        check.close()
    finally:
        await writer.close()


async def test_a_loop_whose_look_for_the_next_due_time_fails_goes_on(tmp_path: Path, monkeypatch) -> None:
    # A failing read of the next due time (a storage error, a bug in one clock's query) is
    # logged and tried again; the loop, and the work it owns, never silently stop.
    monkeypatch.setattr(due_loop, "ERROR_PAUSE", 0.01)
    conn = storage.connect(tmp_path / "db.sqlite")
    looks: list[int] = []
    again = asyncio.Event()

    class Clock(due_loop.DueLoop):
        async def step(self, now: float | None = None) -> bool:
            return False

        def next_due(self, conn: sqlite3.Connection) -> float | None:
            looks.append(1)
            if len(looks) == 1:
                raise sqlite3.OperationalError("no such column")
            again.set()
            return None

    loop = Clock(Reader(conn, inline=True), structlog.get_logger("test"))
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(again.wait(), timeout=10)
    finally:
        loop.stop()
        await asyncio.wait_for(task, timeout=10)
    assert len(looks) >= 2 and not task.exception()
