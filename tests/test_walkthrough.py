"""docs/walkthrough.md, step by step, with its own files: examples/demo_iana.py,
examples/demo.toml and examples/subscribe-mt.txt (smtplib standing in for swaks)."""

from __future__ import annotations

import email
import json
import re
import smtplib
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import log_privacy
import own_dkim
import pytest
from daemon_proc import DaemonProc
from dns_server import DnsServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = EXAMPLES.parent / "docs"


@pytest.fixture
def demo_iana() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "demo_iana.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("demo IANA RDAP on")  # listening
    yield port
    proc.kill()
    proc.wait()


def outgoing(d: DaemonProc, subject_has: str) -> Message:
    for path in sorted((d.state_dir / "outgoing").glob("*.eml")):
        m = email.message_from_bytes(path.read_bytes())
        if subject_has in str(m["Subject"]):
            return m
    raise AssertionError(f"no outgoing mail about {subject_has!r}")


def send(d: DaemonProc, sender: str, to: str, body: str) -> None:
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.sendmail(sender, [to], (f"From: {sender}\r\nTo: {to}\r\nSubject: walkthrough\r\n"
                                  f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\n{body}").encode())


def test_the_walkthrough_works_as_written(tmp_path: Path, demo_iana: int, dns_server: DnsServer) -> None:
    demo = tomllib.loads((EXAMPLES / "demo.toml").read_text())
    settings = {f"{section}.{key}": value for section, table in demo.items() for key, value in table.items()}
    settings["iana.rdap_url"] = f"http://127.0.0.1:{demo_iana}/"
    settings.update(own_dkim.key_settings(tmp_path / "keys"))  # every mail it writes is checked
    own_dkim.publish(dns_server)
    d = DaemonProc(tmp_path, settings).start()
    cli: list[str] = []  # what every command printed
    try:
        # 2. the request, From the address the stand-in IANA gives for .mt, unsigned
        send(d, "admin@nic.mt.test", "requests@tld-ops.localhost",
             (EXAMPLES / "subscribe-mt.txt").read_text().replace("\n", "\r\n"))
        d.wait_for("message processed", lambda r: r.get("verdict") == "needs-confirmation")
        # 3. the admin confirms
        confirm = str(outgoing_when(d, "Please confirm a request for .mt")["Reply-To"])
        send(d, "admin@nic.mt.test", confirm, "Yes, this is our request.\r\n")
        # 5. the Validator approves by mail, and confirms the unsigned decision
        decide = str(outgoing_when(d, "Request #1: subscribe .mt")["Reply-To"])
        send(d, "validator@tld-ops.localhost", decide, "approve\r\n")
        again = str(outgoing_when(d, "Please confirm your decision")["Reply-To"])
        send(d, "validator@tld-ops.localhost", again, "yes\r\n")
        d.wait_for("decision confirmed")
        # 6. the roster
        listed = tldops(d, cli, "roster", "export", "--format", "json")
        assert json.loads(listed.stdout)["roster"] == [
            {"cctld": "mt", "cctld_unicode": "mt", "role": "primary", "first_name": "Jane",
             "last_name": "Doe", "phone": "+35621334455", "email": "jane.doe@nic.org.mt",
             "unconfirmed_since": None},
            {"cctld": "mt", "cctld_unicode": "mt", "role": "secondary", "first_name": "John",
             "last_name": "Roe", "phone": "+35621334456", "email": "john.roe@nic.org.mt",
             "unconfirmed_since": None}]
        outgoing_when(d, "Welcome")
        # 6. every mail the walkthrough lists, and no other
        listed = [m.group(1) for m in re.finditer(r"^(\d{8}-\d{8}-\S+\.eml) +step \d",
                                                  (DOCS / "walkthrough.md").read_text(), re.MULTILINE)]
        d.wait_count("mail delivered", len(listed))
        assert sorted(p.name for p in (d.state_dir / "outgoing").glob("*.eml")) == listed
        # ... and the roster broadcast to every SSC
        tldops(d, cli, "broadcast", "now")
        outgoing_when(d, "TLD-OPS roster")
        # The confirmation request, the Validator's mail and its confirmation, the welcomes,
        # the outcome: each signed with the daemon's key as it was written.
        assert own_dkim.assert_signed(own_dkim.outgoing_files(d.state_dir), dns_server) >= 6
    finally:
        d.stop()
    # At level info, no log line of the daemon or of a command names an SSC.
    request = [("", "", "", phone, address) for phone, address in (
        ("+356 2133 4455", "jane.doe@nic.org.mt"), ("2133 4456", "john.roe@nic.org.mt"))]
    lines = log_privacy.shown(d.output()) + log_privacy.shown(cli, records_only=True)
    assert log_privacy.leaks(lines, log_privacy.people(request, d.db_path)) == []


def tldops(d: DaemonProc, printed: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """A command against ``d``; what it printed is added to ``printed``."""
    done = subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config", str(d.config_path)],
                          capture_output=True, text=True, timeout=60, check=True)
    printed.extend((done.stdout + done.stderr).splitlines())
    return done


def outgoing_when(d: DaemonProc, subject_has: str) -> Message:
    """The mail about ``subject_has``, once written: looked for again after each delivery."""
    while True:
        try:
            return outgoing(d, subject_has)
        except AssertionError:
            n = len(d.events("mail delivered")) + 1
            d.wait_count("mail delivered", n)
