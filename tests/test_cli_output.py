"""What the tldops command prints: its answer alone on stdout, warnings and errors on stderr
(errors as one line ``tldops: ...``), counts in words that agree with them, and a stop with
the cause when IANA cannot be reached. Every command runs as a real subprocess."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from auth_env import ADMIN, AuthEnv, auth_daemon, request
from daemon_proc import DOMAIN, DaemonProc, write_config
from iana_servers import RdapServer, WhoisServer

from tldops_mta import __version__

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def tldops(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "tldops_mta", *args, "--config", str(config))


def log_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line but an error line must be a JSON log record; those records."""
    return [json.loads(line) for line in stderr.splitlines() if not line.startswith("tldops: ")]


def test_the_script_and_python_m_are_one_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"tldops": "tldops_mta.cli.main:main"}
    script = Path(sys.executable).with_name("tldops")
    for argv in ([str(script)], [sys.executable, "-m", "tldops_mta"]):
        r = run(*argv, "--version")
        assert (r.returncode, r.stdout, r.stderr) == (0, f"tldops-mta {__version__}\n", ""), argv
    # cli/main.py is a module, not a second entry point: run as a script it defines the commands
    # and stops (no half-defined command table, no NameError).
    r = run(sys.executable, "-m", "tldops_mta.cli.main", "stats")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.fixture
def iana(tmp_path: Path) -> Iterator[tuple[RdapServer, WhoisServer, Path]]:
    rdap, whois = RdapServer(), WhoisServer()
    config = write_config(tmp_path / "c.toml", {
        "storage.state_dir": str(tmp_path / "state"), "iana.rdap_url": rdap.url,
        "iana.whois_host": whois.host, "iana.whois_port": whois.port, "iana.timeout": 2.0})
    try:
        yield rdap, whois, config
    finally:
        rdap.stop()
        whois.stop()


