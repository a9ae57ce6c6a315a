"""Priority lanes: the From read from the header octets, the lane decided at intake, the
budget of a known address, and the order in which the worker claims what waits.

The order tests spool messages with the spool appender's own insert path (``spool.inserter``
in ``storage.commit``, as ``Appender.commit`` runs it) on a real SQLite file, then let the
real Worker take them one at a time (batch_size 1) and read the order it claimed them in.
The last test does the same through the real daemon, its worker stopped (SIGSTOP) while
the mail is spooled over SMTP, and reads the lanes with ``tldops spool list``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from daemon_proc import DOMAIN, DaemonProc, descendants
from test_intake_basic import send as smtp_send

from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.settings import config
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service
from tldops_mta.store import lanes, spool, storage, tokens
from tldops_mta.store.lanes import Budget, Facts, Lane
from tldops_mta.worker.spool_loop import Worker

ADMIN = "admin@nic.org.mt"  # IANA's administrative contact of .mt (iana_contacts)
SSC = "Jane.Doe@nic.org.mt"  # on the roster, written as email-validator keeps it
VALIDATOR = "val@validators.example"
JUNK = "flood@junk.example"
REQUESTS = f"requests@{DOMAIN}"
LIVE, EXPIRED, USED = "LiveToken_aaaaaaaaaaaaaaaa", "Expired_bbbbbbbbbbbbbbbbbbb", "Used_ccccccccccccc"


# -- The From address, from the header octets ---------------------------------------------

@pytest.mark.parametrize(("raw", "address"), [
    (b"From: Admin@NIC.org.mt\r\nSubject: x\r\n\r\nbody\r\n", "admin@nic.org.mt"),
    (b'From: "Doe, Jane (NIC)" <jane@nic.org.mt>\r\n\r\n', "jane@nic.org.mt"),
    (b"From: =?utf-8?q?Doe=2C_J=C3=A4ne?= <jane@nic.org.mt>\r\n\r\n", "jane@nic.org.mt"),
    (b"From: =?utf-8?b?RG9lLCBKYW5l?=\r\n\t<jane@nic.org.mt>\r\nTo: x@y\r\n\r\n", "jane@nic.org.mt"),
    (b"Subject: x\r\nfrom:\r\n jane@nic.org.mt (Jane, at work)\r\n\r\n", "jane@nic.org.mt"),
    (b"From: J\xc3\xa4ne <jane@nic.org.mt.>\n\nbody", "jane@nic.org.mt"),
    (b"From: <jane@nic.org.mt>", "jane@nic.org.mt"),
    (b"From: a@nic.org.mt\r\nFrom: b@nic.org.mt\r\n\r\n", None),  # two From fields
    (b"From: a@nic.org.mt, b@nic.org.mt\r\n\r\n", None),  # several addresses
    (b"From: Doe, Jane <jane@nic.org.mt>\r\n\r\n", None),  # an unquoted comma: two of them
    (b"From: <a@nic.org.mt> <b@nic.org.mt>\r\n\r\n", None),
    (b"From: team: a@nic.org.mt;\r\n\r\n", None),  # a group
    (b'From: "Jane <jane@nic.org.mt>\r\n\r\n', None),  # unbalanced quote
    (b"From: Jane Doe\r\n\r\n", None),
    (b"Subject: no sender\r\n\r\nFrom: jane@nic.org.mt\r\n", None),  # From in the body
    (b"just a body, no header\r\nFrom: jane@nic.org.mt\r\n", None),  # header-less
    (b"\r\nFrom: jane@nic.org.mt\r\n", None),  # empty header
    (b"", None),
])
def test_from_address_is_read_from_the_header_octets_alone(raw: bytes, address: str | None) -> None:
    assert lanes.from_address(raw) == address


def test_token_tags_are_what_follows_the_first_plus() -> None:
    assert lanes.token_tags([f"confirm+{LIVE}@{DOMAIN}", REQUESTS, f"decide+a+b@{DOMAIN}",
                             f"x+@{DOMAIN}"]) == [LIVE, "a+b"]


def test_candidates_are_from_then_envelope_sender_lower_cased_once() -> None:
    raw = b"From: Jane <Jane.Doe@NIC.org.mt>\r\n\r\n"
    assert lanes.candidates("jane.doe@nic.org.mt", raw) == ["jane.doe@nic.org.mt"]
    assert lanes.candidates("Bounce@Lists.example", raw) == ["jane.doe@nic.org.mt", "bounce@lists.example"]
    assert lanes.candidates("", b"Subject: x\r\n\r\n") == []


# -- The decision and the budget ------------------------------------------------------------

def test_decision() -> None:
    known = {ADMIN, VALIDATOR}
    budget = Budget(2, 600)
    assert lanes.decide(Facts(True, (JUNK,)), known, {}, budget) == (Lane.TOKEN, None)
    assert lanes.decide(Facts(True, (ADMIN,)), known, {ADMIN: 5}, budget) == (Lane.TOKEN, None)
    assert lanes.decide(Facts(False, (ADMIN,)), known, {ADMIN: 1}, budget) == (Lane.KNOWN, ADMIN)
    assert lanes.decide(Facts(False, (ADMIN,)), known, {ADMIN: 2}, budget) == (Lane.ORDINARY, None)
    assert lanes.decide(Facts(False, (JUNK, VALIDATOR)), known, {}, budget) == (Lane.KNOWN, VALIDATOR)
    # The first known address decides: a forged From spends its own budget, not another's.
    assert lanes.decide(Facts(False, (ADMIN, VALIDATOR)), known, {ADMIN: 2}, budget) == (Lane.ORDINARY, None)
    assert lanes.decide(Facts(False, (JUNK,)), known, {}, budget) == (Lane.ORDINARY, None)
    assert lanes.decide(Facts(False, (ADMIN,)), known, {}, Budget(0, 600)) == (Lane.ORDINARY, None)


def test_budget_counts_those_earlier_in_the_same_group_commit() -> None:
    facts = [Facts(False, (ADMIN,))] * 4 + [Facts(False, (VALIDATOR,))]
    assert lanes.decide_all(facts, {ADMIN, VALIDATOR}, {ADMIN: 1}, Budget(3, 600)) == [
        (Lane.KNOWN, ADMIN), (Lane.KNOWN, ADMIN), (Lane.ORDINARY, None), (Lane.ORDINARY, None),
        (Lane.KNOWN, VALIDATOR)]
    assert Budget(3, 600).left(1) == 2 and Budget(3, 600).left(7) == 0
    assert [lane.word for lane in Lane] == ["token", "known", "ordinary"]


# -- The claim order, on a real database ------------------------------------------------

def message(mail_from: str, rcpt: str = REQUESTS, *, from_line: str | None = None,
            received_at: float | None = None) -> spool.Arrival:
    raw = f"From: {from_line or mail_from}\r\nTo: {rcpt}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    return spool.Arrival(queue_id=spool.new_queue_id(), received_at=received_at or time.time(),
                         session_id="s", client_addr="192.0.2.1", client_port=1, helo="h",
                         mail_from=mail_from, rcpt_to=(rcpt,), smtputf8=False, raw=raw)


class Spool:
    """A real database file, filled the way the spool appender fills it, and a Worker on it."""

    def __init__(self, tmp_path: Path, **cfg_over: object) -> None:
        self.cfg = config.load(None, {"storage.state_dir": str(tmp_path), "worker.batch_size": 1,
                                      "worker.linger": 0, **cfg_over})
        self.conn = storage.connect(self.cfg.database_path)
        storage.migrate(self.conn)
        now = time.time()
        storage.commit_one(self.conn, lanes.set_senders(lanes.VALIDATOR, [VALIDATOR]))
        for job in (tokens.issue(LIVE, "confirm", None, JUNK, now=now, ttl=3600),
                    tokens.issue(EXPIRED, "confirm", None, JUNK, now=now - 7200, ttl=3600),
                    tokens.issue(USED, "confirm", None, JUNK, now=now, ttl=3600)):
            storage.commit_one(self.conn, job)
        self.conn.execute("UPDATE tokens SET used_at = ? WHERE hash = ?", (now, tokens.token_hash(USED)))
        self.conn.execute("INSERT INTO iana_contacts (tld, source, fetched_at, admin_email, status, raw)"
                          " VALUES ('mt', 'rdap', ?, ?, 'ok', x'')", (now, ADMIN))
        self.conn.execute("INSERT INTO roster (tld, role, first_name, last_name, phone, email, since)"
                          " VALUES ('mt', 'primary', 'Jane', 'Doe', '+35621334455', ?, ?)", (SSC, now))
        w = self.cfg.worker
        self.insert = spool.inserter(Budget(w.fast_lane_budget, w.fast_lane_window))

    def spool(self, arrivals: Sequence[spool.Arrival]) -> list[str]:
        """One group commit, as the appender makes it; the queue ids."""
        results = storage.commit(self.conn, [self.insert(a) for a in arrivals])
        assert all(error is None for _, error in results)
        return [a.queue_id for a in arrivals]

    def lanes_of(self, ids: Sequence[str]) -> list[str]:
        return [lanes.lane_word(self.conn.execute("SELECT lane FROM spool WHERE queue_id = ?",
                                                  (q,)).fetchone()[0]) for q in ids]

    async def claimed(self, now: float | None = None, defer: frozenset[str] = frozenset()) -> list[str]:
        """Let a worker take everything due, one message per batch; the queue ids in that
        order. Those in ``defer`` wait for a lookup, as a desk defers them (spool.waiting)."""
        order: list[str] = []

        async def record(p: spool.Pending, facts: MessageFacts, services: frozenset[Service],
                         ) -> spool.Outcome:
            order.append(p.queue_id)
            if p.queue_id in defer:
                return spool.waiting(p.id, "requests", "IANA did not answer", 30)
            return spool.Outcome(p.id, spool.Status.DONE, "taken")

        writer = storage.Writer(storage.connect(self.cfg.database_path))
        writer.start()
        reader = storage.Reader(storage.connect(self.cfg.database_path))
        try:
            worker = Worker(Live(self.cfg), writer, reader, record)
            while await worker.step(now):
                pass
        finally:
            await writer.close()
            reader.close()
        # The claims as committed, too: one 'processing' event per message, in that order.
        events = [r[0] for r in self.conn.execute(
            "SELECT s.queue_id FROM spool_events e JOIN spool s ON s.id = e.spool_id"
            " WHERE e.status = 'processing' ORDER BY e.rowid")]
        assert events[len(events) - len(order):] == order
        return order


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path)
    yield s
    s.conn.close()


async def test_a_live_token_goes_first_and_an_expired_or_used_one_is_ordinary(db: Spool) -> None:
    ids = db.spool([message(JUNK), message(JUNK, f"confirm+{EXPIRED}@{DOMAIN}")])
    ids += db.spool([message(JUNK, f"confirm+{USED}@{DOMAIN}"), message(JUNK, f"decide+{LIVE}@{DOMAIN}")])
    junk, expired, used, live = ids
    assert db.lanes_of(ids) == ["ordinary", "ordinary", "ordinary", "token"]
    assert await db.claimed() == [live, junk, expired, used]


async def test_known_senders_go_before_older_junk(db: Spool) -> None:
    """An IANA admin (cache), an SSC (roster, any case), a Validator (configuration), by
    their From or their envelope sender; a stranger's mail waits its turn."""
    ids = db.spool([message(JUNK), message(JUNK, from_line=f'"Doe, Jane" <{SSC.lower()}>'),
                    message("x@elsewhere.example")])
    ids += db.spool([message(f"bounces+x@{VALIDATOR.split('@')[1]}", from_line=VALIDATOR),
                     message(ADMIN.upper(), from_line="Someone <someone@nic.org.mt>")])
    junk, ssc, stranger, validator, admin = ids
    assert db.lanes_of(ids) == ["ordinary", "known", "ordinary", "known", "known"]
    assert await db.claimed() == [ssc, validator, admin, junk, stranger]
    assert db.conn.execute("SELECT lane_key FROM spool WHERE queue_id = ?", (admin,)).fetchone() == (ADMIN,)


