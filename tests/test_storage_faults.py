"""Storage faults: the state directory on a filesystem that fills up.

A real full disk, not SQLite's page limit: the state directory lives on a small tmpfs
the test mounts, and a filler file takes the last byte. Intake must answer 452 4.3.1, the
worker and the outbox must wait, nothing may be corrupted, and everything must resume on
its own, without a restart, once the filler is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from crash_safety import one, quiet, wait_until
from daemon_proc import DOMAIN, DaemonProc

RCPT = f"help@{DOMAIN}"


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs for the test (root needed): {r.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """A file that takes every free block of ``directory``'s filesystem."""
    filler = directory / "filler"
    block = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler


def send(d: DaemonProc, n: int, body_kb: int = 8) -> tuple[int, str]:
    sender = f"sender{n}@nic.example"
    msg = (f"From: {sender}\r\nTo: {RCPT}\r\nSubject: help {n}\r\nMessage-ID: <m{n}@nic.example>\r\n\r\n"
           + ("x" * 70 + "\r\n") * (body_kb * 1024 // 72)).encode()
    with smtplib.SMTP(d.host, d.port, timeout=20) as s:
        s.ehlo("client.example")
        s.mail(sender)
        s.rcpt(RCPT)
        code, text = s.data(msg)
    return code, text.decode()


def test_a_full_disk_answers_452_corrupts_nothing_and_recovers_on_its_own(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "16m") as fs:
        d = DaemonProc(fs, {"worker.retry_base": 0.2, "log.level": "info"})
        d.start()
        try:
            for n in range(5):  # before: help@ answers each sender with the form
                assert send(d, n)[0] == 250
            wait_until("the first mail answered", lambda: quiet(d))

            filler = fill(fs)
            results = [send(d, n) for n in range(5, 45)]
            full = [text for code, text in results if code != 250]
            assert full, "the full filesystem never refused a message"
            assert all(text.startswith("4.3.1") for text in full), full  # 452 4.3.1, never 5xx
            assert {code for code, _ in results} <= {250, 452}
            accepted = [text.rsplit(" ", 1)[1] for code, text in results if code == 250]
            assert d.alive
            assert d.query("PRAGMA integrity_check") == [("ok",)]

            filler.unlink()  # space is back: no restart, no command
            code, text = send(d, 99)
            assert code == 250, text
            wait_until("every message processed and every answer delivered", lambda: quiet(d), timeout=60)
            stored = dict(d.query("SELECT queue_id, status FROM spool"))
            lost = [q for q in accepted if stored.get(q) != "done"]
            assert not lost, f"acknowledged on a full disk, then lost: {lost}"
            assert one(d, "SELECT count(*) FROM spool") == 5 + len(accepted) + 1
            assert d.query("SELECT status, count(*) FROM outbox_deliveries GROUP BY status") == \
                [("sent", 5 + len(accepted) + 1)]
            assert len(list((d.state_dir / "outgoing").glob("*.eml"))) == 5 + len(accepted) + 1
            assert d.query("PRAGMA integrity_check") == [("ok",)]
            assert d.stop() == 0
        finally:
            if d.alive:
                d.kill_all()


def test_outgoing_mail_on_a_full_disk_waits_and_is_written_once_space_returns(tmp_path: Path) -> None:
    """The outbox directory on a filesystem of its own that is full: each answer's delivery
    is deferred (never marked sent, never dropped) and written once space returns."""
    d = DaemonProc(tmp_path, {"worker.retry_base": 0.2, "log.level": "info"})
    outgoing = d.state_dir / "outgoing"
    outgoing.parent.mkdir(parents=True)
    with tmpfs(outgoing, "1m"):
        filler = fill(outgoing)
        d.start()
        try:
            codes = [send(d, n)[0] for n in range(3)]
            assert codes == [250] * 3
            d.wait_count("delivery deferred", 3, timeout=30)
            assert one(d, "SELECT count(*) FROM outbox_deliveries WHERE status = 'sent'") == 0
            assert list(outgoing.glob("*.eml")) == [] and not list(outgoing.glob(".*"))  # no half file
            filler.unlink()
            wait_until("the answers written", lambda: quiet(d), timeout=60)
            assert d.query("SELECT status, count(*) FROM outbox_deliveries GROUP BY status") == [("sent", 3)]
            assert len(list(outgoing.glob("*.eml"))) == 3
        finally:
            if d.alive:
                d.kill_all()


def test_a_delivery_whose_file_cannot_be_written_waits_and_the_others_go(tmp_path: Path) -> None:
    """Deliveries are written as files a batch at a time: one that fails (here its name is
    taken by a directory) is deferred alone, the others of its batch are written and marked
    sent, and it follows once the name is free. Needs no root: no filesystem is mounted."""
    d = DaemonProc(tmp_path, {"worker.retry_base": 0.2, "log.level": "info"})
    outgoing = d.state_dir / "outgoing"
    # A fresh database numbers the answers 1, 2, 3 in the order the questions arrive
    # (outbox message id, then delivery id): the second answer's file name is known.
    blocked = outgoing / "00000002-00000002-sender1@nic.example.eml"
    blocked.mkdir(parents=True)
    d.start()
    try:
        assert [send(d, n, body_kb=1)[0] for n in range(3)] == [250] * 3
        d.wait_count("delivery deferred", 1, timeout=30)
        wait_until("the other answers sent",
                   lambda: one(d, "SELECT count(*) FROM outbox_deliveries WHERE status = 'sent'") == 2,
                   timeout=30)
        assert sorted(p.name for p in outgoing.glob("*.eml") if p.is_file()) == [
            "00000001-00000001-sender0@nic.example.eml", "00000003-00000003-sender2@nic.example.eml"]
        assert one(d, "SELECT count(*) FROM outbox_deliveries WHERE status = 'queued'"
                      " AND last_error LIKE '%Is a directory%'") == 1
        blocked.rmdir()
        wait_until("the last answer written", lambda: quiet(d), timeout=60)
        assert d.query("SELECT status, count(*) FROM outbox_deliveries GROUP BY status") == [("sent", 3)]
        assert blocked.is_file() and not list(outgoing.glob(".*"))
        assert d.stop() == 0
    finally:
        if d.alive:
            d.kill_all()
