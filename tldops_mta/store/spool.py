"""The spool: what was accepted, and where each message stands.

Functions here build writer jobs (run inside the Writer's transaction) and read queries.
State machine: received -> processing -> done | rejected | failed, and processing ->
received again when an attempt errs (with a backoff) or the daemon restarts mid-way.
"""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tldops_mta.policy.texts import counted
from tldops_mta.store import lanes
from tldops_mta.store.storage import Grouped


class Status(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class Arrival:
    """A message as the SMTP session hands it over, before it is committed."""

    queue_id: str
    received_at: float
    session_id: str
    client_addr: str
    client_port: int | None
    helo: str | None
    mail_from: str
    rcpt_to: tuple[str, ...]
    smtputf8: bool
    raw: bytes
    relay_addr: str | None = None
    """The trusted relay that handed it over (XFORWARD); client_* are then the relay's word."""


@dataclass(frozen=True)
class Pending:
    """A message the worker is about to process."""

    id: int
    queue_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    attempts: int
    raw: bytes
    lane: int = lanes.Lane.ORDINARY
    """Its priority lane (store/lanes.py)."""

    @property
    def fast(self) -> bool:
        """In a lane ahead of the ordinary one: a reply to a one-time address, or known mail."""
        return self.lane < lanes.Lane.ORDINARY


Effect = Callable[[sqlite3.Connection], Any]
"""A change made in the transaction that records a message's outcome. One that returns a
``Verdict`` settles that outcome's status and reason from what the database says then."""


@dataclass(frozen=True)
class Verdict:
    """What an effect decided inside the outcome's transaction (a token found used, a
    request already decided): it replaces the status and reason the handler proposed, so
    the row never says what the committed effects contradict."""

    status: Status
    reason: str | None


@dataclass(frozen=True)
class Outcome:
    """The end of one processing attempt, and what it changes elsewhere.

    ``effects`` (request rows, tokens, outbox mail) commit in the same transaction as the
    status, so a crash keeps both or neither, and reprocessing never doubles them.
    A deferral (status received, ``counts_attempt`` False) waits for a lookup to work again
    and does not use up an attempt.
    """

    id: int
    status: Status
    reason: str | None = None
    services: tuple[str, ...] = ()
    retry_at: float = 0.0
    effects: tuple[Effect, ...] = ()
    counts_attempt: bool = True
    ids: dict[str, int] = field(default_factory=dict)
    """Filled by the effects as they run (the id of the request row they make), so that the
    log line after the commit ties the message to what it became."""
    after_commit: Callable[[], None] | None = None
    """Called once the outcome and its effects committed (not when a retry replaced them):
    the handler's log line of what its effects found, said only when the database holds it."""
    decided: dict[str, Any] = field(default_factory=dict)
    """What the handler decided, said on the worker's log line after the commit (one line per
    request, not one before the commit and one after)."""


@dataclass(frozen=True)
class Finished:
    """What ``finish`` committed other than the outcomes it was given."""

    retries: list[Outcome]
    """In place of outcomes whose effects failed."""
    settled: dict[int, Verdict]
    """By spool id: the status and reason an effect's Verdict gave in place of the handler's."""
    dropped: set[int]
    """Spool ids of outcomes written by nobody: another worker holds the message now."""


WAITING = "waiting"
"""What a person reads for a message deferred by ``waiting``: stored as received (the worker
takes it up again), its reason says for which lookup."""


def waiting(spool_id: int, service: str, reason: str, retry_after: float) -> Outcome:
    """A deferral: the message waits for a lookup (DNS, IANA) to work again, without using
    up an attempt. The wait counts from now, after the lookups: timed from before them,
    lookups that time out would use it up and the retry would follow at once."""
    return Outcome(spool_id, Status.RECEIVED, f"{WAITING}: {reason}"[:1000], (service,),
                   retry_at=time.time() + retry_after, counts_attempt=False)


@dataclass
class Entry:
    id: int
    queue_id: str
    received_at: float
    status: str
    attempts: int
    size: int
    mail_from: str
    rcpt_to: list[str]
    client_addr: str
    session_id: str
    helo: str | None
    services: list[str] | None
    reason: str | None
    updated_at: float
    relay_addr: str | None = None
    lane: str = lanes.Lane.ORDINARY.word
    """The priority lane the worker takes it in (store/lanes.py), as a word."""
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def shown_status(self) -> str:
        """The status as ``spool list`` shows it: ``waiting`` for a message deferred until a
        lookup works again, instead of the ``received`` it is stored as."""
        if self.status == Status.RECEIVED and (self.reason or "").startswith(f"{WAITING}: "):
            return WAITING
        return self.status


def new_queue_id(now: float | None = None) -> str:
    """Sortable by time (milliseconds), unique by 32 random bits. Not a secret, so the
    process's own generator serves (no system call per message); the UNIQUE column backs it."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:011X}{random.getrandbits(32):08X}"


def insert(arrival: Arrival) -> Grouped[Arrival, None]:
    """The writer job that spools one arrival (lanes within the default budget);
    concurrent ones are inserted together."""
    return Grouped(insert_all, arrival)


def inserter(budget: lanes.Budget) -> Callable[[Arrival], Grouped[Arrival, None]]:
    """``insert`` with this budget of the known lane (the spool appender's, from its command
    line). One function for every job it makes, so that they still run together."""
    together = functools.partial(insert_all, budget=budget)
    return lambda arrival: Grouped(together, arrival)


def insert_all(conn: sqlite3.Connection, arrivals: list[Arrival],
               budget: lanes.Budget = lanes.DEFAULT_BUDGET) -> list[None]:
    """Spool several arrivals, each in the lane decided here (``lanes.assign``: three
    statements), with two statements however many there are (in chunks that stay under
    SQLite's limit on parameters): see ``storage.Grouped`` for why."""
    now = max(a.received_at for a in arrivals) if arrivals else 0.0
    assigned = lanes.assign(conn, [(a.mail_from, a.rcpt_to, a.raw) for a in arrivals], now, budget)
    for start in range(0, len(arrivals), _INSERT_CHUNK):
        chunk = arrivals[start:start + _INSERT_CHUNK]
        rows: list[Any] = []
        blobs: list[Any] = []
        for a, (lane, key) in zip(chunk, assigned[start:start + _INSERT_CHUNK], strict=True):
            rows += (a.queue_id, a.received_at, a.session_id, a.client_addr, a.client_port,
                     a.helo, a.mail_from, json.dumps(list(a.rcpt_to)), int(a.smtputf8),
                     len(a.raw), a.received_at, a.relay_addr, int(lane), key)
            blobs += (a.queue_id, a.raw)
        conn.execute(_insert_sql(len(chunk)), rows)
        # The raw octets go to the rows just made, found by their (unique) queue ids.
        conn.execute(_insert_raw_sql(len(chunk)), blobs)
    # No 'received' event row: the spool row holds that moment (received_at), and
    # ``show`` puts it first in the history. One statement less per accepted message.
    return [None] * len(arrivals)


def _insert_sql(n: int) -> str:
    rows = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * n)  # placeholders only: no data in the SQL
    return ("INSERT INTO spool (queue_id, received_at, session_id, client_addr, client_port,"  # noqa: S608
            " helo, mail_from, rcpt_to, smtputf8, size, updated_at, relay_addr, lane, lane_key)"
            f" VALUES {rows}")


def _insert_raw_sql(n: int) -> str:
    rows = ",".join(["(?,?)"] * n)
    return ("INSERT INTO spool_messages (id, raw) SELECT s.id, v.column2"  # noqa: S608
            f" FROM (VALUES {rows}) AS v JOIN spool AS s ON s.queue_id = v.column1")


_INSERT_CHUNK = 64
"""Arrivals per statement: 14 parameters each stays under SQLite's historical limit of 999,
and the writer's statement cache holds every size up to it."""


def requeue_interrupted(conn: sqlite3.Connection) -> int:
    """At start-up: attempts cut short by a crash go back to received."""
    return _requeue_claimed(conn, None)


def requeue_claims(owner: str) -> Callable[[sqlite3.Connection], int]:
    """Attempts of the claimant ``owner`` go back to received; ``owner`` ending in '.' names
    every claimant whose name starts so (a worker slot's earlier processes, ``claimant``).
    A sibling worker's live claims are never taken."""
    return lambda conn: _requeue_claimed(conn, owner)


def claimant(slot: int | None, name: str) -> str:
    """The owner name a worker writes on its claims: ``w<slot>.<name>`` for a worker the
    daemon runs in ``slot`` (so that its next process finds what it left), ``name`` alone
    for one run by hand."""
    return name if slot is None else f"{slot_prefix(slot)}{name}"


def slot_prefix(slot: int) -> str:
    return f"w{slot}."


def _requeue_claimed(conn: sqlite3.Connection, owner: str | None) -> int:
    now = time.time()
    params: tuple[object, ...] = ()
    if owner is None:
        where = ""
    elif owner.endswith("."):
        where, params = " AND substr(claimed_by, 1, ?) = ?", (len(owner), owner)
    else:
        where, params = " AND claimed_by = ?", (owner,)
    rows = conn.execute(
        "UPDATE spool SET status = 'received', claimed_by = NULL, updated_at = ?"  # noqa: S608
        f" WHERE status = 'processing'{where} RETURNING id", (now, *params)).fetchall()
    conn.executemany(
        "INSERT INTO spool_events (spool_id, at, status, reason) VALUES (?,?,?,?)",
        [(r[0], now, Status.RECEIVED.value, "requeued: processing was interrupted") for r in rows],
    )
    return len(rows)


_DUE = ("SELECT s.id, s.queue_id, s.mail_from, s.rcpt_to, s.attempts, m.raw, s.lane"
        " FROM spool s INDEXED BY {index} JOIN spool_messages m ON m.id = s.id")
# INDEXED BY: without ANALYZE's statistics SQLite prefers spool_status, then sorts every
# received row; these walk their index in the order asked and stop at the limit.
DUE_OVERDUE = (_DUE.format(index="spool_overdue") + " WHERE s.status = 'received' AND s.received_at < ?2"
               " AND s.next_attempt_at <= ?1 ORDER BY s.received_at, s.id LIMIT ?3")
"""What has waited longer than worker.max_wait (index spool_overdue)."""
DUE_LANES = (_DUE.format(index="spool_lanes") + " WHERE s.status = 'received' AND s.next_attempt_at <= ?1"
             " AND s.received_at >= ?2 ORDER BY s.lane, s.next_attempt_at, s.id LIMIT ?3")
"""The rest, lane by lane (index spool_lanes, in its order: no sort)."""


def due(conn: sqlite3.Connection, now: float, limit: int, max_wait: float = 600.0) -> list[Pending]:
    """Messages waiting for the worker, in the order it takes them: first whatever was
    received more than ``max_wait`` seconds ago (oldest first), so that nothing waits for
    ever; then lane by lane (store/lanes.py), each by next attempt and arrival. A deferred
    message keeps its lane. Two indexed queries, the second only when the first leaves room.

    A batch that begins with fast-lane mail holds only fast-lane mail: its outcomes then
    commit without waiting for a batch's worth of ordinary mail (under a flood, junk)."""
    cutoff = now - max_wait
    rows = conn.execute(DUE_OVERDUE, (now, cutoff, limit)).fetchall()
    if len(rows) < limit:
        rows += conn.execute(DUE_LANES, (now, cutoff, limit - len(rows))).fetchall()
    pending = [Pending(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6]) for r in rows]
    if pending and pending[0].fast:
        return [p for p in pending if p.fast]
    return pending


