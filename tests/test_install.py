"""The daemon as an operator installs it: a wheel of this checkout in a venv of its own, run
from an empty directory. Its mails carry the shipped texts and its policy is the shipped one,
with no rules/ anywhere near it (the policy files travel inside the package)."""

from __future__ import annotations

import email
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from auth_env import ADMIN, ATTACKER, AuthEnv, auth_daemon, form, request
from daemon_proc import DOMAIN

REPO = Path(__file__).resolve().parent.parent
REPLIES = tomllib.loads((REPO / "rules" / "replies.toml").read_text("utf-8"))
VALIDATOR = "val@validators.example"
SHIPPED = {"roster.toml": "shipped", "replies.toml": "shipped", "cctlds.csv": "shipped"}
# Not copied into the build: the checkout's own build products, caches and state.
LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "state", "*.egg-info", "__pycache__",
                                  ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis")


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, f"{cmd}: {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tldops`` command of a fresh venv holding a wheel built from this checkout (its
    dependencies resolved by pip as for any installation)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=LEFT_OUT)  # a clean tree: no stale build/ in the wheel
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", base / "wheels", source)
    (wheel,) = (base / "wheels").glob("tldops_mta-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"tldops_mta/shipped_rules/{n}" for n in SHIPPED} <= names, sorted(names)
    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel)
    return venv / "bin" / "tldops"


def static_lines(template: str) -> list[str]:
    """The lines of a shipped template's body that hold no placeholder: what every mail made
    from it shows word for word."""
    return [line for line in REPLIES[template]["body"].splitlines() if line.strip() and "{" not in line]


def subject(template: str, **values: str) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: values[m.group(1)], REPLIES[template]["subject"])


def body(m: Message) -> str:
    payload = m.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


def mail_to(env: AuthEnv, rcpt: str, subject_has: str, timeout: float = 20.0) -> Message:
    """The outgoing mail to ``rcpt`` whose Subject holds ``subject_has``, once written."""
    deadline = time.monotonic() + timeout
    while True:
        delivered = len(env.d.events("mail delivered"))  # before looking: none is missed
        for path in sorted(env.outgoing_dir().glob("*.eml")):
            m = email.message_from_bytes(path.read_bytes())
            if m["X-Envelope-To"] == f"<{rcpt}>" and subject_has in str(m["Subject"]):
                return m
        env.d.wait_count("mail delivered", delivered + 1, timeout=max(0.1, deadline - time.monotonic()))


def assert_shipped_text(m: Message, template: str, **values: str) -> None:
    assert subject(template, **values) in str(m["Subject"])
    text = body(m)
    assert "has no [" not in text
    missing = [line for line in static_lines(template) if line not in text]
    assert not missing, (template, missing)


@pytest.fixture
def env(installed: Path, tmp_path: Path) -> Iterator[AuthEnv]:
    """That tldops serving, started from an empty directory with its state under it."""
    empty, conf = tmp_path / "empty", tmp_path / "conf"
    empty.mkdir()
    conf.mkdir()
    here = run(installed.parent / "python", "-c", "import tldops_mta; print(tldops_mta.__file__)", cwd=empty)
    assert here.stdout.startswith(str(installed.parent.parent)), here.stdout  # the wheel's, not ours
    with auth_daemon(conf, command=[str(installed)], cwd=empty, **{
            "rules.dir": None, "storage.state_dir": "state", "validation.validators": [VALIDATOR],
            "worker.retry_base": 0.2}) as e:
        assert e.d.state_dir == empty / "state"
        yield e


def test_the_installed_daemon_works_from_an_empty_directory_with_the_shipped_rules(
        installed: Path, env: AuthEnv) -> None:
    assert env.d.wait_for("ready")["rules"] == SHIPPED

    # help@: the shipped form.
    env.send(f"From: jane@nic.example\r\nTo: help@{DOMAIN}\r\nSubject: help\r\n\r\nhow?\r\n".encode(),
             mail_from="jane@nic.example", rcpts=[f"help@{DOMAIN}"])
    assert_shipped_text(mail_to(env, "jane@nic.example", "[TLD-OPS]"), "help")

    # A request from someone IANA does not list: the shipped refusal.
    status, _ = env.processed(env.send(request(ATTACKER), mail_from=ATTACKER))
    assert status == "rejected"
    assert_shipped_text(mail_to(env, ATTACKER, "[TLD-OPS]"), "refusal")

    # Role mailboxes of the shipped roster.toml (not of the built-in short list): refused.
    roles = form(sscs=(("primary", "Computer", "Emergency", "+356 2133 4455", "cert@nic.org.mt"),
                       ("secondary", "Incident", "Response", "+356 2133 4456", "csirt@nic.org.mt")))
    status, reason = env.processed(env.send(env.signed(request(ADMIN, body=roles))))
    assert status == "rejected"
    assert "cert@nic.org.mt is a role mailbox" in reason and "csirt@nic.org.mt is a role mailbox" in reason
    assert env.d.query("SELECT count(*) FROM requests") == [(0,)]

    # The admin only in Cc: the shipped confirmation to IANA's address; once confirmed, the
    # shipped Validator's mail.
    cc = env.signed(request("ssc@nic.org.mt", headers=[f"Cc: {ADMIN}"]))
    qid = env.send(cc, mail_from="ssc@nic.org.mt")
    assert env.processed(qid)[0] == "done"
    confirmation = mail_to(env, ADMIN, "confirm")
    assert_shipped_text(confirmation, "confirmation", tld="mt")
    answer = request(ADMIN, body="Yes, confirmed.\r\n", subject="Re: confirm")
    assert env.processed(env.send(answer, rcpts=[str(confirmation["Reply-To"])]))[0] == "done"
    validator = mail_to(env, VALIDATOR, "Request #1")
    assert_shipped_text(validator, "validator", id="1", action="subscribe", tld="mt")

    # The operator's commands of that installation, from the same empty directory.
    conf = str(env.d.config_path)
    status_json = json.loads(run(installed, "status", "--json", "--config", conf, cwd=env.d.cwd).stdout)
    assert status_json["rules"] == SHIPPED and status_json["running"] is True
    stats = run(installed, "stats", "--json", "--config", conf, cwd=env.d.cwd)
    assert json.loads(stats.stdout)
