"""Personal data at rest: whatever umask the daemon and the CLI are started under, the state
directory and every directory in it are 0700, every file the daemon or the CLI writes there
or as a backup is 0600, and a state made with looser modes is tightened at start, said so."""

from __future__ import annotations

import os
import smtplib
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from daemon_proc import DOMAIN, DaemonProc

UMASK_022 = ["sh", "-c", 'umask 022 && exec "$@"', "sh"]
"""Run a command under umask 022, the common default outside systemd."""

ADDRESS = "jane@nic.example"


def tldops(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UMASK_022, sys.executable, "-m", "tldops_mta", *args, "--config",
                           str(d.config_path)], capture_output=True, text=True, timeout=60)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def modes_under(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself included, as ".") and its permission bits."""
    found = {".": mode(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            found[str(p.relative_to(root))] = mode(p)
    return found


def loose(root: Path) -> dict[str, str]:
    """The paths under ``root`` that are not private: directories other than 0700, files other
    than 0600 (as octal strings, for a readable failure)."""
    return {rel: f"{m:04o}" for rel, m in modes_under(root).items()
            if m != (0o700 if (root / rel).is_dir() else 0o600)}


def ask_for_help(d: DaemonProc) -> None:
    raw = (f"From: Jane <{ADDRESS}>\r\nTo: help@{DOMAIN}\r\nSubject: help\r\n"
           f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\nHow do I subscribe?\r\n")
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("mail.example.net")
        s.mail(ADDRESS)
        assert s.rcpt(f"help@{DOMAIN}")[0] == 250
        code, text = s.data(raw.encode())
    assert code == 250, text
    d.wait_processed(text.decode().rsplit(" ", 1)[1])
    d.wait_for("mail delivered")


def test_everything_the_daemon_and_the_cli_write_is_private_under_umask_022(
        start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d = start_daemon(wrapper=UMASK_022)
    ask_for_help(d)  # the help answer goes to state/outgoing/
    backup = tmp_path / "elsewhere" / "nightly.sqlite"
    backup.parent.mkdir()
    for args in (["backup", str(backup)], ["backup", str(d.state_dir / "in-state.sqlite")],
                 ["person", "export", ADDRESS], ["status"], ["db", "migrate"]):
        r = tldops(d, *args)
        assert r.returncode == 0, (args, r.stderr)
    present = modes_under(d.state_dir)
    # Each kind of file is there to be judged: the database with its WAL and shared memory,
    # outgoing mail, the worker's metrics files, the pid file, a backup made inside.
    for rel in ("tldops.sqlite3", "tldops.sqlite3-wal", "tldops.sqlite3-shm", "outgoing",
                "metrics", "tldops.pid", "in-state.sqlite"):
        assert rel in present, (rel, sorted(present))
    assert any(rel.startswith("outgoing/") and rel.endswith(".eml") for rel in present)
    assert any(rel.startswith("metrics/") and rel.endswith(".db") for rel in present)
    assert loose(d.state_dir) == {}
    assert mode(backup) == 0o600
    assert d.stop() == 0
    assert loose(d.state_dir) == {}


def loose_state(d: DaemonProc) -> None:
    """A state made under umask 022 (or by an older version): a world-readable database and
    outgoing mail whose file name holds an address."""
    r = tldops(d, "db", "migrate")
    assert r.returncode == 0, r.stderr
    outgoing = d.state_dir / "outgoing"
    outgoing.mkdir(exist_ok=True)
    (outgoing / f"00000001-00000001-{ADDRESS}.eml").write_bytes(b"To: jane\r\n\r\nroster\r\n")
    for p, m in ((d.state_dir, 0o755), (d.db_path, 0o644), (outgoing, 0o755),
                 (outgoing / f"00000001-00000001-{ADDRESS}.eml", 0o644)):
        os.chmod(p, m)
    assert len(loose(d.state_dir)) == 4


def test_serve_tightens_a_loose_state_and_logs_what_it_changed(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    d = DaemonProc(tmp_path / "d", wrapper=UMASK_022)
    loose_state(d)
    d.start()
    try:
        line = d.wait_for("permissions tightened")
        assert line["level"] == "warning"
        changed = {(c["path"], c["old_mode"], c["new_mode"]) for c in line["tightened"]}
        assert (str(d.state_dir), "0755", "0700") in changed
        assert (str(d.db_path), "0644", "0600") in changed
        assert (str(d.state_dir / "outgoing"), "0755", "0700") in changed
        assert line["count"] == 4 == len(changed)
        # The mail's file name holds an address: the log line shows it redacted.
        assert not any(ADDRESS in raw for raw in d.raw_lines)
        assert loose(d.state_dir) == {}
    finally:
        assert d.stop() == 0


def test_a_cli_command_tightens_a_loose_state_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    d = DaemonProc(tmp_path / "d")
    loose_state(d)
    r = tldops(d, "spool", "list")
    assert r.returncode == 0, r.stderr
    said = r.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith("tldops: made private (4 paths): "), r.stderr
    assert f"{d.state_dir} 0755 -> 0700" in said[0] and f"{d.db_path} 0644 -> 0600" in said[0]
    assert ADDRESS not in r.stderr
    assert loose(d.state_dir) == {}
    # Already private: nothing to say the next time.
    r = tldops(d, "spool", "list")
    assert r.returncode == 0 and r.stderr == ""


def test_a_restored_database_is_private(start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    d = start_daemon(wrapper=UMASK_022)
    backup = tmp_path / "b.sqlite"
    assert tldops(d, "backup", str(backup)).returncode == 0
    assert d.stop() == 0
    os.chmod(backup, 0o644)  # copied around by the operator
    r = tldops(d, "restore", str(backup))
    assert r.returncode == 0, r.stderr
    assert mode(d.db_path) == 0o600
    assert loose(d.state_dir) == {}


def test_the_systemd_unit_makes_the_state_directory_private_too() -> None:
    from test_systemd import UNITS, unit_settings

    s = unit_settings(UNITS / "tldops-mta.service")
    assert s["StateDirectoryMode"] == ["0700"] and s["UMask"] == ["0077"]
