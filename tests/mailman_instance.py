"""A real Mailman 3 for the tests: its own virtualenv, SQLite, REST and LMTP on loopback.

The virtualenv is built once per constraints file (its hash names the directory under
/var/tmp), so a second run starts at once and a clean machine still builds it (~20 s from
the package index). Mailman runs as a background master (``mailman start``); its outgoing
mail goes to an SmtpSink on loopback. Only the runners a list post and the REST API need are
started, polling every 0.1 s (start ~5 s instead of ~8 s).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from smtp_sink import SmtpSink

CONSTRAINTS = Path(__file__).with_name("mailman_constraints.txt")
REST_USER = "restadmin"
REST_PASSWORD = "restpass-for-tests"
MAIL_DOMAIN = "lists.tld-ops.example"
UNUSED_RUNNERS = ("archive", "bounces", "command", "digest", "retry", "task")


def venv() -> Path:
    """Mailman's own virtualenv: the project's pinned dependencies would clash with its own."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:16]
    path = Path(os.environ.get("TLDOPS_MAILMAN_VENV_ROOT", "/var/tmp")) / f"tldops-mailman-{digest}"
    done = path / "installed"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    r = subprocess.run([str(path / "bin" / "pip"), "install", "-q", "-c", str(CONSTRAINTS), "mailman"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"installing Mailman into {path} failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
    done.write_text("ok\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailman:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bin = venv() / "bin" / "mailman"
        self.sink = SmtpSink()
        self.rest_port = free_port()
        self.lmtp_port = free_port()
        self.rest_url = f"http://127.0.0.1:{self.rest_port}/3.1"
        self.cfg = workdir / "mailman.cfg"
        gunicorn = workdir / "gunicorn.cfg"
        gunicorn.write_text("[gunicorn]\ncontrol_socket_disable = true\ngraceful_timeout = 1\n")
        runners = "".join(f"[runner.{r}]\nstart: no\n\n" for r in UNUSED_RUNNERS)
        fast = "".join(f"[runner.{r}]\nsleep_time: 0.1s\n\n" for r in ("in", "out", "pipeline", "virgin"))
        self.cfg.write_text(f"""[mailman]
layout: tests
site_owner: owner@{MAIL_DOMAIN}

[paths.tests]
var_dir: {workdir / 'var'}

[mta]
incoming: mailman.mta.null.NullMTA
smtp_host: 127.0.0.1
smtp_port: {self.sink.port}
lmtp_host: 127.0.0.1
lmtp_port: {self.lmtp_port}

[webservice]
hostname: 127.0.0.1
port: {self.rest_port}
admin_user: {REST_USER}
admin_pass: {REST_PASSWORD}
workers: 1
configuration: {gunicorn}

[archiver.prototype]
enable: no

{runners}{fast}""")
        self.log = workdir / "mailman-start.log"
        self.running = False

    def _mailman(self, *args: str) -> None:
        # Never through a pipe: the background master inherits it and the call never returns.
        with self.log.open("ab") as out:
            subprocess.run([str(self.bin), "-C", str(self.cfg), "--run-as-root", *args],
                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           check=True, timeout=60, cwd=self.workdir)

    def start(self) -> None:
        self._mailman("start")
        self.running = True
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{self.rest_url}/system/versions", auth=(REST_USER, REST_PASSWORD), timeout=2)
                if r.status_code == 200 and self._lmtp_up():
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Mailman did not start; see {self.log}")
            time.sleep(0.1)

    def _lmtp_up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.lmtp_port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if not self.running:
            return
        self._mailman("stop")
        self.running = False
        deadline = time.monotonic() + 30
        while True:  # until the REST port is closed: "down" means down
            try:
                socket.create_connection(("127.0.0.1", self.rest_port), timeout=1).close()
            except OSError:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("Mailman did not stop")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.sink.stop()
