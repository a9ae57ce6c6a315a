"""The spoofing catalogue: header-ambiguity and DKIM cases from the published research, each sent
over SMTP to the running daemon, none of which may end verified.

test_auth_attacks.py holds the attack list of docs/security.md; the cases here are the ones it lacks,
each named after where it comes from:

- "Composition Kills" (Chen, Paxson, Jiang; USENIX Security 2020) and its tool espoofer, whose
  test cases are named server_a3 ... server_a19 and client_a1 here as there;
- "Weak Links in Authentication Chains" (Shen et al., USENIX Security 2021): forged
  Authentication-Results, several signatures of mixed worth, Sender/From disagreement;
- DKIM replay and header over-signing (Wang et al.; RFC 6376 8.6 and 5.4.2), and the key-record
  tags RFC 6376 3.6.1 defines (t=y, h=, k=, empty p=);
- Mailsploit (Haddouche, 2017): encoded words carrying NUL, line breaks or an address;
- IDN homographs (Gabrilovich and Gontmakher, CACM 2002) in A-label and raw 8-bit form;
- RFC 822/1123 legacy address forms (%-hack, UUCP bang paths, group syntax, trailing dot);
- SMTP smuggling (Longin, SEC Consult, 2023): the end-of-data variants other than "\\n.\\n".

Most cases end like those of test_auth_attacks: refused (no request at all), or needing
confirmation, with the token going to the address IANA lists and nowhere else. The check is
test_auth_attacks's own, imported, so both files judge outcomes the same way. The smuggling
cases and a NUL byte end earlier, refused in DATA, and prove that nothing was spooled.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import smtplib
import time
from collections.abc import Callable, Iterator, Sequence
from email.utils import format_datetime, make_msgid

import dkim_sign
import pytest
import test_auth_attacks
from auth_env import ADMIN, ADMIN_DOMAIN, ATTACKER, REQUESTS, AuthEnv, auth_daemon, form, now_date, request
from iana_servers import rdap_doc
from smtp_checks import spool_count
from test_auth_attacks import CONFIRM, REFUSED, Build, extra_header, from_line
from test_auth_attacks import test_attack_is_not_verified as outcome_is_not_verified

COLLEAGUE = "ssc@nic.org.mt"
"""Another mailbox of the admin's own domain: whoever holds it gets mail signed by nic.org.mt,
which is why a nic.org.mt signature alone never proves the admin wrote the From line."""

OTHER_TLD = "tv"
"""A second ccTLD, given the same administrative contact at IANA by the fixture below."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthEnv]:
    with auth_daemon(tmp_path_factory.mktemp("spoof"), **{"worker.retry_base": 0.2}) as e:
        doc = rdap_doc("mt")
        doc["ldhName"] = doc["handle"] = OTHER_TLD
        e.rdap.answers[OTHER_TLD] = (200, json.dumps(doc).encode())
        yield e


# -- building messages --------------------------------------------------------------------

def headers_after_from(*, date: str | None = None, message_id: str | None = None,
                       content_type: str = "text/plain; charset=utf-8") -> list[str]:
    """The header lines every case shares, after whatever From lines the case writes."""
    return [f"To: {REQUESTS}", "Subject: Subscription", f"Date: {date or now_date()}",
            f"Message-ID: {message_id or make_msgid(domain='nic.org.mt')}", "MIME-Version: 1.0",
            f"Content-Type: {content_type}"]


def compose(lines: Sequence[str], body: str | None = None) -> bytes:
    """A message whose header is exactly ``lines``, in that order, then ``body`` (the form)."""
    return ("\r\n".join(lines) + "\r\n\r\n" + (form() if body is None else body)).encode("utf-8")


def raw_header(*first: str, signer: str = "none", after: Sequence[str] | None = None) -> Build:
    """A case whose header starts with ``first`` exactly as written (names, spaces, folds).

    ``signer`` "attacker" signs with attacker.example's key; "none" leaves it unsigned, needed
    where the header is one dkimpy cannot parse at all (it refuses to sign it, as the espoofer
    cases were sent).
    """
    def build(e: AuthEnv) -> tuple[bytes, str]:
        raw = compose([*first, *(headers_after_from() if after is None else after)])
        if signer == "attacker":
            raw = e.signed(raw, "attacker.example", e.attacker_key)
        return raw, ATTACKER

    return build