def next_due_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT min(next_attempt_at) FROM spool WHERE status = 'received'").fetchone()
    return None if row[0] is None else float(row[0])


def claim(ids: Iterable[int], now: float, owner: str) -> Callable[[sqlite3.Connection], list[int]]:
    """Mark messages as being processed and count the attempt before any work starts.

    Counting first means a message that crashes the daemon every time still reaches
    max_attempts and stops being retried.
    """
    id_list = list(ids)

    def job(conn: sqlite3.Connection) -> list[int]:
        # One statement for the batch (ids are integers we read: only placeholders in SQL).
        marks = ",".join("?" * len(id_list))
        claimed = sorted(r[0] for r in conn.execute(
            "UPDATE spool SET status = 'processing', attempts = attempts + 1, updated_at = ?,"  # noqa: S608
            f" claimed_by = ? WHERE status = 'received' AND id IN ({marks}) RETURNING id",
            (now, owner, *id_list)).fetchall()) if id_list else []
        conn.executemany(
            "INSERT INTO spool_events (spool_id, at, status, reason) VALUES (?,?,?,?)",
            [(i, now, Status.PROCESSING.value, None) for i in claimed])
        return claimed

    return job


def finish(outcomes: Iterable[Outcome], now: float, retry_at: float, owner: str,
           ) -> Callable[[sqlite3.Connection], Finished]:
    """Commit outcomes: an outcome whose effects fail is replaced by a retry at ``retry_at``
    (returned, so the caller can log it) and the others still commit. An outcome for a
    message ``owner`` no longer holds is dropped with its effects: whoever holds it now
    will write its own.

    First all together in one savepoint, their event rows in one statement (the common
    case, three statements fewer per outcome); when anything fails, again with each outcome
    in a savepoint of its own, its event row with it (effects, like writer jobs, may run
    twice after a rollback: ``storage.commit``)."""
    rows = list(outcomes)
    services_json: dict[tuple[str, ...], str | None] = {}

    def write(conn: sqlite3.Connection, o: Outcome, done: Finished,
              events: list[tuple[int, float, str, str | None]] | None = None) -> None:
        """One outcome; its event row inserted, or added to ``events`` to insert together."""
        services = services_json.get(o.services, "")
        if services == "":
            services = services_json[o.services] = json.dumps(list(o.services)) if o.services else None
        cur = conn.execute(
            "UPDATE spool SET status = ?, reason = ?, services = ?, next_attempt_at = ?,"
            " updated_at = ?, attempts = attempts - ?, claimed_by = NULL"
            " WHERE id = ? AND status = 'processing' AND claimed_by = ?",
            (o.status.value, o.reason, services, o.retry_at, now, 0 if o.counts_attempt else 1, o.id,
             owner))
        if cur.rowcount != 1:
            done.dropped.add(o.id)
            return
        status, reason = o.status, o.reason
        for effect in o.effects:
            verdict = effect(conn)
            if isinstance(verdict, Verdict):
                status, reason = verdict.status, verdict.reason
        if (status, reason) != (o.status, o.reason):
            done.settled[o.id] = Verdict(status, reason)
            conn.execute("UPDATE spool SET status = ?, reason = ? WHERE id = ?",
                         (status.value, reason, o.id))
        if events is None:
            conn.execute(_EVENT, (o.id, now, status.value, reason))
        else:
            events.append((o.id, now, status.value, reason))

    def job(conn: sqlite3.Connection) -> Finished:
        conn.execute("SAVEPOINT outcomes")
        done = Finished([], {}, set())
        events: list[tuple[int, float, str, str | None]] = []
        try:
            for o in rows:
                write(conn, o, done, events)
            conn.executemany(_EVENT, events)
        except Exception:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO outcomes")
            done = Finished([], {}, set())
            for o in rows:
                conn.execute("SAVEPOINT outcome")
                try:
                    write(conn, o, done)
                except Exception as e:
                    if not conn.in_transaction:
                        raise
                    conn.execute("ROLLBACK TO outcome")
                    done.settled.pop(o.id, None)
                    retry = Outcome(o.id, Status.RECEIVED, f"could not record the outcome: {e}"[:500],
                                    o.services, retry_at)
                    write(conn, retry, done)
                    done.retries.append(retry)
                conn.execute("RELEASE outcome")
        conn.execute("RELEASE outcomes")
        return done

    return job


