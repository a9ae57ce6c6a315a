"""Every attack of docs/security.md, sent over SMTP to the running daemon: none is verified.

Each case ends either refused (no request at all) or needing confirmation, with the token
going to the address IANA lists, never to one taken from the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from auth_env import ADMIN, ADMIN_DOMAIN, ATTACKER, REQUESTS, SELECTOR, AuthEnv, auth_daemon, form, request
from dkim_sign import rsa_key


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthEnv]:
    with auth_daemon(tmp_path_factory.mktemp("auth"), **{"worker.retry_base": 0.2}) as e:
        yield e


REFUSED, CONFIRM = "refused", "confirm"

Build = Callable[[AuthEnv], tuple[bytes, str]]
"""An attack: the message and the envelope sender."""


def from_line(value: str, signer: str = "attacker") -> Build:
    def build(e: AuthEnv) -> tuple[bytes, str]:
        raw = request(value)
        if signer == "attacker":
            raw = e.signed(raw, "attacker.example", e.attacker_key)
        elif signer == "admin":
            raw = e.signed(raw)
        return raw, ATTACKER

    return build


def signed_admin(**sign_kw: object) -> Build:
    def build(e: AuthEnv) -> tuple[bytes, str]:
        return e.signed(request(ADMIN), **sign_kw), ADMIN  # type: ignore[arg-type]

    return build


def appended_after_l(e: AuthEnv) -> tuple[bytes, str]:
    raw = e.signed(request(ADMIN), length=True)
    extra = b"SSC: third\r\nFirst name: Eve\r\nLast name: Attacker\r\nPhone: +356 2133 4457\r\n" \
            b"Email: eve@attacker.example\r\n"
    return raw + extra, ADMIN


def short_key(e: AuthEnv) -> tuple[bytes, str]:
    key = rsa_key(1024)
    e.publish("short", ADMIN_DOMAIN, key)
    return e.signed(request(ADMIN), key=key, selector="short"), ADMIN


def body_changed(e: AuthEnv) -> tuple[bytes, str]:
    raw = e.signed(request(ADMIN))
    return raw.replace(b"First name: Jane", b"First name: Eve"), ADMIN


def from_changed_after_signing(e: AuthEnv) -> tuple[bytes, str]:
    raw = e.signed(request("someone@nic.org.mt"))
    return raw.replace(b"From: someone@nic.org.mt", b"From: admin@nic.org.mt"), ATTACKER


def extra_header(header: str, from_value: str = ATTACKER, sign_as: str = "attacker") -> Build:
    def build(e: AuthEnv) -> tuple[bytes, str]:
        raw = request(from_value, headers=[header])
        if sign_as == "attacker":
            return e.signed(raw, "attacker.example", e.attacker_key), ATTACKER
        return e.signed(raw), ATTACKER

    return build


def admin_in_body(e: AuthEnv) -> tuple[bytes, str]:
    raw = request(ATTACKER, body=form() + f"From: {ADMIN}\r\nCc: {ADMIN}\r\n")
    return e.signed(raw, "attacker.example", e.attacker_key), ATTACKER


def admin_as_envelope_only(e: AuthEnv) -> tuple[bytes, str]:
    return e.signed(request(ATTACKER), "attacker.example", e.attacker_key), ADMIN


def two_from_headers(e: AuthEnv) -> tuple[bytes, str]:
    raw = request(ADMIN, headers=[f"From: {ATTACKER}"])
    return e.signed(raw, "attacker.example", e.attacker_key), ATTACKER


def old_date(e: AuthEnv) -> tuple[bytes, str]:
    return e.signed(request(ADMIN, date="Mon, 01 Jan 2024 10:00:00 +0000")), ADMIN


def future_date(e: AuthEnv) -> tuple[bytes, str]:
    return e.signed(request(ADMIN, date="Mon, 01 Jan 2035 10:00:00 +0000")), ADMIN


def subdomain_signature(e: AuthEnv) -> tuple[bytes, str]:
    e.publish(SELECTOR, "mail.nic.org.mt", e.admin_key)
    return e.signed(request(ADMIN), "mail.nic.org.mt"), ADMIN


def parent_domain_from(e: AuthEnv) -> tuple[bytes, str]:
    # Signed by the org domain, From a look-alike subdomain address: not the IANA address.
    return e.signed(request("admin@nic.org.mt.attacker.example"), "attacker.example",
                    e.attacker_key), ATTACKER


ATTACKS: list[tuple[str, Build, str]] = [
    ("two From headers", two_from_headers, REFUSED),
    ("From folded over two addresses", from_line(f"{ADMIN},\r\n {ATTACKER}"), REFUSED),
    ("From with comment", from_line(f"{ADMIN} (NIC Malta)", "admin"), REFUSED),
    ("comment holding the admin address", from_line(f"({ADMIN}) {ATTACKER}"), REFUSED),
    ("quoted local part", from_line(f'"{ADMIN}"@attacker.example'), REFUSED),
    ("quoted local part with space", from_line('"admin nic"@nic.org.mt', "admin"), REFUSED),
    ("display name holding the address", from_line(f'"{ADMIN}" <{ATTACKER}>'), REFUSED),
    ("bare display name holding the address", from_line(f"{ADMIN} <{ATTACKER}>"), REFUSED),
    ("encoded word hiding @", from_line(f"=?utf-8?b?YWRtaW5AbmljLm9yZy5tdA==?= <{ATTACKER}>"), REFUSED),
    ("encoded word in the address", from_line("=?utf-8?q?admin?=@nic.org.mt"), REFUSED),
    ("encoded word with Q and @", from_line(f"=?utf-8?q?admin=40nic.org.mt?= <{ATTACKER}>"), REFUSED),
    ("zero-width space in address", from_line("admin\u200b@nic.org.mt"), REFUSED),
    ("bidi override in display name", from_line(f"\u202eNIC <{ATTACKER}>"), REFUSED),
    ("Cyrillic homoglyph in domain", from_line("admin@nic.\u043erg.mt"), REFUSED),
    ("full-width at sign", from_line("admin\uff20nic.org.mt"), REFUSED),
    ("route syntax", from_line(f"<@attacker.example:{ADMIN}>"), REFUSED),
    ("two angle addresses", from_line(f"NIC <{ADMIN}> <{ATTACKER}>"), REFUSED),
    ("text after the address", from_line(f"<{ADMIN}>{ATTACKER}"), REFUSED),
    ("d= is not the From domain", from_line(ADMIN, "attacker"), CONFIRM),
    ("d= is a subdomain (strict alignment)", subdomain_signature, CONFIRM),
    ("l= with appended content", appended_after_l, CONFIRM),
    ("l= without appended content", signed_admin(length=True), CONFIRM),
    ("rsa-sha1", signed_admin(algorithm="rsa-sha1"), CONFIRM),
    ("1024-bit key", short_key, CONFIRM),
    ("signature does not cover From", signed_admin(include_headers=("to", "subject", "date")), CONFIRM),
    ("expired signature", signed_admin(expire=-3600, timestamp=None), CONFIRM),
    ("body changed after signing", body_changed, CONFIRM),
    ("From changed after signing", from_changed_after_signing, CONFIRM),
    ("old Date (replay window)", old_date, CONFIRM),
    ("Date in the future", future_date, CONFIRM),
    ("no signature at all", from_line(ADMIN, "none"), CONFIRM),
    ("admin only in Bcc", extra_header(f"Bcc: {ADMIN}"), REFUSED),
    ("admin only in Reply-To", extra_header(f"Reply-To: {ADMIN}"), REFUSED),
    ("admin only in Sender", extra_header(f"Sender: {ADMIN}"), REFUSED),
    ("admin only in To", extra_header(f"Resent-From: {ADMIN}"), REFUSED),
    ("admin only in the envelope", admin_as_envelope_only, REFUSED),
    ("admin only in the body", admin_in_body, REFUSED),
    ("look-alike domain", parent_domain_from, REFUSED),
    ("two Sender headers", extra_header(f"Sender: {ADMIN}\r\nSender: {ATTACKER}", ADMIN, "admin"), REFUSED),
    ("Reply-To pointing elsewhere, signed From admin, Cc path",
     extra_header(f"Reply-To: {ATTACKER}\r\nCc: {ADMIN}", "ssc@nic.org.mt", "admin"), CONFIRM),
]


@pytest.mark.parametrize(("name", "build", "expected"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_not_verified(env: AuthEnv, name: str, build: Build, expected: str) -> None:
    raw, mail_from = build(env)
    before = len(env.outbox_rows("confirmation"))
    qid = env.send(raw, mail_from=mail_from)
    status, reason = env.processed(qid)
    made = env.requests_for(qid)
    assert all(auth != "dkim" for _, auth, _, _ in made), (made, reason)
    if expected == REFUSED:
        assert status == "rejected", reason
        assert made == []
    else:
        assert status == "done", reason
        assert made == [("mt", "token", "awaiting-confirmation", ADMIN)]
        confirmations = env.outbox_rows("confirmation")[before:]
        # The token goes to the address IANA lists, and only there.
        assert [rcpt for _, _, rcpt in confirmations] == [ADMIN]


def test_properly_signed_request_from_the_admin_is_verified(env: AuthEnv) -> None:
    raw = env.signed(request(ADMIN))
    qid = env.send(raw)
    status, reason = env.processed(qid)
    assert status == "done", reason
    assert env.requests_for(qid) == [("mt", "dkim", "awaiting-validator", ADMIN)]
    evidence = env.d.query("SELECT evidence FROM requests r JOIN spool s ON s.id = r.spool_id"
                           " WHERE s.queue_id = ?", (qid,))[0][0]
    assert "dkim=pass" in evidence and "header.d=nic.org.mt" in evidence
    assert '"source": "rdap"' in evidence

    # The same message again is a replay: no longer verified, a token is asked for.
    qid2 = env.send(raw)
    status, reason = env.processed(qid2)
    assert status == "done", reason
    assert env.requests_for(qid2) == [("mt", "token", "awaiting-confirmation", ADMIN)]


def test_upper_case_from_matches_the_iana_address(env: AuthEnv) -> None:
    raw = env.signed(request("NIC Admin <ADMIN@NIC.ORG.MT>"))
    qid = env.send(raw)
    assert env.processed(qid)[0] == "done"
    assert env.requests_for(qid)[0][1:3] == ("dkim", "awaiting-validator")


def test_ed25519_signature_counts(env: AuthEnv) -> None:
    from dkim_sign import ed25519_key

    key = ed25519_key()
    env.publish("ed", ADMIN_DOMAIN, key)
    qid = env.send(env.signed(request(ADMIN), key=key, selector="ed"))
    assert env.processed(qid)[0] == "done"
    assert env.requests_for(qid)[0][1] == "dkim"


def test_a_request_naming_several_cctlds_is_refused_whole(env: AuthEnv) -> None:
    # One request, one ccTLD: a mail naming its own ccTLD and another's changes neither, so
    # the admin of .mt cannot slip in a change for a ccTLD whose admin did not sign it.
    body = form().replace("ccTLD: mt", "ccTLD: mt\r\nccTLD: xn--90ae")
    qid = env.send(env.signed(request(ADMIN, body=body)))
    status, reason = env.processed(qid)
    assert status == "rejected"
    assert env.requests_for(qid) == []
    assert "line 3: a second ccTLD line says 'xn--90ae', line 2 says 'mt'" in reason
    assert "Send one request per action and ccTLD" in reason


def test_request_naming_no_cctld_is_refused_with_how_to_fix_it(env: AuthEnv) -> None:
    qid = env.send(env.signed(request(ADMIN, body="Please add Jane.\r\n")))
    status, reason = env.processed(qid)
    assert status == "rejected"
    assert "the request does not name its ccTLD. Add a line such as 'ccTLD: mt'" in reason


def test_message_smuggled_inside_data_is_refused_at_smtp(env: AuthEnv) -> None:
    import smtplib

    smuggled = (request(ATTACKER) + b"\n.\nMAIL FROM:<" + ADMIN.encode() + b">\nRCPT TO:<"
                + REQUESTS.encode() + b">\nDATA\n" + env.signed(request(ADMIN)))
    with smtplib.SMTP(env.d.host, env.d.port, timeout=10) as s:
        s.ehlo("x.example")
        s.mail(ATTACKER)
        s.rcpt(REQUESTS)
        s.putcmd("DATA")
        assert s.getreply()[0] == 354
        s.send(smuggled + b"\r\n.\r\n")
        code, text = s.getreply()
    assert (code, text[:6]) == (550, b"5.6.11")


def test_two_copies_of_a_signed_request_in_one_batch_are_not_both_verified(env: AuthEnv) -> None:
    import smtplib

    raw = env.signed(request(ADMIN))
    qids = []
    # Both copies in one SMTP session, so the worker most likely takes them in one batch;
    # whatever the batching, only one may count as verified.
    with smtplib.SMTP(env.d.host, env.d.port, timeout=10) as s:
        s.ehlo("mail.nic.org.mt")
        for _ in range(2):
            s.mail(ADMIN)
            s.rcpt(REQUESTS)
            code, text = s.data(raw)
            assert code == 250
            qids.append(text.decode().rsplit(" ", 1)[1])
    for q in qids:
        env.d.wait_for("message processed",
                       lambda r, q=q: r.get("queue_id") == q and r.get("status") == "done")
    auths = sorted(env.requests_for(q)[0][1] for q in qids)
    assert auths == ["dkim", "token"]