def admin_signed(*, selector: str = "sel", key_tags: str | None = None, record: str | None = None,
                 **sign_kw: object) -> Build:
    """The admin's request signed with the admin domain's key, optionally under a selector
    whose record, published first, is that key's with ``key_tags`` added, or ``record``. Each
    record gets a selector of its own: the daemon keeps key records for their TTL."""
    def build(e: AuthEnv) -> tuple[bytes, str]:
        if key_tags is not None or record is not None:
            text = record if record is not None else e.admin_key.record_text() + (key_tags or "")
            e.dns.set_txt(dkim_sign.dns_name(selector, ADMIN_DOMAIN), [text])
        return e.signed(request(ADMIN), selector=selector, **sign_kw), ADMIN  # type: ignore[arg-type]

    return build


def after_signing(edit: Callable[[bytes], bytes], from_value: str = COLLEAGUE, **sign_kw: object) -> Build:
    """A message signed by nic.org.mt (From ``from_value``), then changed by ``edit``: what
    anyone holding one signed mail of the domain, or standing on its path, can do."""
    def build(e: AuthEnv) -> tuple[bytes, str]:
        return edit(e.signed(request(from_value), **sign_kw)), ATTACKER  # type: ignore[arg-type]

    return build


def prepend(line: str) -> Callable[[bytes], bytes]:
    return lambda raw: line.encode("utf-8") + b"\r\n" + raw


def multipart(top_from: str, part: bytes) -> Build:
    """From ``top_from``, signed by the attacker: the form as the first part, ``part`` (its
    own header included) second."""
    def build(e: AuthEnv) -> tuple[bytes, str]:
        body = ("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + form()
                + "--b1\r\n").encode() + part + b"\r\n--b1--\r\n"
        head = [f"From: {top_from}", *headers_after_from(content_type='multipart/mixed; boundary="b1"')]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        return e.signed(raw, "attacker.example", e.attacker_key), ATTACKER

    return build


def from_only_in_mime_part(e: AuthEnv) -> tuple[bytes, str]:
    part = f"From: {ADMIN}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee above.\r\n".encode()
    return multipart(ATTACKER, part)(e)


def forwarded_signed_request(e: AuthEnv) -> tuple[bytes, str]:
    """The admin's genuine signed request, forwarded inline as message/rfc822."""
    return multipart(ATTACKER, b"Content-Type: message/rfc822\r\n\r\n" + e.signed(request(ADMIN)))(e)


def sent_first(e: AuthEnv, raw: bytes, auth: str) -> None:
    """Send the genuine message first and let the worker finish with it, as the replayed copy
    only arrives after the original; ``auth`` is how the original itself must count ("dkim":
    so the copy is refused verification for being a copy and for nothing else)."""
    qid = e.send(raw)
    e.processed(qid)
    assert [r[1] for r in e.requests_for(qid)] == [auth]


def replay_with_reply_to(e: AuthEnv) -> tuple[bytes, str]:
    """Wang et al.'s DKIM replay: the genuine signed request again, with a Reply-To added (not
    signed) so that a reply would go to the attacker."""
    raw = e.signed(request(ADMIN))
    sent_first(e, raw, "dkim")
    return f"Reply-To: {ATTACKER}\r\n".encode() + raw, ATTACKER


def replay_with_renewed_date_and_id(e: AuthEnv) -> tuple[bytes, str]:
    """DKIM replay where the signer left Date and Message-ID out of h=: the copy gets a new
    Date and Message-ID, so neither the replay window nor the seen Message-IDs would catch it
    unless such a signature does not count."""
    old_id = make_msgid(domain="nic.org.mt")
    old_date = now_date()
    raw = e.signed(request(ADMIN, date=old_date, message_id=old_id),
                   include_headers=("from", "to", "subject", "from", "to", "subject"))
    sent_first(e, raw, "token")  # such a signature does not count, for the original either
    new_date = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    replay = raw.replace(f"Message-ID: {old_id}".encode(),
                         f"Message-ID: {make_msgid(domain='nic.org.mt')}".encode())
    replay = replay.replace(f"Date: {old_date}".encode(), f"Date: {new_date}".encode(), 1)
    assert replay.count(b"Message-ID: ") == 1 and old_id.encode() not in replay
    return replay, ADMIN


def replay_without_message_id(e: AuthEnv) -> tuple[bytes, str]:
    """A signed request that carries no Message-ID (h= still names it, so none can be added),
    sent twice: nothing tells the copies apart, so neither copy counts as verified."""
    raw = request(ADMIN)
    raw = b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Message-ID:"))
    raw = e.signed(raw)
    sent_first(e, raw, "token")
    return raw, ADMIN


