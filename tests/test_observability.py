"""Observability: the Prometheus endpoint (scraped over HTTP from the real daemon), `tldops
status`, and the ids that tie a session, a message, a request and an outgoing mail together
in the logs."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from auth_env import form
from daemon_proc import DOMAIN, DaemonProc
from smtp_raw import message
from test_workflow import JANE, JOHN, VALIDATOR, flow

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.M)


def scrape(d: DaemonProc) -> dict[str, float]:
    """The endpoint's samples, as {'name{labels}': value}."""
    at = d.wait_for("ready")["metrics"]
    with urllib.request.urlopen(f"http://{at}/metrics", timeout=10) as r:
        body = r.read().decode()
    assert "@" not in body, "an address in the metrics"
    return {m.group(1) + (m.group(2) or ""): float(m.group(3)) for m in SAMPLE.finditer(body)}


def tldops(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config", str(d.config_path)],
                          capture_output=True, text=True, timeout=60)


def test_metrics_count_replies_messages_and_outgoing_mail_across_worker_exits(
        start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon({"worker.max_idle": 0.3})
    assert re.fullmatch(r"127\.0\.0\.1:\d+", d.wait_for("ready")["metrics"])
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("someone@nic.example")
        assert s.rcpt(f"nobody@{DOMAIN}")[0] == 550
        assert s.rcpt(f"help@{DOMAIN}")[0] == 250
        code, text = s.data(message("help please", to=f"help@{DOMAIN}"))
        assert code == 250
    qid = text.decode().rsplit(" ", 1)[1]
    d.wait_processed(qid)
    d.wait_for("mail delivered")
    d.wait_for("worker idle, exiting")  # its counters outlive it (multiprocess files)
    m = scrape(d)
    assert m['tldops_smtp_replies_total{code="550"}'] == 1
    assert m['tldops_smtp_replies_total{code="250"}'] >= 4  # EHLO, MAIL, RCPT, DATA
    assert m['tldops_smtp_connections_total{outcome="accepted"}'] == 1
    assert m['tldops_messages_total{outcome="done",service="help"}'] == 1
    assert m['tldops_outgoing_mail_total{outcome="sent"}'] == 1
    assert m['tldops_spool_messages{status="done"}'] == 1
    assert m['tldops_spool_messages{status="received"}'] == 0
    assert m['tldops_outbox_deliveries{status="sent"}'] == 1
    assert m["tldops_smtp_sessions"] == 0
    assert m["tldops_last_broadcast_timestamp_seconds"] == 0

    # A worker process that starts at the moment of a scrape has created its file and not yet
    # sized it: the scrape still answers, with every value the others hold.
    (d.state_dir / "metrics" / "counter_999999.db").touch()
    assert scrape(d)['tldops_messages_total{outcome="done",service="help"}'] == 1


def test_metrics_show_dkim_iana_and_dns_lookups_and_the_queue(tmp_path: Path) -> None:
    with flow(tmp_path) as f:
        assert f.submit(form(sscs=(JANE, JOHN))) == ("done", ".mt: verified")
        f.mail_to(VALIDATOR, "Request #")
        m = scrape(f.d)
        assert m['tldops_dkim_signatures_total{counted="yes",result="pass"}'] == 1
        assert m['tldops_lookup_seconds_count{source="rdap"}'] == 1
        assert m['tldops_lookup_seconds_count{source="dns"}'] >= 1
        assert m.get('tldops_lookup_errors_total{source="rdap"}', 0) == 0
        assert m['tldops_queue_requests{state="awaiting-validator"}'] == 1

        # `tldops status` tells a person the same.
        r = f.tldops("status")
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"^tldops-mta: running, pid \d+", r.stdout, re.M)
        assert "queue:      1 open; 1 awaiting-validator" in r.stdout
        assert "problems:   none" in r.stdout
        js = json.loads(f.tldops("status", "--json").stdout)
        assert js["running"] is True and js["queue_open"] == 1 and js["problems"] == []
        assert js["spool"]["done"] == m['tldops_spool_messages{status="done"}']
        assert "@" not in r.stdout  # counts, never people

        # The ids tie together: the session that brought it, the message, the request
        # and the mail it caused.
        spooled = f.d.wait_for("message spooled")
        assert spooled["session"] and spooled["queue_id"]
        processed = f.d.wait_for("message processed", lambda r: r.get("queue_id") == spooled["queue_id"])
        assert processed["request"] == 1  # the message became request 1
        delivered = f.d.wait_for("mail delivered", lambda r: r.get("ref") == "request-1")
        assert delivered["outbox_id"] and delivered["purpose"]


def test_status_says_when_the_daemon_is_down_and_what_failed(start_daemon: Callable[..., DaemonProc]) -> None:
    d = start_daemon()
    assert tldops(d, "status").returncode == 0
    d.stop()
    r = tldops(d, "status")
    assert r.returncode == 1
    assert "tldops-mta: NOT RUNNING" in r.stdout and "the daemon is not running" in r.stdout
    js = json.loads(tldops(d, "status", "--json").stdout)
    assert js["running"] is False and js["pid"] is None