async def test_beyond_its_budget_a_known_address_is_ordinary(db: Spool) -> None:
    """Ten in the window (worker.fast_lane_budget), counted over group commits and within
    one; the eleventh waits behind older junk. A token still goes first."""
    [junk] = db.spool([message(JUNK)])
    admin = db.spool([message(ADMIN) for _ in range(4)])
    admin += db.spool([message(ADMIN) for _ in range(8)])
    [token] = db.spool([message(ADMIN, f"confirm+{LIVE}@{DOMAIN}")])
    assert db.lanes_of(admin) == ["known"] * 10 + ["ordinary"] * 2
    assert await db.claimed() == [token, *admin[:10], junk, *admin[10:]]


async def test_the_budget_counts_only_the_window(tmp_path: Path) -> None:
    s = Spool(tmp_path, **{"worker.fast_lane_budget": 2, "worker.fast_lane_window": 60})
    now = time.time()
    old = s.spool([message(ADMIN, received_at=now - 120) for _ in range(2)])
    new = s.spool([message(ADMIN, received_at=now) for _ in range(3)])
    assert s.lanes_of(old + new) == ["known", "known", "known", "known", "ordinary"]


async def test_mail_older_than_max_wait_goes_before_the_lanes(db: Spool) -> None:
    now = time.time()
    ids = db.spool([message(JUNK, received_at=now - 300), message(JUNK, received_at=now - 601),
                    message(ADMIN, received_at=now - 10), message(JUNK, f"confirm+{LIVE}@{DOMAIN}",
                                                                  received_at=now - 5),
                    message(JUNK, received_at=now - 900)])
    recent, old, admin, token, oldest = ids
    assert await db.claimed(now) == [oldest, old, token, admin, recent]