def same_message_id_other_cctld(e: AuthEnv) -> tuple[bytes, str]:
    """A Message-ID already spent by a verified request for .tv, reused on a signed request
    for .mt of the same administrative contact: a Message-ID is spent whatever the ccTLD."""
    mid = make_msgid(domain="nic.org.mt")
    sent_first(e, e.signed(request(ADMIN, message_id=mid, tld=OTHER_TLD)), "dkim")
    return e.signed(request(ADMIN, message_id=mid)), ADMIN


def two_signatures(e: AuthEnv) -> tuple[bytes, str]:
    """Shen et al.: a nic.org.mt signature that does not sign From, under an attacker.example
    one that does; neither is both aligned and covering From."""
    raw = e.signed(request(ADMIN), include_headers=("to", "subject", "date", "message-id"))
    return e.signed(raw, "attacker.example", e.attacker_key), ATTACKER


def broken_admin_signature_over_attackers(e: AuthEnv) -> tuple[bytes, str]:
    """Shen et al.: a valid attacker.example signature under a nic.org.mt one whose b= is
    broken; a verifier that reads only the top one, or any "pass", is fooled."""
    raw = e.signed(request(ADMIN), "attacker.example", e.attacker_key)
    raw = e.signed(raw)
    m = re.search(rb"[;\s]b=([A-Za-z0-9+/])", raw)  # the top signature's b=, not its bh=
    assert m is not None
    flipped = b"A" if m.group(1) != b"A" else b"B"
    return raw[:m.start(1)] + flipped + raw[m.end(1):], ATTACKER


def forged_authentication_results(e: AuthEnv) -> tuple[bytes, str]:
    ar = f"Authentication-Results: {e.d.host}; dkim=pass header.d={ADMIN_DOMAIN} header.s=sel"
    return request(ADMIN, headers=[ar, f"ARC-Authentication-Results: i=1; {e.d.host}; dkim=pass"]), ATTACKER


def quote_in_d(e: AuthEnv) -> tuple[bytes, str]:
    """espoofer server_a4: d= holding a quote, to break out of the Authentication-Results the
    verifier writes. The key is even published under that name."""
    d = f"{ADMIN_DOMAIN}'a.attacker.example"
    e.dns.set_txt(dkim_sign.dns_name("sel", d), [e.attacker_key.txt_record()])
    return e.signed(request(ADMIN), d, e.attacker_key), ATTACKER


def selector_path_into_attacker_zone(e: AuthEnv) -> tuple[bytes, str]:
    """espoofer server_a3 without its NUL (which DATA refuses, see below): s= naming the
    attacker's key, in the hope that the lookup stops before ._domainkey.<d>."""
    return e.signed(request(ADMIN), selector="sel._domainkey.attacker.example",
                    key=e.attacker_key), ATTACKER


def ed25519_record_for_rsa_signature(e: AuthEnv) -> tuple[bytes, str]:
    e.publish("edonly", ADMIN_DOMAIN, dkim_sign.ed25519_key(3))
    return e.signed(request(ADMIN), selector="edonly"), ADMIN


B64_ADMIN = base64.b64encode(ADMIN.encode()).decode()

