"""A real, private Postfix instance for a test: its own configuration, queue and data
directories under the test's temporary directory, listening on a loopback port of its own,
configured with the lines we ship in examples/postfix/ (domain and ports substituted).

Postfix's master runs as root (as it does in production) and its services as the postfix
user; no service is chrooted (the queue directory is a temporary one). It logs to a file
(maillog_file), which the test reads when something goes wrong."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "postfix"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostfixInstance:
    def __init__(self, domain: str, tldops_port: int) -> None:
        # Not under pytest's tmp_path: that is mode 0700, and Postfix's services run as the
        # postfix user, who must reach the queue. Removed by stop().
        self.root = Path(tempfile.mkdtemp(prefix="tldops-postfix-"))
        root = self.root
        self.conf = root / "etc"
        self.queue = root / "spool"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.port = free_port()
        self.domain = domain
        self.tldops_port = tldops_port

    def _main_cf(self) -> str:
        shipped = (EXAMPLES / "main.cf").read_text().replace("tld-ops.example", self.domain)
        shipped = shipped.replace("hash:/etc/postfix/transport", f"texthash:{self.conf}/transport")
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = mx.postfix.test",
            "mydomain = postfix.test",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            # 127.0.0.1 is this host (tldops-mta relays its mail here); the tests' clients
            # connect from 127.0.0.2, a stranger on the internet.
            "mynetworks = 127.0.0.1/32",
            "smtpd_banner = $myhostname ESMTP",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.root}",
            "biff = no",
            "smtp_dns_support_level = disabled",
            "disable_dns_lookups = yes",
            "smtpd_peername_lookup = no",
            "address_verify_map =",
            # A refusal from tldops-mta must come back to the client, not linger in retries.
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
            shipped,
        ]) + "\n"

    def _master_cf(self) -> str:
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if not fields or line.startswith((" ", "\t", "#")):
                lines.append(line)
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{self.port}"
            if len(fields) >= 8:
                fields[4] = "n"  # no chroot: the queue is a temporary directory
            lines.append("  ".join(fields))
        return "\n".join(lines) + "\n"

    def start(self) -> PostfixInstance:
        self.conf.mkdir()
        (self.conf / "main.cf").write_text(self._main_cf())
        (self.conf / "master.cf").write_text(self._master_cf())
        transport = (EXAMPLES / "transport").read_text().replace("tld-ops.example", self.domain)
        transport = transport.replace("[127.0.0.1]:2525", f"[127.0.0.1]:{self.tldops_port}")
        (self.conf / "transport").write_text(transport)
        for d in (self.queue, self.data):
            d.mkdir(parents=True)
        shutil.chown(self.data, "postfix", "postfix")
        self.root.chmod(0o755)
        self._postfix("set-permissions", check=False)  # makes the queue's subdirectories
        self._postfix("start")
        deadline = time.monotonic() + 20
        while True:  # master binds, then forks smtpd on the first connection
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(512).startswith(b"220"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("postfix did not start; log:\n" + self.log())
            time.sleep(0.05)

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"postfix {' '.join(args)}: {r.stdout}{r.stderr}\n{self.log()}")
        return r

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else "(no log)"

    def queue_ids_delivered(self) -> list[str]:
        """Queue ids tldops-mta gave in its 250 replies, as Postfix logged them."""
        return re.findall(r"status=sent \(250 2\.0\.0 Ok: queued as ([0-9A-F]+)\)", self.log())

    def wait_delivered(self, queue_id: str, timeout: float = 30.0) -> None:
        """Until Postfix's log says it handed the message over and got ``queue_id`` back
        (its log writer, postlogd, writes a moment after the delivery itself)."""
        deadline = time.monotonic() + timeout
        while queue_id not in self.queue_ids_delivered():
            if time.monotonic() > deadline:
                raise AssertionError(f"postfix never logged the delivery of {queue_id}:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._postfix("stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
