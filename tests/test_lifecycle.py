"""SIGTERM lets DATA finish and exits 0; SIGHUP reloads, keeping the old config if the new is bad."""

from __future__ import annotations

import signal
import socket

import pytest
from daemon_proc import DOMAIN, write_config
from smtp_raw import message, open_session


def test_sigterm_lets_data_finish_then_exits_zero(start_daemon) -> None:
    d = start_daemon()
    busy = open_session(d.connect())
    idle = open_session(d.connect())
    assert busy.cmd("MAIL FROM:<admin@nic.example>")[0] == 250
    assert busy.cmd(f"RCPT TO:<requests@{DOMAIN}>")[0] == 250
    assert busy.cmd("DATA")[0] == 354
    data = message("during-shutdown")
    busy.send(data[:40])  # half the message is in flight when the signal comes
    d.signal(signal.SIGTERM)
    d.wait_for("stopping")
    # The idle session is told why it is closed.
    code, text = idle.reply()
    assert (code, text[:9]) == (421, "421 4.3.2")
    assert idle.closed()
    # The session in DATA completes and gets its 250, then is closed.
    busy.send(data[40:] + b".\r\n")
    code, text = busy.reply()
    assert code == 250, text
    code, text = busy.reply()
    assert (code, text[:9]) == (421, "421 4.3.2")
    assert d.proc.wait(20) == 0
    qid = d.query("SELECT queue_id FROM spool")
    assert len(qid) == 1
    stopped = d.events("stopped")
    assert stopped, "clean shutdown logs 'stopped' after closing the database"
    with pytest.raises(OSError):
        socket.create_connection((d.host, d.port), timeout=2)


def test_sigterm_grace_is_bounded(start_daemon) -> None:
    d = start_daemon({"server.shutdown_grace": 0.5})
    stuck = open_session(d.connect())
    stuck.cmd("MAIL FROM:<admin@nic.example>")
    stuck.cmd(f"RCPT TO:<requests@{DOMAIN}>")
    assert stuck.cmd("DATA")[0] == 354
    stuck.send(b"Subject: never finished\r\n")
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    code, text = stuck.reply()
    assert (code, text[:9]) == (421, "421 4.3.2")
    assert d.query("SELECT count(*) FROM spool") == [(0,)]


def test_sighup_applies_a_valid_config(start_daemon) -> None:
    d = start_daemon()
    c = open_session(d.connect())
    c.cmd("MAIL FROM:<admin@nic.example>")
    assert c.cmd(f"RCPT TO:<requests@{DOMAIN}>")[0] == 250
    assert c.cmd(f"RCPT TO:<who@{DOMAIN}>")[0] == 250
    c.close()
    write_config(d.config_path, {**d.settings, "server.max_recipients": 1})
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_for("reloaded", after=mark)
    c = open_session(d.connect())
    c.cmd("MAIL FROM:<admin@nic.example>")
    assert c.cmd(f"RCPT TO:<requests@{DOMAIN}>")[0] == 250
    code, text = c.cmd(f"RCPT TO:<who@{DOMAIN}>")
    assert (code, text[:9]) == (452, "452 4.5.3")
    c.close()


@pytest.mark.parametrize(("bad", "said"), [
    ("[server]\nmax_recipients = 0\n", "server.max_recipients: 0 is not allowed; expected an integer"),
    ("[server\nmax_recipients = 3\n", "not valid TOML"),
    ("[nonsense]\nx = 1\n", "nonsense: unknown section"),
])
def test_sighup_with_a_bad_config_keeps_the_running_one(start_daemon, bad: str, said: str) -> None:
    d = start_daemon({"server.max_recipients": 1})
    d.config_path.write_text(bad)
    mark = d.mark()
    d.signal(signal.SIGHUP)
    refused = d.wait_for("reload refused, keeping the running configuration", after=mark)
    assert refused["level"] == "error"
    # The problems in words, as 'config check' says them: no Python list or object repr.
    assert said in refused["problems"] and not refused["problems"].startswith("["), refused["problems"]
    assert "Problem(" not in refused["problems"]
    assert d.alive
    c = open_session(d.connect())
    c.cmd("MAIL FROM:<admin@nic.example>")
    assert c.cmd(f"RCPT TO:<requests@{DOMAIN}>")[0] == 250
    assert c.cmd(f"RCPT TO:<who@{DOMAIN}>")[0] == 452  # still the old limit of 1


def test_sighup_with_bad_rules_keeps_the_running_config(start_daemon) -> None:
    d = start_daemon({"server.max_recipients": 1})
    write_config(d.config_path, {**d.settings, "server.max_recipients": 5})
    rules_dir = d.workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "roster.toml").write_text("this is = = not toml")
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_for("reload refused, keeping the running configuration", after=mark)
    c = open_session(d.connect())
    c.cmd("MAIL FROM:<admin@nic.example>")
    assert c.cmd(f"RCPT TO:<requests@{DOMAIN}>")[0] == 250
    assert c.cmd(f"RCPT TO:<who@{DOMAIN}>")[0] == 452


def test_the_cli_wakes_only_a_tldops_daemon_through_the_pid_file(tmp_path) -> None:
    import subprocess as sp
    import sys as _sys

    from tldops_mta.daemon.pid_files import PID_FILE, wake

    # A stale pid file naming some other process: SIGUSR1 would kill it, so it is left alone.
    other = sp.Popen([_sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / PID_FILE).write_text(f"{other.pid}\n")
        assert wake(tmp_path) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    assert wake(tmp_path / "nowhere") is False


def test_the_pid_file_names_the_running_daemon_and_goes_with_it(start_daemon) -> None:
    from tldops_mta.daemon.pid_files import PID_FILE

    d = start_daemon()
    pid_file = d.state_dir / PID_FILE
    assert int(pid_file.read_text()) == d.proc.pid
    assert d.stop() == 0
    assert not pid_file.exists()