# (id, build, expected). Every id names the research the case comes from.
CASES: list[tuple[str, Build, str]] = [
    # --- Composition Kills / espoofer: header parsing -------------------------------------
    ("espoofer server_a9: From line folded onto nothing (leading space), then From admin",
     raw_header(f" From: <{ATTACKER}>", f"From: <{ADMIN}>"), CONFIRM),
    ("espoofer server_a10: From evil, then 'From :' admin (space before colon)",
     raw_header(f"From: <{ATTACKER}>", f"From : <{ADMIN}>"), REFUSED),
    ("espoofer server_a10 reversed: 'From :' evil, then From admin",
     raw_header(f"From : <{ATTACKER}>", f"From: <{ADMIN}>"), CONFIRM),
    ("espoofer server_a11: header name folded ('From' CRLF ' :'), then From admin",
     raw_header("From", f" : <{ATTACKER}>", f"From: <{ADMIN}>"), REFUSED),
    ("espoofer server_a12: folded From name, admin only in Sender",
     raw_header("From", f" : <{ATTACKER}>", f"Sender: <{ADMIN}>"), REFUSED),
    ("espoofer server_a13: folded From name, admin only in Resent-From",
     raw_header("From", f" : <{ATTACKER}>", f"Resent-From: <{ADMIN}>"), REFUSED),
    ("espoofer server_a14: two addresses in From, the admin's second",
     from_line(f"<{ATTACKER}>, <{ADMIN}>"), REFUSED),
    ("espoofer server_a15: base64 encoded word holding <admin>, then a second address",
     from_line(f"=?utf-8?b?{base64.b64encode(f'<{ADMIN}>'.encode()).decode()}?=,<{ATTACKER}>"), REFUSED),
    ("espoofer server_a16: route portion with two hops",
     from_line(f"<@attacker.example,@any.example:{ADMIN}>"), REFUSED),
    ("espoofer server_a17: quoted pair between two addresses",
     from_line(f"<{ADMIN}>\\,<{ATTACKER}>"), REFUSED),
    ("espoofer server_a18: bare admin address, then an angle address",
     from_line(f"{ADMIN},<{ATTACKER}>"), REFUSED),
    ("espoofer server_a19: angle address, then the admin address as text",
     from_line(f"<{ATTACKER}>{ADMIN}"), REFUSED),
    ("espoofer client_a1 (over-signing): From admin added above a nic.org.mt signature of one From",
     after_signing(prepend(f"From: {ADMIN}"),
                   include_headers=("from", "to", "subject", "date", "message-id")), REFUSED),
    # --- Chen et al. 5.1 / Shen et al.: header names and lines --------------------------------
    ("Chen et al.: 'FROM:' in upper case beside 'From:'",
     raw_header(f"From: {ATTACKER}", f"FROM: {ADMIN}", signer="attacker"), REFUSED),
    ("Chen et al.: 'From\\t:' (tab before colon) as the only From",
     raw_header(f"From\t: {ADMIN}"), REFUSED),
    ("Chen et al.: first line folded, 'From:' CRLF ' admin' (legal, still needs a signature)",
     raw_header("From:", f" {ADMIN}", signer="attacker"), CONFIRM),
    ("Chen et al.: empty From, then a second From admin",
     raw_header("From:", f"From: {ADMIN}"), REFUSED),
    ("Chen et al.: From admin after a header line without a colon",
     raw_header(f"From: {ATTACKER}", after=[*headers_after_from(), "X-Note this line has no colon",
                                            f"From: {ADMIN}"]), REFUSED),
    ("Chen et al.: From admin only in a MIME part's header", from_only_in_mime_part, REFUSED),
    ("Chen et al.: the admin's signed request forwarded as message/rfc822",
     forwarded_signed_request, REFUSED),
    ("Shen et al.: duplicated Date", after_signing(
        prepend("Date: Mon, 01 Jan 2024 10:00:00 +0000"), ADMIN), REFUSED),
    ("Shen et al.: second Message-ID above the signed one", after_signing(
        prepend(f"Message-ID: {make_msgid(domain='nic.org.mt')}"), ADMIN), REFUSED),
    # --- Mailsploit ---------------------------------------------------------------------
    ("Mailsploit: NUL inside a base64 encoded-word display name",
     from_line(f"=?utf-8?b?{base64.b64encode((ADMIN + chr(0)).encode()).decode()}?= <{ATTACKER}>"), REFUSED),
    ("Mailsploit: line break inside a Q encoded-word display name",
     from_line(f"=?utf-8?q?NIC=0AFrom=3A_admin?= <{ATTACKER}>"), REFUSED),
    ("Mailsploit: encoded words with =00 as the local part",
     from_line(f"=?utf-8?b?{B64_ADMIN}?==?utf-8?Q?=00?=@attacker.example"), REFUSED),
    ("Mailsploit: encoded word as the domain", from_line("admin@=?utf-8?q?nic.org.mt?="), REFUSED),
    # --- legacy address forms (RFC 822, RFC 1123 5.2.16) ---------------------------------------
    ("RFC 822: admin address with a second @domain", from_line(f"{ADMIN}@attacker.example"), REFUSED),
    ("RFC 1123 %-hack", from_line("admin%nic.org.mt@attacker.example"), REFUSED),
    ("UUCP bang path", from_line("nic.org.mt!admin@attacker.example"), REFUSED),
    ("RFC 822 trailing dot on the domain (token to the IANA address, not the dotted one)",
     from_line(f"{ADMIN}.", "attacker"), CONFIRM),
    ("RFC 822 backslash-escaped quote in the display name",
     from_line(f'"NIC \\" <{ADMIN}>" <{ATTACKER}>'), REFUSED),
    ("RFC 822 group syntax holding the admin", from_line(f"undisclosed: {ADMIN};"), REFUSED),
    ("RFC 5322: empty From", raw_header("From: "), REFUSED),
    ("RFC 5322: From with a display name only", from_line("NIC Malta Administrative Contact"), REFUSED),
    # --- IDN homographs -------------------------------------------------------------------
    ("IDN homograph: A-label of 'n\u0456c' (Ukrainian i) in the domain",
     from_line("admin@xn--nc-hoc.org.mt"), REFUSED),
    ("IDN homograph: raw 8-bit Cyrillic a in the local part, no SMTPUTF8",
     from_line("\u0430dmin@nic.org.mt"), REFUSED),
    # --- DKIM: signatures and key records (RFC 6376, RFC 8301; Shen et al.; espoofer) ------------
    ("espoofer server_a3 without NUL: s= pointing into the attacker's zone",
     selector_path_into_attacker_zone, CONFIRM),
    ("espoofer server_a4: quote in d= (Authentication-Results injection)", quote_in_d, CONFIRM),
    ("Shen et al.: nic.org.mt signature without From, attacker.example signature with it",
     two_signatures, CONFIRM),
    ("Shen et al.: broken nic.org.mt signature above a valid attacker.example one",
     broken_admin_signature_over_attackers, CONFIRM),
    ("Shen et al.: forged Authentication-Results and ARC results claiming dkim=pass",
     forged_authentication_results, CONFIRM),
    ("Shen et al.: Sender at attacker.example, signature d= the Sender's domain",
     extra_header(f"Sender: {ATTACKER}", ADMIN), CONFIRM),
    ("RFC 6376 3.5: i= in another domain than d=",
     admin_signed(identity="admin@attacker.example"), CONFIRM),
    ("RFC 6376 3.5: x= earlier than t=",
     admin_signed(timestamp=time.time() + 7200, expire=-3600), CONFIRM),
    ("RFC 6376 3.6.1: key record in testing mode (t=y)",
     admin_signed(selector="testing", key_tags="; t=y"),
     CONFIRM),
    ("RFC 6376 3.6.1: key record allowing sha1 only (h=sha1)",
     admin_signed(selector="sha1only", key_tags="; h=sha1"),
     CONFIRM),
    ("RFC 6376 3.6.1: revoked key (empty p=)",
     admin_signed(selector="revoked", record="v=DKIM1; k=rsa; p="), CONFIRM),
    ("RFC 6376 3.6.1: a=rsa-sha256 checked against a k=ed25519 key",
     ed25519_record_for_rsa_signature, CONFIRM),
    ("RFC 6376 3.5: d= written with a trailing dot", admin_signed(domain=ADMIN_DOMAIN + "."),
     CONFIRM),
    # --- DKIM replay (Wang et al.; RFC 6376 8.6) ---------------------------------------------
    ("Wang et al. DKIM replay: genuine request again with an unsigned Reply-To added",
     replay_with_reply_to, CONFIRM),
    ("Wang et al. DKIM replay: Date and Message-ID unsigned, both renewed",
     replay_with_renewed_date_and_id, CONFIRM),
    ("Wang et al. DKIM replay: signed request without Message-ID, sent twice",
     replay_without_message_id, CONFIRM),
    ("Wang et al. DKIM replay: seen Message-ID on a request for another ccTLD of the same admin",
     same_message_id_other_cctld, CONFIRM),
]


