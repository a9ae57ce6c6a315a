"""The daemon's own DKIM signature on the mail it writes, checked in the end-to-end flows.

``key_settings`` gives a daemon a key (``dkim.key``) and ``publish`` puts its record in the
loopback DNS server; ``assert_signed`` then verifies, with dkimpy resolving the key in that
server over real DNS, every mail a flow made the daemon write: the sink's (tests/test_workflow.py's
flow, and with it tests/test_broadcast.py and tests/test_list.py) or state/outgoing's files
(tests/test_walkthrough.py, tests/test_help.py). Between them they make every kind: the
confirmation request to an IANA admin, the Validators' mail and reminders, welcomes, outcomes,
refusals, the help answer, who@ answers, the broadcast and the list's copies.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterable
from pathlib import Path

import dkim
import dkim.util
import dns.message
import dns.query
import dns.rdatatype
from daemon_proc import DOMAIN
from dkim_sign import dns_name, rsa_key
from dns_server import DnsServer

SELECTOR = "daemon"
KEY = rsa_key(2048, 9)
"""The daemon's key in the flows (another than any sender's in the tests)."""

COVERED = (b"from", b"to", b"subject", b"date", b"message-id")


def key_settings(workdir: Path) -> dict[str, str]:
    """The key written where the daemon reads it, and the keys that name it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "daemon-dkim.key"
    path.write_bytes(KEY.private)
    return {"dkim.key": str(path), "dkim.selector": SELECTOR}


def publish(server: DnsServer) -> None:
    server.set_txt(dns_name(SELECTOR, DOMAIN), [KEY.txt_record()])


def verifies(raw: bytes, server: DnsServer) -> bool:
    """dkimpy's verdict, with the key resolved from the test DNS server over real DNS."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        q = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.udp(q, server.host, port=server.port, timeout=timeout)
        return b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))


def assert_signed(raws: Iterable[bytes], server: DnsServer) -> int:
    """Every mail in ``raws`` carries exactly one DKIM-Signature, ours (d= the daemon's domain),
    that verifies, over From, To, the labelled Subject, Date and Message-ID, with From
    over-signed (a second From cannot be added). The number of mails checked."""
    n = 0
    for raw in raws:
        m = email.message_from_bytes(raw, policy=email.policy.default)  # the Subject decoded
        about = f"{m['Subject']!r} to {m['To']!r}"
        signatures = m.get_all("DKIM-Signature") or []
        assert len(signatures) == 1, f"{len(signatures)} DKIM signatures on {about}"
        tags = dkim.util.parse_tag_value(" ".join(str(signatures[0]).split()).encode())
        assert tags[b"d"] == DOMAIN.encode(), about
        h = [name.strip().lower() for name in tags[b"h"].split(b":")]
        assert all(name in h for name in COVERED), (about, h)
        assert h.count(b"from") == len(m.get_all("From") or []) + 1, (about, h)
        assert str(m["Subject"]).startswith("[TLP:"), about
        assert verifies(raw, server), f"the signature on {about} does not verify"
        n += 1
    return n


def outgoing_files(state_dir: Path) -> list[bytes]:
    """The mails in state/outgoing, as sent (without the envelope lines the file adds)."""
    out = []
    for path in sorted((state_dir / "outgoing").glob("*.eml")):
        raw = path.read_bytes()
        while raw.startswith((b"X-Envelope-From:", b"X-Envelope-To:")):
            raw = raw.split(b"\r\n", 1)[1]
        out.append(raw)
    return out