_EVENT = "INSERT INTO spool_events (spool_id, at, status, reason) VALUES (?,?,?,?)"


def requeue(conn: sqlite3.Connection, spool_id: int, now: float, reason: str,
            raw: bytes | None = None, *, keep_attempts: bool = False) -> None:
    """Back to 'received' for the worker, with an event saying why (an operator's retry, a
    list post released or confirmed); ``raw`` puts back octets the retention purge took.
    ``keep_attempts``: the attempts so far still count (the next one adds to them)."""
    if raw is not None:
        conn.execute("INSERT OR IGNORE INTO spool_messages (id, raw) VALUES (?, ?)", (spool_id, raw))
    conn.execute("UPDATE spool SET status = 'received', attempts = CASE WHEN ? THEN attempts ELSE 0 END,"
                 " next_attempt_at = 0, updated_at = ? WHERE id = ?", (keep_attempts, now, spool_id))
    conn.execute("INSERT INTO spool_events (spool_id, at, status, reason) VALUES (?,?,?,?)",
                 (spool_id, now, Status.RECEIVED.value, reason))


def retry(queue_id: str, now: float) -> Callable[[sqlite3.Connection], bool]:
    """Put a failed or rejected message back for processing (an operator's decision)."""

    def job(conn: sqlite3.Connection) -> bool:
        # A message whose octets the retention purge removed cannot be processed again.
        row = conn.execute(
            "SELECT id, attempts FROM spool WHERE queue_id = ? AND status IN ('failed', 'rejected')"
            " AND EXISTS (SELECT 1 FROM spool_messages m WHERE m.id = spool.id)", (queue_id,)).fetchone()
        if row:
            # Counted on, not from zero: the attempts column says how often it was processed.
            requeue(conn, row[0], now, f"requeued by operator after {counted(row[1], 'attempt')}",
                    keep_attempts=True)
        return row is not None

    return job