@pytest.mark.parametrize(("name", "build", "expected"), CASES, ids=[c[0] for c in CASES])
def test_spoofing_case_is_not_verified(env: AuthEnv, name: str, build: Build, expected: str) -> None:
    outcome_is_not_verified(env, name, build, expected)


def test_authentication_results_keep_a_hostile_d_out(env: AuthEnv) -> None:
    """espoofer server_a4 once more, reading the evidence the Validator sees: the quote in d=
    neither reaches the Authentication-Results value nor turns into a pass for nic.org.mt."""
    raw, mail_from = quote_in_d(env)
    qid = env.send(raw, mail_from=mail_from)
    assert env.processed(qid)[0] == "done"
    evidence = json.loads(env.d.query(
        "SELECT r.evidence FROM requests r JOIN spool s ON s.id = r.spool_id WHERE s.queue_id = ?",
        (qid,))[0][0])
    ar = evidence["authentication_results"]
    assert "'" not in ar and "attacker.example" not in ar, ar
    assert "dkim=permerror" in ar and "dkim=pass" not in ar, ar
    assert [(s["result"], s["counts"]) for s in evidence["dkim"]] == [("permerror", False)]


# -- refused in DATA: NUL and SMTP smuggling (Longin, SEC Consult, 2023) -------------------------

