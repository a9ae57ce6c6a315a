"""The tldops command: configuration checks, migrations, spool inspection, exit codes."""

from __future__ import annotations

import json
import smtplib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_proc import DOMAIN, DaemonProc, write_config
from smtp_raw import message

from tldops_mta.settings import config
from tldops_mta.store import storage

ROOT = Path(__file__).resolve().parent.parent


def tldops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def test_version_and_help_on_every_command() -> None:
    r = tldops("--version")
    assert r.returncode == 0 and r.stdout.startswith("tldops-mta ")
    for cmd in (["serve"], ["config", "check"], ["config", "show"], ["config", "docs"],
                ["db", "migrate"], ["spool", "list"], ["spool", "show"], ["spool", "retry"],
                ["iana", "show"], ["queue", "list"], ["queue", "show"], ["worker"]):
        r = tldops(*cmd, "--help")
        assert r.returncode == 0, cmd
        assert "usage: tldops" in r.stdout
        assert "--config" in r.stdout and "--state-dir" in r.stdout, cmd


def test_config_check_names_every_bad_key_and_what_is_allowed(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[server]\nmax_recipients = 0\nlisten = ["nowhere"]\ncolour = "blue"\n'
                 '[storage]\nbusy_timeout_ms = "soon"\n[extra]\nx = 1\n')
    r = tldops("config", "check", "--config", str(f))
    assert r.returncode == 1
    err = r.stderr
    assert "server.max_recipients: 0 is not allowed; expected an integer from 1 to 1000" in err
    assert "server.listen:" in err and "HOST:PORT" in err
    assert "server.colour: unknown key" in err
    assert "storage.busy_timeout_ms: 'soon' is not allowed" in err
    assert "extra: unknown section" in err
    r = tldops("config", "check", "--config", str(f), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["ok"] is False and len(doc["problems"]) == 5


def test_config_check_accepts_a_good_file_and_rejects_broken_toml(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.toml", {"server.max_recipients": 5})
    assert tldops("config", "check", "--config", str(good)).returncode == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    r = tldops("config", "check", "--config", str(broken))
    assert r.returncode == 1 and "not valid TOML" in r.stderr
    r = tldops("config", "check", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_config_show_json_is_the_effective_configuration(tmp_path: Path) -> None:
    f = write_config(tmp_path / "c.toml", {"server.max_recipients": 7})
    r = tldops("config", "show", "--json", "--config", str(f), "--state-dir", "/srv/x")
    shown = json.loads(r.stdout)
    assert shown["server"]["max_recipients"] == 7
    assert shown["storage"]["state_dir"] == "/srv/x"
    assert shown["server"]["domain"] == "tld-ops.localhost"
    assert set(shown) == set(config.SECTIONS)


def test_docs_list_every_key_as_generated() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == config.render_docs(), "regenerate: tldops config docs > docs/configuration.md"
    for k in config.SCHEMA:
        assert f"`{k.name}`" in text


def test_serve_flags_override_the_file(tmp_path: Path) -> None:
    f = write_config(tmp_path / "c.toml", {"server.listen": ["127.0.0.1:1"], "log.level": "info"})
    d = DaemonProc(tmp_path, {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tldops_mta", "serve", "--config", str(f), "--listen", "127.0.0.1:0",
         "--listen", "[::1]:0", "--domain", "ops.example", "--state-dir", str(tmp_path / "st")],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        assert ready["domain"] == "ops.example"
        assert ready["database"] == str(tmp_path / "st" / "tldops.sqlite3")
        assert len(ready["listening"]) == 2
        assert ready["listening"][1].startswith("[::1]:")
        d.addresses = ready["listening"]
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("c.test")
            s.mail("a@nic.example")
            assert s.rcpt("requests@ops.example")[0] == 250
            assert s.rcpt(f"requests@{DOMAIN}")[0] == 550
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_db_migrate_then_refuse_a_newer_schema(tmp_path: Path) -> None:
    r = tldops("db", "migrate", "--state-dir", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["applied"] == list(range(1, storage.latest_version() + 1))
    r = tldops("db", "migrate", "--state-dir", str(tmp_path))
    assert r.returncode == 0 and "up to date" in r.stdout
    conn = sqlite3.connect(tmp_path / "tldops.sqlite3")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    for cmd in (["db", "migrate"], ["spool", "list"], ["serve", "--listen", "127.0.0.1:0"]):
        r = tldops(*cmd, "--state-dir", str(tmp_path))
        assert r.returncode == 1, cmd
        assert "schema is version 999" in r.stderr and "knows up to" in r.stderr, r.stderr


def test_spool_commands_without_a_database_say_what_to_do(tmp_path: Path) -> None:
    r = tldops("spool", "list", "--state-dir", str(tmp_path / "none"))
    assert r.returncode == 1
    assert "no database" in r.stderr and "tldops db migrate" in r.stderr


def test_serve_on_a_port_in_use_fails_clearly(daemon: DaemonProc, tmp_path: Path) -> None:
    r = tldops("serve", "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{daemon.port}")
    assert r.returncode == 1
    assert "address already in use" in r.stderr.lower()


def test_spool_list_show_retry(daemon: DaemonProc) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as s:
        s.ehlo("c.test")
        s.sendmail("admin@nic.example", [f"postmaster@{DOMAIN}"], message("cli-good"))
        s.sendmail("admin@nic.example", [f"who@{DOMAIN}"], b"Subject: no from\r\n\r\nx\r\n")
    rows = daemon.query("SELECT queue_id FROM spool ORDER BY id")
    good, bad = rows[0][0], rows[1][0]
    daemon.wait_processed(bad)
    sd = ["--state-dir", str(daemon.state_dir)]

    r = tldops("spool", "list", *sd)
    assert r.returncode == 0
    assert good in r.stdout and bad in r.stdout and "rejected" in r.stdout

    r = tldops("spool", "list", "--status", "rejected", "--json", *sd)
    listed = json.loads(r.stdout)
    assert [e["queue_id"] for e in listed] == [bad]
    assert listed[0]["reason"].startswith("the message must have exactly one From:")

    r = tldops("spool", "show", good, *sd)
    assert r.returncode == 0
    assert "status:      done" in r.stdout
    assert "Subject: cli-good" in r.stdout
    assert "received" in r.stdout and "processing" in r.stdout

    r = tldops("spool", "show", good, "--json", *sd)
    shown = json.loads(r.stdout)
    assert shown["queue_id"] == good and [e["status"] for e in shown["events"]] == [
        "received", "processing", "done"]

    r = subprocess.run([sys.executable, "-m", "tldops_mta", "spool", "show", good, "--raw", *sd],
                       capture_output=True, timeout=60)
    assert r.stdout == message("cli-good")

    assert tldops("spool", "show", "NOPE", *sd).returncode == 1
    assert tldops("spool", "retry", good, *sd).returncode == 1  # done is not retried

    mark = daemon.mark()
    r = tldops("spool", "retry", bad, *sd)
    assert r.returncode == 0, r.stderr
    # The worker finds re-queued mail on its own (it polls when idle).
    daemon.wait_for("message processed", lambda e: e.get("queue_id") == bad, after=mark)
    assert daemon.query("SELECT status, attempts FROM spool WHERE queue_id = ?", (bad,)) == [
        ("rejected", 2)]  # the operator's retry was one more attempt


@pytest.mark.parametrize("cmd", [["spool", "list"], ["config", "show"]])
def test_commands_take_state_dir_and_config(tmp_path: Path, cmd: list[str]) -> None:
    f = write_config(tmp_path / "c.toml", {"storage.state_dir": str(tmp_path / "from-file")})
    r = tldops(*cmd, "--config", str(f), "--json")
    if cmd[0] == "spool":
        assert r.returncode == 1 and str(tmp_path / "from-file") in r.stderr
    else:
        assert json.loads(r.stdout)["storage"]["state_dir"] == str(tmp_path / "from-file")
