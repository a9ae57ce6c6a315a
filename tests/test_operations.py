"""Backups, restores, the nightly housekeeping (retention purge, monthly statistics) and one
person's data (export, erasure), against the real daemon and its real database."""

from __future__ import annotations

import email
import json
import re
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from auth_env import form, now_date
from crash_safety import quiet, wait_until
from daemon_proc import DOMAIN, DaemonProc
from smtp_checks import deliver, spool_count
from smtp_raw import message
from test_workflow import JANE, JOHN, flow, subscribed

from tldops_mta.store import storage


def tldops(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config", str(d.config_path)],
                          capture_output=True, text=True, timeout=60)


def count_in(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


# -- backup and restore ----------------------------------------------------------------------


def test_backup_while_running_then_restore_after_stop(start_daemon: Callable[..., DaemonProc],
                                                      tmp_path: Path) -> None:
    d = start_daemon()
    first = deliver(d, "before the backup")
    backup = tmp_path / "tldops-backup.sqlite3"
    r = tldops(d, "backup", str(backup), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["schema_version"] == storage.latest_version() and info["size"] > 0
    conn = sqlite3.connect(backup)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT queue_id FROM spool").fetchall() == [(first,)]
    conn.close()
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left"

    again = tldops(d, "backup", str(backup))
    assert again.returncode == 1 and "exists" in again.stderr  # never overwritten
    nowhere = tldops(d, "backup", str(tmp_path / "missing" / "b.sqlite3"))
    assert nowhere.returncode == 1 and "is not a directory: create it first" in nowhere.stderr

    later = deliver(d, "after the backup")
    refused = tldops(d, "restore", str(backup))
    assert refused.returncode == 1 and "the daemon is running" in refused.stderr
    assert spool_count(d) == 2  # nothing changed

    assert d.stop() == 0
    r = tldops(d, "restore", str(backup))
    assert r.returncode == 0, r.stderr
    assert f"restored {backup}" in r.stdout
    d.start()
    ids = {q for (q,) in d.query("SELECT queue_id FROM spool")}
    assert ids == {first} and later not in ids
    deliver(d, "after the restore")  # and it serves


def test_restore_refuses_a_newer_schema_and_a_file_that_is_no_backup(
        start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d = start_daemon()
    qid = deliver(d, "kept")
    backup = tmp_path / "b.sqlite3"
    assert tldops(d, "backup", str(backup)).returncode == 0
    d.stop()
    conn = sqlite3.connect(backup)
    conn.execute(f"PRAGMA user_version = {storage.latest_version() + 1}")
    conn.close()
    r = tldops(d, "restore", str(backup))
    assert r.returncode == 1 and f"schema version {storage.latest_version() + 1}" in r.stderr
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    r = tldops(d, "restore", str(junk))
    assert r.returncode == 1 and "not a tldops-mta backup" in r.stderr
    d.start()
    assert d.query("SELECT queue_id FROM spool") == [(qid,)]  # the database was left alone


# -- housekeeping -----------------------------------------------------------------------------


def test_nightly_purge_removes_old_octets_and_keeps_the_history(
        start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon({"housekeeping.hour": 0, "storage.retention_days": 90,
                      "validation.validators": ["v@validators.example"],
                      "validation.committee": "committee@validators.example"})
    for subject in ("help-old", "help-new"):  # two senders: help@ answers each once a day
        sender = f"{subject}@nic.example"
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            assert s.sendmail(sender, [f"help@{DOMAIN}"],
                              message(subject, sender=sender, to=f"help@{DOMAIN}")) == {}
    queue_ids = [q for (q,) in d.query("SELECT queue_id FROM spool ORDER BY id")]
    for q in queue_ids:
        d.wait_processed(q)
    d.wait_count("mail delivered", 2)
    hundred_days = time.time() - 100 * 86400
    d.execute("UPDATE spool SET received_at = ? WHERE queue_id = ?", (hundred_days, queue_ids[0]))
    d.execute("UPDATE outbox_messages SET created_at = ? WHERE id = (SELECT min(id) FROM outbox_messages)",
            (hundred_days,))
    mark = d.mark()
    d.execute("DELETE FROM housekeeping_runs")  # as if last night's run were due now
    done = d.wait_for("housekeeping done", after=mark, timeout=30)
    assert done["spool_raw_purged"] == 1 and done["outbox_raw_purged"] == 1
    assert done["monthly_stats_mailed"] is True

    # The history stays; the octets are gone; it cannot be processed again.
    shown = tldops(d, "spool", "show", queue_ids[0])
    assert shown.returncode == 0 and "status:      done" in shown.stdout
    assert "octets removed (storage.retention_days" in shown.stdout
    assert d.query("SELECT count(*) FROM spool_messages WHERE id = (SELECT id FROM spool WHERE queue_id = ?)",
                   (queue_ids[0],)) == [(0,)]
    assert d.query("SELECT count(*) FROM spool_messages WHERE id = (SELECT id FROM spool WHERE queue_id = ?)",
                   (queue_ids[1],)) == [(1,)]
    assert d.query("SELECT length(raw) FROM outbox_messages ORDER BY id LIMIT 1") == [(0,)]
    d.execute("UPDATE spool SET status = 'failed' WHERE queue_id = ?", (queue_ids[0],))
    retried = tldops(d, "spool", "retry", queue_ids[0])
    assert retried.returncode != 0 and "cannot be processed again" in retried.stderr
    assert d.query("SELECT status FROM spool WHERE queue_id = ?", (queue_ids[0],)) == [("failed",)]

    # The monthly statistics went to the Validators and the Standing Committee, once.
    d.wait_count("mail delivered", 4)
    outgoing = sorted((d.state_dir / "outgoing").glob("*.eml"))
    stats_mails = [email.message_from_bytes(p.read_bytes()) for p in outgoing
                   if b"Subscription statistics" in p.read_bytes()]
    assert sorted(str(m["To"]) for m in stats_mails) == ["committee@validators.example",
                                                         "v@validators.example"]
    body = stats_mails[0].get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "Non-subscribed ccTLDs per region" in body and "date,kind,region" in body
    mark = d.mark()
    d.execute("DELETE FROM housekeeping_runs")  # another night, the same month
    again = d.wait_for("housekeeping done", after=mark, timeout=30)
    assert again["monthly_stats_mailed"] is False


def test_a_new_database_does_not_run_housekeeping_at_its_first_start(daemon: DaemonProc) -> None:
    assert daemon.query("SELECT count(*) FROM housekeeping_runs WHERE day = date('now')") == [(1,)]
    assert not daemon.events("housekeeping done")


# -- one person's data ------------------------------------------------------------------------


def all_text(db: Path) -> str:
    """Every value of every table, as text (blobs decoded), to search for a person."""
    conn = sqlite3.connect(db)
    out = []
    try:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in conn.execute(f"SELECT * FROM {table}"):
                for v in row:
                    out.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
    finally:
        conn.close()
    return "\n".join(out)


def test_person_export_then_erase_leaves_no_trace_but_the_audit(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        jane = JANE[4]
        # Jane has also written to the list: her post and its copies are hers too.
        post = (f"From: Jane Doe <{jane}>\r\nTo: list@{DOMAIN}\r\nSubject: hello all\r\n"
                f"Date: {now_date()}\r\nMessage-ID: <post-{time.time_ns()}@nic.org.mt>\r\n\r\n"
                "Jane here.\r\n").encode()
        assert f.env.processed(f.env.send(f.env.signed(post), mail_from=jane,
                                          rcpts=(f"list@{DOMAIN}",)))[0] == "done"
        f.mail_to(JOHN[4], "hello all")
        wait_until("every copy delivered", lambda: quiet(f.d))
        found = json.loads(f.tldops("person", "export", jane, "--json").stdout)
        assert [p["tlp"] for p in found["list_posts"]] == ["TLP:RED"]
        mine = [(r["tld"], r["first_name"], r["phone"]) for r in found["roster"]]
        assert mine == [("mt", "Jane", "+35621334455")]
        assert found["outbox_deliveries"] and all(m["status"] for m in found["outbox_deliveries"])
        changes = found["roster_changes"]
        assert changes and all(e["email"] == jane for c in changes for e in c["after"])  # only hers
        text = f.tldops("person", "export", jane)
        assert text.returncode == 0 and "roster:" in text.stdout

        events_before = f.d.query("SELECT count(*) FROM request_events")
        r = f.tldops("person", "erase", jane, "--reason", "asked to be forgotten", "--json")
        assert r.returncode == 0, r.stderr
        counts = json.loads(r.stdout)["counts"]
        assert counts["roster"] == 1 and counts["spool_messages"] >= 1

        assert [row[4] for row in f.roster()] == [JOHN[4]]
        everything = all_text(f.d.db_path)
        for trace in ("jane.doe", "Jane", "21334455", "2133 4455"):  # her phone, as stored and written
            assert trace not in everything, f"{trace!r} is still in the database"
        assert f.d.query("SELECT count(*) FROM request_events") == events_before
        with pytest.raises(sqlite3.IntegrityError):  # the audit log is append-only again
            f.d.execute("UPDATE request_events SET reason = 'x'")
        [(by, reason, counted)] = f.d.query("SELECT by, reason, counts FROM erasures")
        assert by.startswith("cli:") and reason == "asked to be forgotten"
        assert "jane" not in counted.lower()
        assert json.loads(f.tldops("person", "export", jane, "--json").stdout)["roster"] == []
        # The roster's history says an SSC was erased, keeping its shape for the code that reads it.
        last = f.d.query("SELECT before, after, by FROM roster_changes ORDER BY id DESC LIMIT 1")[0]
        assert last[2] == "erasure" and "[erased]" in last[0] and len(json.loads(last[1])) == 1
        # What reads the roster goes on: John is shown, Jane is not.
        shown = f.tldops("roster", "show")
        assert shown.returncode == 0 and "John" in shown.stdout and "Jane" not in shown.stdout


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_export_lists_exactly_what_erase_then_changes(tmp_path: Path) -> None:
    # Jane is on no roster yet: a request waiting for the Validator names her, and the
    # spooled request message and the Validator's mail mention her.
    with flow(tmp_path) as f:
        assert f.submit(form(sscs=(JANE, JOHN)))[0] == "done"
        wait_until("every mail delivered", lambda: quiet(f.d))
        jane = JANE[4]
        found = json.loads(f.tldops("person", "export", jane, "--json").stdout)
        listed = {kind: [row["id"] for row in rows] for kind, rows in found.items()
                  if kind != "address" and rows}
        [request] = found["requests"]
        assert request["as"] == ["in_change"] and ISO_UTC.fullmatch(request["created_at"])
        [message] = found["spool_messages"]
        assert message["as"] == ["in_message"] and ISO_UTC.fullmatch(message["received_at"])
        assert found["outbox_messages"]  # the Validator's mail shows her entry
        assert "roster" not in listed and "outbox_deliveries" not in listed  # nothing to her yet

        r = f.tldops("person", "erase", jane, "--reason", "asked", "--json")
        assert r.returncode == 0, r.stderr
        erased = json.loads(r.stdout)
        assert erased["ids"] == listed
        assert erased["counts"] == {kind: len(ids) for kind, ids in listed.items()}
        assert json.loads(f.d.query("SELECT counts FROM erasures")[0][0]) == erased["counts"]
        after = json.loads(f.tldops("person", "export", jane, "--json").stdout)
        assert not any(rows for kind, rows in after.items() if kind != "address")
        # In words, per kind as export names them (no '1 requests'): John is in the request too.
        plain = f.tldops("person", "erase", JOHN[4], "--reason", "asked")
        assert plain.returncode == 0 and plain.stdout.startswith("erased, rows per kind: "), plain
        assert "requests 1" in plain.stdout and "1 requests" not in plain.stdout, plain.stdout


def test_erase_is_refused_while_mail_naming_the_person_waits(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        f.d.stop()  # nothing processes: the message stays 'received'
        conn = storage.connect(f.d.db_path)
        conn.execute("INSERT INTO spool (queue_id, received_at, session_id, client_addr, mail_from, rcpt_to,"
                     " size, updated_at) VALUES ('Q1', 0, 's', '127.0.0.1', 'x@y.example', '[]', 10, 0)")
        conn.execute("INSERT INTO spool_messages (id, raw) VALUES (last_insert_rowid(), ?)",
                     (b"From: jane.doe@nic.org.mt\r\n\r\nhi\r\n",))
        conn.close()
        r = f.tldops("person", "erase", JANE[4], "--reason", "test")
        assert r.returncode == 1 and "still being processed" in r.stderr
        assert count_in(f.d.db_path, "SELECT count(*) FROM erasures") == 0
