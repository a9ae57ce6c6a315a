"""A daemon wired to real loopback DNS, RDAP and WHOIS servers, for authentication tests.

The IANA fixtures say the administrative contact of .mt is admin@nic.org.mt; the DNS server
publishes DKIM keys for nic.org.mt and attacker.example. Outgoing mail is written to the
daemon's outbox directory, read here as files once the daemon logs their delivery.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import smtplib
from collections.abc import Iterator, Sequence
from email.message import Message
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from daemon_proc import DOMAIN, DaemonProc
from dkim_sign import TestKey, dns_name, rsa_key, sign
from dns_server import DnsServer
from iana_servers import RdapServer, WhoisServer

ADMIN = "admin@nic.org.mt"
ADMIN_DOMAIN = "nic.org.mt"
ATTACKER = "evil@attacker.example"
SELECTOR = "sel"
REQUESTS = f"requests@{DOMAIN}"


def now_date() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


def form(action: str = "subscribe", tld: str = "mt", sscs: Sequence[tuple[str, ...]] = (
        ("primary", "Jane", "Doe", "+356 2133 4455", "jane.doe@nic.org.mt"),
        ("secondary", "John", "Roe", "+356 2133 4456", "john.roe@nic.org.mt")),
         removals: Sequence[str] = ()) -> str:
    """A request form (docs/requests.md) in CRLF lines; an SSC tuple of six names whom it
    replaces (updates)."""
    lines = [f"Action: {action}", f"ccTLD: {tld}", ""]
    for s in sscs:
        lines += [f"SSC: {s[0]}", f"First name: {s[1]}", f"Last name: {s[2]}", f"Phone: {s[3]}",
                  f"Email: {s[4]}", *([f"Replaces: {s[5]}"] if len(s) > 5 else []), ""]
    lines += [f"Remove: {r}" for r in removals]
    return "\r\n".join(lines) + "\r\n"


def request(from_line: str = ADMIN, *, headers: Sequence[str] = (), body: str = "",
            date: str | None = None, message_id: str | None = None, subject: str = "Subscription",
            tld: str = "mt") -> bytes:
    """A request message; ``from_line`` is the From: value exactly as written."""
    lines = [f"From: {from_line}", f"To: {REQUESTS}", f"Subject: {subject}",
             f"Date: {date or now_date()}", f"Message-ID: {message_id or make_msgid(domain='nic.org.mt')}",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", *headers]
    text = body or form(tld=tld)
    return ("\r\n".join(lines) + "\r\n\r\n" + text).encode("utf-8")


class AuthEnv:
    def __init__(self, d: DaemonProc, dns: DnsServer, rdap: RdapServer, whois: WhoisServer) -> None:
        self.d = d
        self.dns = dns
        self.rdap = rdap
        self.whois = whois
        self.admin_key = rsa_key(2048)
        self.attacker_key = rsa_key(2048, 1)
        self.publish(SELECTOR, ADMIN_DOMAIN, self.admin_key)
        self.publish(SELECTOR, "attacker.example", self.attacker_key)

    def publish(self, selector: str, domain: str, key: TestKey) -> None:
        self.dns.set_txt(dns_name(selector, domain), [key.txt_record()])

    def signed(self, raw: bytes, domain: str = ADMIN_DOMAIN, key: TestKey | None = None,
               selector: str = SELECTOR, **kw: Any) -> bytes:
        return sign(raw, domain, selector, key or self.admin_key, **kw)

    def send(self, raw: bytes, mail_from: str = ADMIN, rcpts: Sequence[str] = (REQUESTS,)) -> str:
        with smtplib.SMTP(self.d.host, self.d.port, timeout=10) as s:
            s.ehlo("mail.nic.org.mt")
            s.mail(mail_from)
            for r in rcpts:
                code, text = s.rcpt(r)
                assert code == 250, (r, text)
            code, text = s.data(raw)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[1]

    def processed(self, queue_id: str, timeout: float = 20.0) -> tuple[str, str]:
        self.d.wait_processed(queue_id, timeout=timeout)
        rows = self.d.query("SELECT status, reason FROM spool WHERE queue_id = ?", (queue_id,))
        return rows[0][0], rows[0][1] or ""

    def requests_for(self, queue_id: str) -> list[tuple[str, str, str, str]]:
        """(tld, auth, state, admin_email) of the requests a spooled message made."""
        return [tuple(r) for r in self.d.query(  # type: ignore[misc]
            "SELECT r.tld, r.auth, r.state, r.admin_email FROM requests r JOIN spool s"
            " ON s.id = r.spool_id WHERE s.queue_id = ? ORDER BY r.id", (queue_id,))]

    def outbox_rows(self, purpose: str | None = None) -> list[tuple[str, str, str]]:
        """(purpose, envelope sender, recipient) of every queued outgoing mail."""
        sql = ("SELECT m.purpose, m.mail_from, d.rcpt FROM outbox_deliveries d"
               " JOIN outbox_messages m ON m.id = d.message_id")
        rows = self.d.query(sql + (" WHERE m.purpose = ?" if purpose else "") + " ORDER BY d.id",
                            (purpose,) if purpose else ())
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def delivered(self, n: int) -> list[Message]:
        """Wait until ``n`` outgoing mails were written; the messages, oldest first."""
        self.d.wait_count("mail delivered", n)
        directory = self.d.state_dir / "outgoing"
        files = sorted(p for p in directory.iterdir() if p.suffix == ".eml")
        return [email.message_from_bytes(p.read_bytes()) for p in files]

    def outgoing_dir(self) -> Path:
        return self.d.state_dir / "outgoing"


OPEN_CONFIRMATIONS = 1_000_000
"""auth.max_open_confirmations for the tests' daemons (the largest allowed): many send one
daemon dozens of forged or unverified requests for .mt, the crash tests thousands of
replays, each of which waits for the admin's confirmation; the cap (3 by default) has tests
of its own (test_auth_confirm.py)."""


def settings_for(dns: DnsServer, rdap: RdapServer, whois: WhoisServer, **extra: Any) -> dict[str, Any]:
    """The loopback servers, and ``extra``; a key given as None keeps the daemon's default."""
    settings = {
        "dns.nameservers": [dns.host],
        "dns.port": dns.port,
        "dns.timeout": 2.0,
        "iana.rdap_url": rdap.url,
        "iana.whois_host": whois.host,
        "iana.whois_port": whois.port,
        "iana.timeout": 2.0,
        "auth.max_open_confirmations": OPEN_CONFIRMATIONS,
        **extra,
    }
    return {k: v for k, v in settings.items() if v is not None}


@contextlib.contextmanager
def auth_daemon(workdir: Path, *, command: list[str] | None = None, cwd: Path | None = None,
                **settings: Any) -> Iterator[AuthEnv]:
    """Loopback DNS, RDAP and WHOIS servers and a daemon pointed at them; all stopped after.
    ``command`` and ``cwd``: another tldops to run, from another directory (DaemonProc)."""
    dns, rdap, whois = DnsServer().start(), RdapServer(), WhoisServer()
    d = DaemonProc(workdir, settings_for(dns, rdap, whois, **settings), command=command, cwd=cwd)
    try:
        d.start()
        yield AuthEnv(d, dns, rdap, whois)
    finally:
        if d.alive:
            d.kill()
        dns.stop()
        rdap.stop()
        whois.stop()