async def test_a_deferred_message_keeps_its_lane(db: Spool) -> None:
    [admin] = db.spool([message(ADMIN)])
    assert await db.claimed(defer=frozenset({admin})) == [admin]
    [junk] = db.spool([message(JUNK)])
    # Due again after its wait, later than the junk: still taken first, in the known lane.
    assert await db.claimed(time.time() + 31) == [admin, junk]


async def test_a_batch_that_begins_in_a_fast_lane_holds_only_fast_mail(tmp_path: Path) -> None:
    """Under a flood its outcomes must not wait for a batch's worth of junk processed beside
    them; nor does the worker linger for such a batch to fill."""
    s = Spool(tmp_path, **{"worker.batch_size": 5, "worker.linger": 5})
    junk = s.spool([message(JUNK) for _ in range(5)])
    fast = s.spool([message(JUNK, f"confirm+{LIVE}@{DOMAIN}"), message(ADMIN)])
    assert [p.queue_id for p in spool.due(s.conn, time.time(), 5)] == fast
    started = time.monotonic()
    assert await s.claimed() == fast + junk
    assert time.monotonic() - started < 2.5  # a lingering fast batch would have taken 5 s
    batches = [r[0] for r in s.conn.execute(
        "SELECT group_concat(s.queue_id) FROM spool_events e JOIN spool s ON s.id = e.spool_id"
        " WHERE e.status = 'processing' GROUP BY e.at ORDER BY e.at")]
    assert batches == [",".join(fast), ",".join(junk)]
    s.conn.close()