def test_iana_show_prints_its_answer_and_only_warnings_besides(
        iana: tuple[RdapServer, WhoisServer, Path]) -> None:
    rdap, _whois, config = iana
    r = tldops(config, "iana", "show", "mt")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no httpx or lookup lines at info
    assert r.stdout.startswith("tld:         mt\nadmin:       admin@nic.org.mt\n"), r.stdout
    r = tldops(config, "iana", "show", "mt", "--refresh", "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout)["admin_email"] == "admin@nic.org.mt"
    # What goes wrong on the way is a warning: on stderr, as a log record; the answer
    # (from WHOIS now) stays alone on stdout.
    rdap.mode = "500"
    r = tldops(config, "iana", "show", "mt", "--refresh", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["source"] == "whois"
    records = log_lines(r.stderr)
    assert records and all(rec["level"] in ("warning", "error") for rec in records), r.stderr
    assert any(rec["source"] == "rdap" and rec["reason"] == "HTTP 500" for rec in records)


def test_invite_stops_after_three_failed_lookups_with_the_cause(tmp_path: Path) -> None:
    d = DaemonProc(tmp_path)  # not started: its configuration points IANA at a closed port
    assert tldops(d.config_path, "db", "migrate").returncode == 0
    r = tldops(d.config_path, "invite", "--dry-run")
    assert r.returncode == 1 and r.stdout == "", r.stdout[:500]
    *logged, last = r.stderr.splitlines()
    assert last.startswith("tldops: stopped: IANA could not be asked for 3 ccTLDs in a row (.ac, "), last
    assert "ConnectionRefusedError" in last and "0 invitations sent" in last, last
    records = [json.loads(line) for line in logged]
    assert all(rec["level"] in ("warning", "error") for rec in records)
    unavailable = [rec for rec in records if rec.get("outcome") == "unavailable"]
    assert len(unavailable) == 3, "asked IANA for more ccTLDs than it takes to see it is down"
    # The log has each reason whole (the address and port it could not reach).
    assert all("Connect call failed ('127.0.0.1', 9)" in str(rec["reason"]) for rec in unavailable)
    assert d.query("SELECT count(*) FROM invitations") == [(0,)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AuthEnv]:
    with auth_daemon(tmp_path) as e:
        yield e


def test_errors_in_one_voice(env: AuthEnv) -> None:
    config = env.d.config_path
    for args, said in ((["queue", "show", "99"], "no request 99"),
                       (["queue", "approve", "99"], "no request 99"),
                       (["queue", "deny", "99", "unknown"], "no request 99"),
                       (["list", "release", "99"], "no held post 99"),
                       (["spool", "show", "0123456789ABCDEF"], "no message 0123456789ABCDEF"),
                       (["spool", "retry", "0123456789ABCDEF"], "no message 0123456789ABCDEF")):
        r = tldops(config, *args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"tldops: {said}\n"), args
    r = tldops(config, "stats", "--at", "2026-13-01")
    assert r.returncode == 2 and "'2026-13-01' is not a day: write it as YYYY-MM-DD" in r.stderr


def test_what_the_operator_reads_of_a_request_approved_with_the_daemon_stopped(env: AuthEnv) -> None:
    config = env.d.config_path
    qid = env.send(env.signed(request(ADMIN)))
    assert env.processed(qid)[0] == "done"
    env.delivered(2)  # the Validator's mail, and the admin's acknowledgement
    env.d.stop()
    r = tldops(config, "queue", "approve", "1")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == ("request #1 approved; the daemon is not running: the mail this makes goes out "
                        "when it next runs\n")
    r = tldops(config, "status")
    assert r.returncode == 1  # the daemon is not running
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
             if line[:1].strip()}
    assert lines["roster"] == "2 SSCs of 1 ccTLD"
    # The two welcomes and the outcome wait; the first two mails went: 'queued' said once.
    assert lines["outbox"].startswith("3 queued (oldest ") and lines["outbox"].endswith("; 2 sent")
    assert lines["outbox"].count("queued") == 1


def test_spool_list_says_what_waits_for_which_lookup_and_why_a_row_was_rejected(env: AuthEnv) -> None:
    config = env.d.config_path
    with smtplib.SMTP(env.d.host, env.d.port, timeout=10) as s:
        s.ehlo("c.test")
        s.sendmail(ADMIN, [f"decide+{'A' * 32}@{DOMAIN}"],
                   request(ADMIN, body="approve\r\n", subject="Re: request"))
    rejected = env.d.query("SELECT queue_id FROM spool ORDER BY id DESC LIMIT 1")[0][0]
    env.d.wait_processed(rejected)
    env.rdap.down()
    env.whois.down()
    waiting = env.send(env.signed(request(ADMIN, tld="gl")))
    assert env.processed(waiting)[0] == "received"  # deferred, tried again after worker.retry_base

    r = tldops(config, "spool", "list")
    assert r.returncode == 0 and r.stderr == ""
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows[waiting].split()[3] == "waiting", rows[waiting]
    assert "requests: .gl: " in rows[waiting] and "IANA" in rows[waiting], rows[waiting]
    assert rows[rejected].split()[3] == "rejected"
    assert rows[rejected].endswith("decide: decision ignored: the sender is not a Validator"), rows[rejected]

    # A retry is one more attempt: the count goes on (1, then 2), and the history says so.
    mark = env.d.mark()
    r = tldops(config, "spool", "retry", rejected)
    assert r.returncode == 0, r.stderr
    env.d.wait_for("message processed", lambda e: e.get("queue_id") == rejected, after=mark)
    assert env.d.query("SELECT status, attempts FROM spool WHERE queue_id = ?", (rejected,)) == [
        ("rejected", 2)]
    shown = json.loads(tldops(config, "spool", "show", rejected, "--json").stdout)
    assert "requeued by operator after 1 attempt" in [e["reason"] for e in shown["events"]]
    r = tldops(config, "spool", "retry", waiting)
    assert (r.returncode, r.stderr) == (1, f"tldops: message {waiting} is waiting: only a failed or "
                                           "rejected message is processed again\n")