def smuggled(end: bytes, eol: bytes = b"\r\n") -> Callable[[AuthEnv], bytes]:
    """A harmless message, a fake end of data ``end``, then a second transaction carrying the
    admin's genuine signed request, as a relay that took ``end`` for the end would pass it on."""
    def payload(e: AuthEnv) -> bytes:
        inner = e.signed(request(ADMIN))
        return (request(ATTACKER) + end + b"MAIL FROM:<" + ADMIN.encode() + b">" + eol
                + b"RCPT TO:<" + REQUESTS.encode() + b">" + eol + b"DATA" + eol + inner)

    return payload


def nul_in_selector(e: AuthEnv) -> bytes:
    """espoofer server_a3: s= with a NUL, so that a C resolver looks up the attacker's key."""
    return e.signed(request(ADMIN), selector="sel._domainkey.attacker.example.\x00.any",
                    key=e.attacker_key)


BARE = (550, b"5.6.11")
NUL = (550, b"5.6.0")

DATA_CASES: list[tuple[str, Callable[[AuthEnv], bytes], tuple[int, bytes]]] = [
    ("SMTP smuggling (Longin 2023): LF.CRLF", smuggled(b"\n.\r\n"), BARE),
    ("SMTP smuggling (Longin 2023): CR.CRLF", smuggled(b"\r.\r\n"), BARE),
    ("SMTP smuggling (Longin 2023): CRLF.CR", smuggled(b"\r\n.\r", b"\r"), BARE),
    ("SMTP smuggling (Longin 2023): CRLF.LF", smuggled(b"\r\n.\n", b"\n"), BARE),
    ("SMTP smuggling (Longin 2023): CR.CR", smuggled(b"\r.\r", b"\r"), BARE),
    ("SMTP smuggling (Longin 2023): CRCRLF.CRCRLF", smuggled(b"\r\r\n.\r\r\n"), BARE),
    ("SMTP smuggling (Longin 2023): CRLF NUL.CRLF", smuggled(b"\r\n\x00.\r\n"), NUL),
    ("espoofer server_a3: NUL in s=", nul_in_selector, NUL),
]


@pytest.mark.parametrize(("name", "payload", "reply"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_refused_in_data(env: AuthEnv, name: str, payload: Callable[[AuthEnv], bytes],
                         reply: tuple[int, bytes]) -> None:
    data = payload(env)
    spooled = spool_count(env.d)
    requests = env.d.query("SELECT count(*) FROM requests")[0][0]
    with smtplib.SMTP(env.d.host, env.d.port, timeout=10) as s:
        s.ehlo("x.example")
        s.mail(ATTACKER)
        s.rcpt(REQUESTS)
        s.putcmd("DATA")
        assert s.getreply()[0] == 354
        s.send(data + b"\r\n.\r\n")
        code, text = s.getreply()
        assert (code, text[:len(reply[1])]) == reply, text
        # The session goes on: the smuggled commands were never read as commands.
        assert s.noop()[0] == 250
    assert spool_count(env.d) == spooled
    assert env.d.query("SELECT count(*) FROM requests")[0][0] == requests


# -- the size of the catalogue -----------------------------------------------------------------

def parametrize_ids(test: Callable[..., None]) -> list[str]:
    return [i for m in getattr(test, "pytestmark", []) if m.name == "parametrize"
            for i in m.kwargs["ids"]]


def test_the_catalogue_holds_at_least_40_distinct_cases() -> None:
    theirs = parametrize_ids(test_auth_attacks.test_attack_is_not_verified)
    ours = (parametrize_ids(test_spoofing_case_is_not_verified)
            + parametrize_ids(test_refused_in_data))
    assert len(set(theirs)) == len(theirs) and len(set(ours)) == len(ours)
    assert not set(theirs) & set(ours)
    assert len(ours) >= 25
    assert len(set(theirs) | set(ours)) >= 40