_ENTRY_COLUMNS = (
    "id, queue_id, received_at, status, attempts, size, mail_from, rcpt_to, client_addr,"
    " session_id, helo, services, reason, updated_at, relay_addr, lane"
)


def _entry(r: tuple[Any, ...]) -> Entry:
    return Entry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], r[9], r[10],
                 json.loads(r[11]) if r[11] else None, r[12], r[13], r[14], lanes.lane_word(r[15]))


def listing(conn: sqlite3.Connection, status: str | None = None, limit: int = 100,
            service: str | None = None, lane: str | None = None) -> list[Entry]:
    """Newest first; only ``status``, only mail handled for ``service``, and only the lane
    named ``lane`` (a word of ``lanes.Lane``), when given."""
    lane_value = None if lane is None else int(lanes.Lane[lane.upper()])
    rows = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM spool WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL"  # noqa: S608
        " OR EXISTS (SELECT 1 FROM json_each(spool.services) WHERE value = ?2))"
        " AND (?4 IS NULL OR lane = ?4)"
        " ORDER BY id DESC LIMIT ?3", (status or None, service or None, limit, lane_value)).fetchall()
    return [_entry(r) for r in rows]


def show(conn: sqlite3.Connection, queue_id: str) -> tuple[Entry, bytes] | None:
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM spool WHERE queue_id = ?", (queue_id,)).fetchone()  # noqa: S608
    if row is None:
        return None
    entry = _entry(row)
    entry.events = [{"at": entry.received_at, "status": Status.RECEIVED.value,
                     "reason": "accepted over SMTP"}] + [
        {"at": at, "status": st, "reason": reason}
        for at, st, reason in conn.execute(
            "SELECT at, status, reason FROM spool_events WHERE spool_id = ? ORDER BY at, rowid",
            (entry.id,))
    ]
    row = conn.execute("SELECT raw FROM spool_messages WHERE id = ?", (entry.id,)).fetchone()
    return entry, b"" if row is None else bytes(row[0])  # b"": purged (storage.retention_days)


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    out = {s.value: 0 for s in Status}
    for st, n in conn.execute("SELECT status, count(*) FROM spool GROUP BY status"):
        out[st] = n
    return out
