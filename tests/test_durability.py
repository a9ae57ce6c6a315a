"""A 250 means the message is on disk; failures to store answer 4xx; restarts lose nothing."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from daemon_proc import DOMAIN, DaemonProc
from smtp_raw import message, open_session


def deliver(d: DaemonProc, data: bytes, rcpt: str = f"postmaster@{DOMAIN}") -> tuple[int, str]:
    c = open_session(d.connect())
    try:
        assert c.cmd("MAIL FROM:<admin@nic.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(data + b".\r\n")
        return c.reply()
    finally:
        c.close()


def queue_id(reply: tuple[int, str]) -> str:
    code, text = reply
    assert code == 250, text
    return text.rsplit(" ", 1)[1]


def test_message_survives_sigkill_right_after_250(start_daemon) -> None:
    # The worker is kept from touching the message (first attempt far in the future is not
    # possible for new mail), so instead we check the row and its octets after the kill.
    d = start_daemon()
    data = message("kill-after-250")
    qid = queue_id(deliver(d, data))
    d.kill()  # SIGKILL: no flush, no shutdown
    rows = d.query("SELECT m.raw FROM spool s JOIN spool_messages m ON m.id = s.id"
                   " WHERE s.queue_id = ?", (qid,))
    assert rows == [(data,)]
    d.start()
    d.wait_for("message processed", lambda r: r.get("queue_id") == qid)
    assert d.query("SELECT status FROM spool WHERE queue_id = ?", (qid,)) == [("done",)]
    assert d.query("PRAGMA integrity_check") == [("ok",)]


def test_commit_failure_answers_451_and_keeps_nothing(start_daemon) -> None:
    d = start_daemon({"storage.busy_timeout_ms": 200})
    # Another process holds the write lock: the daemon's commit cannot happen.
    blocker = sqlite3.connect(d.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        code, text = deliver(d, message("blocked"))
        assert (code, text[:9]) == (451, "451 4.3.0")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert d.query("SELECT count(*) FROM spool") == [(0,)]
    d.wait_for("spool commit failed")
    # The lock is gone: the very next message is stored.
    qid = queue_id(deliver(d, message("after-unblock")))
    assert d.query("SELECT count(*) FROM spool WHERE queue_id = ?", (qid,)) == [(1,)]
    assert d.alive


def test_full_storage_answers_452_and_the_database_stays_sound(start_daemon) -> None:
    d = start_daemon({"storage.max_size_mb": 1, "server.max_message_size": 1024 * 1024})
    body = ("x" * 76 + "\r\n") * 3000  # ~234 KB
    results = [deliver(d, message(f"fill-{i}", body=body)) for i in range(8)]
    codes = [c for c, _ in results]
    assert 250 in codes
    full = [t for c, t in results if c != 250]
    assert full, "a 1 MiB database must fill up with 8 messages of 234 KB"
    assert all(t.startswith("452 4.3.1") for t in full), full
    stored = d.query("SELECT count(*) FROM spool")[0][0]
    assert stored == codes.count(250)
    assert d.query("PRAGMA integrity_check") == [("ok",)]
    # Small mail still fits in the room left, or is refused the same way: never 5xx.
    code, text = deliver(d, message("small"))
    assert code in (250, 452), text
    assert d.alive


def test_messages_left_processing_are_redone_after_restart(start_daemon) -> None:
    d = start_daemon()
    qids = [queue_id(deliver(d, message(f"mid-{i}"))) for i in range(3)]
    for q in qids:
        d.wait_processed(q)
    assert d.stop() == 0
    # As if the daemon had died mid-batch: claimed, attempt counted, no outcome written.
    conn = sqlite3.connect(d.db_path, isolation_level=None)
    conn.execute("UPDATE spool SET status = 'processing', services = NULL")
    conn.close()
    d.start()
    ready = d.events("ready")[-1]
    assert ready["requeued"] == 3
    for q in qids:
        d.wait_processed(q)
    rows = d.query("SELECT status, attempts, services FROM spool ORDER BY id")
    assert rows == [("done", 2, '["postmaster"]')] * 3
    history = d.query("SELECT status FROM spool_events WHERE spool_id = 1 ORDER BY rowid")
    assert [h[0] for h in history] == ["processing", "done", "received", "processing", "done"]


def test_messages_waiting_for_the_disk_are_committed_together(start_daemon) -> None:
    # Hold the write lock so the first commit waits; the messages that arrive meanwhile
    # must then go to disk in one transaction, not one fsync each.
    d = start_daemon()
    n = 5
    blocker = sqlite3.connect(d.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    replies: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda i=i: replies.append(deliver(d, message(f"g{i}"))))
               for i in range(n)]
    try:
        for t in threads:
            t.start()
        d.wait_count("spooling", n)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for t in threads:
        t.join()
    assert sorted(c for c, _ in replies) == [250] * n
    assert d.stop() == 0
    stopped = d.events("appender stopped")[-1]
    # The n inserts took at most 2 transactions: the first one alone, waiting for the lock,
    # the rest together behind it.
    assert stopped["writes"] == n
    assert stopped["commits"] <= 2


def test_concurrent_sessions_all_get_stored(start_daemon) -> None:
    d = start_daemon({"log.level": "info"})
    n_threads, per_thread = 10, 10
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(per_thread):
                queue_id(deliver(d, message(f"c{threading.get_ident()}-{i}")))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert d.query("SELECT count(*) FROM spool") == [(n_threads * per_thread,)]
    assert d.stop() == 0


def test_a_dead_worker_process_is_restarted_and_mail_still_processed(start_daemon) -> None:
    import os
    import signal

    d = start_daemon()
    d.wait_processed(queue_id(deliver(d, message("starts-the-worker"))))
    first = d.worker_ready(slot=0)
    os.kill(first["pid"], signal.SIGKILL)
    restarted = d.wait_for("worker process exited, restarting")
    assert restarted["level"] == "error" and restarted["slot"] == 0
    d.worker_ready(slot=0, n=2)
    qid = queue_id(deliver(d, message("after-worker-restart")))
    d.wait_processed(qid)
    assert d.query("SELECT status FROM spool WHERE queue_id = ?", (qid,)) == [("done",)]


@pytest.mark.parametrize("child", ["worker", "appender"])
def test_killing_the_daemon_takes_its_child_processes_with_it(start_daemon, child: str) -> None:
    import os
    import select

    d = start_daemon({"worker.max_idle": 0, "worker.processes": 2})  # every child runs from the start
    pids = ([d.worker_ready(slot)["pid"] for slot in (0, 1)] if child == "worker"
            else [d.wait_for("appender ready")["pid"]])
    pidfds = [os.pidfd_open(pid) for pid in pids]  # readable once it has exited
    try:
        d.kill()
        for pidfd in pidfds:
            ready, _, _ = select.select([pidfd], [], [], 10)
            assert ready, f"a {child} process outlived the daemon"
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


@pytest.mark.parametrize(("cpu_class", "cores", "policy"),
                         [("auto", 2, "SCHED_IDLE"), ("auto", 1, "SCHED_BATCH"),
                          ("idle", 1, "SCHED_IDLE"), ("batch", 2, "SCHED_BATCH")])
def test_the_child_processes_yield_the_cpu_to_smtp_intake(start_daemon, cpu_class: str, cores: int,
                                                          policy: str) -> None:
    import os

    overrides: dict[str, object] = {"worker.max_idle": 0}  # the worker runs from the start
    if cpu_class != "auto":  # auto is the default
        overrides["worker.cpu_class"] = cpu_class
    ours = os.sched_getaffinity(0)
    if len(ours) < cores:
        pytest.fail(f"this test needs {cores} CPUs to run on, it has {len(ours)}")
    os.sched_setaffinity(0, sorted(ours)[:cores])  # the daemon and its children inherit it
    try:
        d = start_daemon(overrides)
    finally:
        os.sched_setaffinity(0, ours)
    # One worker process per core by default: each in the class.
    readies = [d.worker_ready(slot) for slot in range(cores)]
    appender_pid = d.wait_for("appender ready")["pid"]
    daemon_nice = os.getpriority(os.PRIO_PROCESS, d.proc.pid)
    assert os.sched_getscheduler(d.proc.pid) == os.SCHED_OTHER
    for ready in readies:
        assert ready["cpu_class"] == ("idle" if policy == "SCHED_IDLE" else "batch")
        assert os.sched_getscheduler(ready["pid"]) == getattr(os, policy)
        if policy == "SCHED_BATCH":  # in SCHED_IDLE no nice level counts
            assert os.getpriority(os.PRIO_PROCESS, ready["pid"]) == daemon_nice + 10
    assert max(r["slot"] for r in d.events("worker ready")) == cores - 1  # no slot beyond the cores
    # The appender's commit is what a session waits for: it keeps the daemon's own class.
    assert os.getpriority(os.PRIO_PROCESS, appender_pid) == daemon_nice
    assert os.sched_getscheduler(appender_pid) == os.SCHED_OTHER


def test_a_dead_spool_appender_fails_its_message_with_451_and_is_restarted(start_daemon) -> None:
    import os
    import signal

    d = start_daemon()
    appender = d.wait_for("appender ready")["pid"]
    os.kill(appender, signal.SIGSTOP)  # the next message waits for a commit that never comes
    c = open_session(d.connect())
    try:
        assert c.cmd("MAIL FROM:<admin@nic.example>")[0] == 250
        assert c.cmd(f"RCPT TO:<postmaster@{DOMAIN}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(message("in-flight") + b".\r\n")
        d.wait_for("spooling")
        os.kill(appender, signal.SIGKILL)
        code, text = c.reply()
    finally:
        c.close()
    assert (code, text[:9]) == (451, "451 4.3.0"), text
    restarted = d.wait_for("spool appender process exited, restarting")
    assert restarted["level"] == "error"
    d.wait_count("appender ready", 2)
    qid = queue_id(deliver(d, message("after-appender-restart")))
    d.wait_processed(qid)
    assert d.alive


def test_a_stuck_spool_appender_answers_451_after_the_commit_timeout(start_daemon) -> None:
    import os
    import signal

    d = start_daemon({"storage.commit_timeout": 1.0})
    appender = d.wait_for("appender ready")["pid"]
    os.kill(appender, signal.SIGSTOP)
    try:
        code, text = deliver(d, message("stuck"))
    finally:
        os.kill(appender, signal.SIGCONT)
    assert (code, text[:9]) == (451, "451 4.3.0"), text
    # Going on, the appender commits what it had; the next message is stored at once.
    queue_id(deliver(d, message("after-stuck")))
    assert d.alive


def test_the_worker_runs_only_when_there_is_work(start_daemon) -> None:
    d = start_daemon({"worker.max_idle": 1.0, "worker.processes": 2})
    d.wait_for("appender ready")
    assert d.events("worker ready") == []  # an empty spool: no worker in memory
    qid = queue_id(deliver(d, message("wakes-the-worker")))
    d.worker_ready(slot=0)
    d.worker_ready(slot=1)  # mail wakes every slot
    d.wait_processed(qid)
    # Nothing left to do: each exits on its own, cleanly, and the daemon says so at info.
    for slot in (0, 1):
        idle = d.wait_for("worker idle, exiting", lambda r, k=slot: r.get("slot") == k)
        assert idle["idle_for"] >= 1.0
        exited = d.wait_for("worker process exited idle", lambda r, k=slot: r.get("slot") == k)
        assert exited["level"] == "info"
    assert d.events("worker process exited, restarting") == []
    assert d.worker_pids() == []
    # The next message starts them again.
    qid2 = queue_id(deliver(d, message("wakes-it-again")))
    d.worker_ready(slot=0, n=2)
    d.worker_ready(slot=1, n=2)
    d.wait_processed(qid2)


def test_work_made_due_while_no_worker_runs_starts_one(start_daemon) -> None:
    import subprocess
    import sys

    d = start_daemon({"worker.max_idle": 1.0, "worker.processes": 2})
    two_froms = (b"From: a@nic.example\r\nFrom: b@nic.example\r\nSubject: x\r\n"
                 b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\nhello\r\n")
    # To help@: postmaster@ keeps even a malformed message for a person, rejecting nothing.
    qid = queue_id(deliver(d, two_froms, rcpt=f"help@{DOMAIN}"))
    d.wait_processed(qid)
    assert d.query("SELECT status FROM spool WHERE queue_id = ?", (qid,)) == [("rejected",)]
    d.wait_count("worker process exited idle", 2)  # both slots
    # The operator re-queues it from the command line: no wake byte, only the database says.
    cli = subprocess.run([sys.executable, "-m", "tldops_mta", "spool", "retry", qid,
                          "--state-dir", str(d.state_dir)], capture_output=True, text=True,
                         check=False)
    assert cli.returncode == 0, cli.stderr
    d.wait_count("worker ready", 3)  # slot 0 sees it due (every slot looks at the spool)
    d.wait_count("message processed", 2)
    assert d.query("SELECT status FROM spool WHERE queue_id = ?", (qid,)) == [("rejected",)]