def plan(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> str:
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_each_lookup_and_the_claim_use_an_index(db: Spool) -> None:
    """No scan of the received rows, and no sort of them, however many wait."""
    claim_overdue = plan(db.conn, spool.DUE_OVERDUE, (1.0, 0.0, 1))
    claim_lanes = plan(db.conn, spool.DUE_LANES, (1.0, 0.0, 1))
    assert "USING INDEX spool_overdue (received_at<?)" in claim_overdue and "TEMP B-TREE" not in claim_overdue
    assert "USING INDEX spool_lanes" in claim_lanes and "TEMP B-TREE" not in claim_lanes
    known = plan(db.conn, lanes.KNOWN_SQL, ("[]",))
    for index in ("lane_senders USING PRIMARY KEY", "INDEX iana_contacts_admin", "INDEX roster_by_email"):
        assert index in known
    budget = plan(db.conn, lanes.EARNED_SQL, ("[]", 0))
    assert "INDEX spool_lane_budget (lane_key=? AND received_at>?)" in budget


# -- Through the real daemon ----------------------------------------------------------------

def send(d: DaemonProc, mail_from: str, rcpt: str = REQUESTS, from_line: str | None = None) -> str:
    raw = f"From: {from_line or mail_from}\r\nTo: {rcpt}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    return smtp_send(d, [rcpt], raw, sender=mail_from)


def tldops(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config", str(d.config_path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r


def test_the_daemon_spools_in_lanes_and_its_worker_takes_them_in_order(tmp_path: Path) -> None:
    # One worker process: the order of its claims is the lanes' order (two would interleave).
    d = DaemonProc(tmp_path, {"worker.processes": 1, "worker.batch_size": 1, "worker.linger": 0,
                              "worker.max_idle": 0, "worker.fast_lane_budget": 2,
                              "validation.validators": [VALIDATOR]})
    d.start()
    try:
        d.wait_for("worker ready")
        now = time.time()
        [worker] = [p for p in descendants(d.proc.pid)  # type: ignore[union-attr]
                    if b"tldops_mta.intake.appender" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        # Stopped while it holds no write lock (one it held would keep the appender from
        # committing): the test holds the lock itself at that moment.
        conn = sqlite3.connect(d.db_path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO iana_contacts (tld, source, fetched_at, admin_email, status, raw)"
                         " VALUES ('mt', 'rdap', ?, ?, 'ok', x'')", (now, ADMIN))
            conn.execute("INSERT INTO tokens (hash, purpose, address, created_at, expires_at)"
                         " VALUES (?, 'confirm', ?, ?, ?)", (tokens.token_hash(LIVE), JUNK, now, now + 3600))
            os.kill(worker, signal.SIGSTOP)
            conn.execute("COMMIT")
        finally:
            conn.close()
        try:
            junk1 = send(d, JUNK)
            admin = [send(d, ADMIN) for _ in range(3)]  # a budget of 2 (the appender's command line)
            validator = send(d, "bounce@validators.example", from_line=f"V <{VALIDATOR}>")
            token = send(d, JUNK, f"confirm+{LIVE}@{DOMAIN}")
            junk2 = send(d, JUNK)
            listed = tldops(d, "spool", "list").stdout.splitlines()
            as_json = json.loads(tldops(d, "spool", "list", "--json").stdout)
            known_only = json.loads(tldops(d, "spool", "list", "--json", "--lane", "known").stdout)
            shown = tldops(d, "spool", "show", validator).stdout
        finally:
            os.kill(worker, signal.SIGCONT)
        lane_of = {e["queue_id"]: e["lane"] for e in as_json}
        assert lane_of == {junk1: "ordinary", admin[0]: "known", admin[1]: "known", admin[2]: "ordinary",
                           validator: "known", token: "token", junk2: "ordinary"}
        assert {e["queue_id"] for e in known_only} == {admin[0], admin[1], validator}
        assert "LANE" in listed[0].split()
        assert {line.split()[0]: line.split()[4] for line in listed[1:]} == lane_of
        assert "lane:        known" in shown
        d.wait_count("message processed", 7, timeout=60)
        order: list[str] = []
        for (q,) in d.query("SELECT s.queue_id FROM spool_events e JOIN spool s ON s.id = e.spool_id"
                            " WHERE e.status = 'processing' ORDER BY e.rowid"):
            if q not in order:
                order.append(q)
        assert order == [token, admin[0], admin[1], validator, junk1, admin[2], junk2]
    finally:
        d.stop()
