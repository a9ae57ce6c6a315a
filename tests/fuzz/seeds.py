"""Seed inputs for the fuzz targets, from the project's real fixtures and test material.

Written into each target's corpus directory when a run starts (tests/fuzz/run keeps corpora
out of the repository). IANA answers come from tests/fixtures/rdap and
tests/fixtures/iana-whois; address values from the attack table of
tests/test_addresses.py; forms from examples/ and docs/requests.md; messages and SMTP
sessions are built around those forms, with real DKIM signatures (tests/dkim_sign.py) and the
header and smuggling attacks of docs/security.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import dkim_sign
import test_addresses
from fuzz import targets

REPO = targets.REPO
FIXTURES = REPO / "tests" / "fixtures"
ADMIN = "admin@nic.org.mt"
REQUESTS = "requests@tld-ops.localhost"


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


# -- addresses --------------------------------------------------------------------------------

def address_seeds() -> list[bytes]:
    """Each value of the attack table and each piece, in the three readings of address_value."""
    values = [v for v, _, _ in test_addresses.CASES] + list(test_addresses.PIECES)
    out: list[bytes] = []
    for v in values:
        out.append(b"\x00" + v.encode("utf-8", "surrogateescape"))
        with contextlib.suppress(UnicodeEncodeError):
            out.append(b"\x01" + v.encode("utf-8"))
        out.append(b"\x02" + v.encode("utf-16-le", "surrogatepass"))
    return out


# -- forms ------------------------------------------------------------------------------------

def forms() -> list[str]:
    example = (REPO / "examples" / "subscribe-mt.txt").read_text(encoding="utf-8")
    doc = (REPO / "docs" / "requests.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", doc, re.DOTALL)
    quoted = "".join(f"> {line}\n" for line in blocks[0].splitlines()) if blocks else ""
    html = ("<html><body><p>Hello,</p><pre>" + (blocks[0] if blocks else example)
            + "</pre><script>x</script><div>ccTLD: mt</div></body></html>")
    return [example, *blocks, quoted, html, doc]


def form_seeds() -> list[bytes]:
    return [f.encode("utf-8") for f in forms()]


# -- messages ---------------------------------------------------------------------------------

def _message(from_line: str, body: str, *, headers: tuple[str, ...] = (),
             ctype: str = "text/plain; charset=utf-8", subject: str = "Subscription") -> bytes:
    lines = [f"From: {from_line}", f"To: {REQUESTS}", f"Subject: {subject}",
             "Date: Thu, 01 Jan 2026 10:00:00 +0000", "Message-ID: <seed-1@nic.org.mt>",
             "MIME-Version: 1.0", f"Content-Type: {ctype}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + _crlf(body)).encode("utf-8")


def _multipart(text: str, html: str) -> bytes:
    body = (f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{_crlf(text)}\r\n"
            f"--b1\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
            f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{_crlf(html)}\r\n"
            "--b1\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=r.csv\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nYSxiLGMK\r\n--b1--\r\n")
    return _message(ADMIN, body, ctype='multipart/alternative; boundary="b1"')


def message_seeds() -> list[bytes]:
    """Requests as the worker finds them in the spool: plain, HTML-only, multipart, signed
    (RSA and Ed25519, keys of this process: the message target verifies against them), and
    the header attacks the authentication refuses."""
    text = forms()[0]
    rsa, ed = dkim_sign.rsa_key(2048), dkim_sign.ed25519_key()
    targets.use_dkim_records({"rsa": rsa.record_text().encode(), "ed": ed.record_text().encode()})
    plain = _message(ADMIN, text)
    out = [
        plain,
        _message(f"NIC Malta <{ADMIN}>", text, headers=(f"Cc: Other <other@nic.org.mt>, {ADMIN}",)),
        _message(ADMIN, forms()[-2], ctype="text/html; charset=utf-8"),
        _multipart(text, "<p>Action: subscribe</p><p>ccTLD: mt=3D</p>"),
        _message(ADMIN, text, headers=("Auto-Submitted: auto-replied", "Precedence: bulk")),
        _message(ADMIN, text, subject="[TLP:AMBER] Subscription"),
        _message(ADMIN, text, headers=("From: evil@attacker.example",)),
        _message("=?utf-8?b?YWRtaW5AbmljLm9yZy5tdA==?= <evil@attacker.example>", text),
        _message("admin(comment)@nic.org.mt", text),
        _message(f"<@a.example:{ADMIN}>", text, headers=("Sender: x@y.example", "Reply-To: e@x.example")),
        dkim_sign.sign(plain, "nic.org.mt", "rsa", rsa),
        dkim_sign.sign(plain, "nic.org.mt", "ed", ed),
        dkim_sign.sign(plain, "nic.org.mt", "rsa", rsa, length=True, include_headers=("to", "subject")),
        dkim_sign.sign(dkim_sign.sign(plain, "attacker.example", "rsa", rsa), "nic.org.mt", "ed", ed,
                       expire=-60, timestamp=targets.FIXED_NOW - 3600),
        dkim_sign.sign(plain, "nic.org.mt", "rsa", rsa, algorithm="rsa-sha1"),
    ]
    return out


# -- IANA answers -----------------------------------------------------------------------------

def rdap_seeds() -> list[bytes]:
    out = [p.read_bytes() for p in sorted((FIXTURES / "rdap").glob("*.json"))]
    out.append(b'{"errorCode": 404, "title": "Not Found", "description": ["no such TLD"]}')
    return out


def whois_seeds() -> list[bytes]:
    out = [p.read_bytes() for p in sorted((FIXTURES / "iana-whois").glob("*.txt"))]
    if out:
        out.append(out[0].replace(b"domain:       MT", b"domain:       XN--90AE"))
        out.append(out[0].replace(b"\n", b"\r\n"))
    out.append(b"% IANA WHOIS server\n% This query returned 0 objects.\n")
    return out


# -- SMTP sessions ----------------------------------------------------------------------------

def _stuffed(raw: bytes) -> bytes:
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in raw.split(b"\r\n"))


def _session(body: bytes, *, helo: bytes = b"EHLO client.test", mail: bytes = b"MAIL FROM:<admin@nic.org.mt>",
             rcpts: tuple[bytes, ...] = (b"RCPT TO:<requests@tld-ops.localhost>",),
             before: tuple[bytes, ...] = ()) -> bytes:
    lines = [helo, *before, mail, *rcpts, b"DATA"]
    return b"\r\n".join(lines) + b"\r\n" + body + b"\r\n.\r\nQUIT\r\n"


ENVELOPE_PATHS = (
    "<admin@nic.org.mt>", "<>", "<Postmaster>", "<Admin.Name+tag@NIC.Example> SIZE=1",
    "<jörg@müller.example> SMTPUTF8", "<admin@nic.org.mt(a.attacker.example>",
    "<@a.example,@b.example:x@y.example>", '<"admin@nic.org.mt"@attacker.example>',
    "<admin@[192.0.2.1]>", "<a..b@nic.org.mt.>",
)
"""MAIL FROM / RCPT TO paths: plain, and each form RFC 5321 allows or forbids that a lenient
reader would rewrite."""


def smtp_seeds() -> list[bytes]:
    small = _message(ADMIN, "Action: remove\nccTLD: mt\nRemove: all\n")
    body = _stuffed(small)
    smuggled = [body + s + b"MAIL FROM:<evil@attacker.example>\r\n"
                for s in (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r\r\n.\r\r\n")]
    return [
        _session(body),
        _session(body, helo=b"HELO client.test", mail=b"MAIL FROM:<>"),
        _session(body, before=(b"XFORWARD ADDR=192.0.2.1 PORT=2525 HELO=relay.example NAME=[UNAVAILABLE]",)),
        _session(body, mail=b"MAIL FROM:<admin@nic.org.mt> BODY=8BITMIME SMTPUTF8 SIZE=500",
                 rcpts=(b"RCPT TO:<confirm+Tok3n@tld-ops.localhost>", b"RCPT TO:<nobody@tld-ops.localhost>",
                        b"RCPT TO:<postmaster>", b"RCPT TO:<who@TLD-OPS.localhost.>",
                        b"RCPT TO:<help@tld-ops.localhost>")),
        *(_session(s) for s in smuggled),
        *(_session(body, mail=b"MAIL FROM:" + p.encode(),
                   rcpts=(b"RCPT TO:" + p.replace("nic.org.mt", "tld-ops.localhost").encode(),
                          b"RCPT TO:<requests@tld-ops.localhost>")) for p in ENVELOPE_PATHS),
        _session(body + b"\r\nline with a NUL \x00 byte"),
        _session(b"x" * 1200),
        b"EHLO a\r\nNOOP\r\nVRFY admin\r\nHELP\r\nRSET\r\nAUTH PLAIN AGFkbWluAHNlY3JldA==\r\n"
        b"STARTTLS\r\nEXPN list\r\nDATA\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n"
        b"RCPT TO:<requests@tld-ops.localhost> NOTIFY=NEVER\r\nXFORWARD ADDR=1.2.3.4\r\nQUIT\r\n",
        b"\r\n\xff\xfe\r\nEHLO\r\n" + b"A" * 600 + b"\r\nFOO\r\nBAR\r\nBAZ\r\nQUX\r\nQUUX\r\n",
    ]


SEEDS = {
    "address": address_seeds,
    "form": form_seeds,
    "message": message_seeds,
    "rdap": rdap_seeds,
    "whois": whois_seeds,
    "smtp": smtp_seeds,
}


def for_target(name: str) -> list[bytes]:
    """The seeds of ``name`` (for the message target this also sets the DKIM keys it verifies
    against, so call it in the process that fuzzes)."""
    return SEEDS[name]()


def write(name: str, corpus: Path) -> int:
    """Put the seeds of ``name`` into ``corpus`` (by content hash: rewriting is harmless)."""
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = for_target(name)
    for s in seeds:
        (corpus / f"seed-{hashlib.sha1(s).hexdigest()}").write_bytes(s)
    return len(seeds)
