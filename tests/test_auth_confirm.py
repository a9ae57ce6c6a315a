"""Token confirmation, waiting on failed lookups, and refusal replies, end to end."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import Message

import pytest
from auth_env import ADMIN, ATTACKER, AuthEnv, auth_daemon, request
from daemon_proc import DOMAIN, write_config
from smtp_sink import SmtpSink


def plain_relay(sink: SmtpSink) -> dict[str, str]:
    """The sink as smarthost, without TLS (the STARTTLS and login case has its own test)."""
    return {"outbox.smarthost": f"127.0.0.1:{sink.port}", "outbox.smarthost_tls": "none"}


@pytest.fixture
def env(tmp_path) -> Iterator[AuthEnv]:
    with auth_daemon(tmp_path, **{"worker.retry_base": 0.2}) as e:
        yield e


def confirm_address(mail: Message) -> str:
    reply_to = str(mail["Reply-To"])
    m = re.fullmatch(rf"confirm\+([A-Za-z0-9_-]+)@{re.escape(DOMAIN)}", reply_to)
    assert m, reply_to
    assert len(m.group(1)) >= 22, "at least 128 bits"
    return reply_to


def answer(env: AuthEnv, to: str, from_value: str = ADMIN, mail_from: str = ADMIN,
           headers: tuple[str, ...] = ()) -> str:
    raw = request(from_value, headers=headers, body="Yes, confirmed.\r\n", subject="Re: confirm")
    return env.send(raw, mail_from=mail_from, rcpts=[to])


def cc_request(env: AuthEnv) -> tuple[str, Message]:
    """A request from an SSC with the admin only in Cc: the admin is asked to confirm."""
    raw = env.signed(request("ssc@nic.org.mt", headers=[f"Cc: {ADMIN}", f"Reply-To: {ATTACKER}"]))
    qid = env.send(raw, mail_from="ssc@nic.org.mt")
    assert env.processed(qid)[0] == "done"
    assert env.requests_for(qid) == [("mt", "token", "awaiting-confirmation", ADMIN)]
    mail = env.delivered(1)[-1]
    return qid, mail


def deferred(env: AuthEnv, qid: str) -> None:
    """Wait until the message was put back to wait (its deferral committed)."""
    env.d.wait_for("message processed", lambda r: r.get("queue_id") == qid and r.get("status") == "received")


def test_cc_request_is_confirmed_by_the_admin_with_the_token(env: AuthEnv) -> None:
    qid, mail = cc_request(env)
    # The token went to IANA's address, not to From, Reply-To or the envelope sender.
    assert mail["X-Envelope-To"] == f"<{ADMIN}>"
    assert str(mail["To"]) == ADMIN
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "ccTLD: mt" in mail.get_payload(decode=True).decode()
    to = confirm_address(mail)
    token = to.split("+", 1)[1].split("@")[0]
    # Only the hash is stored.
    assert env.d.query("SELECT count(*) FROM tokens WHERE hash = ?", (token,)) == [(0,)]
    assert all(token not in str(r) for r in env.d.query("SELECT * FROM tokens"))

    cid = answer(env, to)
    status, reason = env.processed(cid)
    assert status == "done", reason
    assert env.requests_for(qid) == [("mt", "token", "awaiting-validator", ADMIN)]

    # Single use: the same token again does nothing more and says so.
    again = answer(env, to)
    status, reason = env.processed(again)
    assert status == "rejected" and "already used" in reason


def test_token_answer_from_another_address_does_not_count(env: AuthEnv) -> None:
    qid, mail = cc_request(env)
    to = confirm_address(mail)
    for from_value in (ATTACKER, "ssc@nic.org.mt", f"NIC <{ADMIN}> , {ATTACKER}"):
        cid = answer(env, to, from_value=from_value, mail_from=ATTACKER)
        status, reason = env.processed(cid)
        assert status == "rejected", (from_value, reason)
    assert env.requests_for(qid)[0][2] == "awaiting-confirmation"
    # The admin can still confirm afterwards: failed attempts do not burn the token.
    cid = answer(env, to)
    assert env.processed(cid)[0] == "done"
    assert env.requests_for(qid)[0][2] == "awaiting-validator"


@pytest.mark.parametrize(("headers", "mail_from"), [
    (("Auto-Submitted: auto-replied",), ADMIN),
    (("Precedence: bulk",), ADMIN),
    ((), ""),
])
def test_robots_and_bounces_never_confirm(env: AuthEnv, headers: tuple[str, ...], mail_from: str) -> None:
    qid, mail = cc_request(env)
    cid = answer(env, confirm_address(mail), headers=headers, mail_from=mail_from)
    status, reason = env.processed(cid)
    assert status == "rejected" and "automatic" in reason
    assert env.requests_for(qid)[0][2] == "awaiting-confirmation"


def test_unknown_token_is_refused_with_a_reply(env: AuthEnv) -> None:
    cid = answer(env, f"confirm+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@{DOMAIN}", mail_from=ADMIN)
    status, reason = env.processed(cid)
    assert status == "rejected" and "unknown token" in reason
    reply = env.delivered(1)[-1]
    assert reply["X-Envelope-To"] == f"<{ADMIN}>"
    assert reply["X-Envelope-From"] == "<>"
    assert reply["Auto-Submitted"] == "auto-replied"


def test_dns_failure_makes_the_request_wait_then_it_is_verified(env: AuthEnv) -> None:
    env.dns.servfail("sel._domainkey.nic.org.mt")
    qid = env.send(env.signed(request(ADMIN)))
    deferred(env, qid)
    assert env.d.query("SELECT status FROM spool WHERE queue_id = ?", (qid,)) == [("received",)]
    assert env.requests_for(qid) == []
    mark = env.d.mark()
    env.publish("sel", "nic.org.mt", env.admin_key)  # DNS works again
    env.d.wait_for("message processed", lambda r: r.get("queue_id") == qid and r.get("status") == "done",
                   after=mark)
    assert env.requests_for(qid) == [("mt", "dkim", "awaiting-validator", ADMIN)]
    attempts = env.d.query("SELECT attempts FROM spool WHERE queue_id = ?", (qid,))[0][0]
    assert attempts == 1, "waiting does not use up attempts"


def test_iana_outage_makes_the_request_wait_never_refuse(env: AuthEnv) -> None:
    env.rdap.mode = "500"
    env.whois.mode = "huge"
    qid = env.send(env.signed(request(ATTACKER)), mail_from=ATTACKER)  # even a stranger waits
    deferred(env, qid)
    assert env.requests_for(qid) == []
    assert env.outbox_rows() == []  # no refusal sent on the strength of a failed lookup
    mark = env.d.mark()
    env.rdap.mode = "normal"
    env.whois.mode = "normal"
    env.d.wait_for("message processed",
                   lambda r: r.get("queue_id") == qid and r.get("status") == "rejected", after=mark)
    status, reason = env.processed(qid)
    assert status == "rejected" and "must come from, or be copied" in reason


def test_refusal_replies_are_limited_to_one_per_sender_per_day(env: AuthEnv) -> None:
    for i in range(3):
        qid = env.send(request(ATTACKER, subject=f"try {i}"), mail_from=ATTACKER)
        assert env.processed(qid)[0] == "rejected"
    refusals = env.outbox_rows("refusal")
    assert refusals == [("refusal", "", ATTACKER)]
    reply = env.delivered(1)[-1]
    body = reply.get_payload(decode=True).decode()
    assert "administrative contact" in body and f"help@{DOMAIN}" in body  # how to do it right
    assert ADMIN not in body and "nic.org.mt" not in body  # nothing about the roster or IANA data


@pytest.mark.parametrize(("headers", "mail_from"), [
    (("Auto-Submitted: auto-generated",), ATTACKER),
    ((), ""),
])
def test_no_reply_to_robots_or_the_null_sender(env: AuthEnv, headers: tuple[str, ...],
                                               mail_from: str) -> None:
    qid = env.send(request(ATTACKER, headers=headers), mail_from=mail_from)
    assert env.processed(qid)[0] == "rejected"
    assert env.outbox_rows() == []


def cc_request_to_deliver(env: AuthEnv) -> None:
    """A request from an SSC with the admin in Cc, whose confirmation mail then goes out."""
    qid = env.send(env.signed(request("ssc@nic.org.mt", headers=[f"Cc: {ADMIN}"])),
                   mail_from="ssc@nic.org.mt")
    assert env.processed(qid)[0] == "done"


def test_outgoing_mail_goes_to_a_real_smtp_sink_and_waits_out_its_failures(tmp_path) -> None:
    sink = SmtpSink()
    sink.reply = "451 4.3.0 try later"
    try:
        with auth_daemon(tmp_path, **plain_relay(sink), **{"worker.retry_base": 0.2}) as env:
            cc_request_to_deliver(env)
            env.d.wait_for("delivery deferred")
            assert env.d.query("SELECT status FROM outbox_deliveries") == [("queued",)]
            sink.reply = "250 2.0.0 OK"  # the smarthost recovers; a later try goes through
            got = sink.wait(1)
            assert got[0].rcpt_tos == [ADMIN]
            assert got[0].mail_from.startswith("bounces+r") and got[0].mail_from.endswith(f"@{DOMAIN}")
            assert b"confirm+" in got[0].data
            env.d.wait_for("mail delivered", lambda r: r.get("how") == "relayed")
            assert env.d.query("SELECT status FROM outbox_deliveries") == [("sent",)]
    finally:
        sink.stop()


def test_permanent_refusal_by_the_smarthost_is_recorded_not_dropped(tmp_path) -> None:
    sink = SmtpSink()
    sink.reply = "550 5.1.1 no such user"
    try:
        with auth_daemon(tmp_path, **plain_relay(sink)) as env:
            cc_request_to_deliver(env)
            rec = env.d.wait_for("delivery refused for good")
            assert rec["level"] == "error"
            rows = env.d.query("SELECT status, last_error FROM outbox_deliveries")
            assert rows[0][0] == "failed" and "550" in rows[0][1]
    finally:
        sink.stop()


def test_relaxed_alignment_lets_a_subdomain_signature_count(tmp_path) -> None:
    with auth_daemon(tmp_path, **{"dkim.alignment": "relaxed"}) as env:
        env.publish("sel", "mail.nic.org.mt", env.admin_key)
        env.publish("sel", "org.mt", env.attacker_key)
        qid = env.send(env.signed(request(ADMIN), "mail.nic.org.mt"))
        assert env.processed(qid)[0] == "done"
        assert env.requests_for(qid) == [("mt", "dkim", "awaiting-validator", ADMIN)]
        # org.mt is a public suffix: a signature there is nobody's organisation.
        qid = env.send(env.signed(request(ADMIN), "org.mt", env.attacker_key))
        assert env.processed(qid)[0] == "done"
        assert env.requests_for(qid) == [("mt", "token", "awaiting-confirmation", ADMIN)]


def test_sighup_switches_outgoing_mail_to_a_new_smarthost(tmp_path) -> None:
    import signal

    sink = SmtpSink()
    try:
        with auth_daemon(tmp_path) as env:
            d = env.d
            cc_request_to_deliver(env)
            d.wait_for("mail delivered", lambda r: r.get("how") == "written")
            write_config(d.config_path, {**d.settings, **plain_relay(sink)})
            mark = d.mark()
            d.signal(signal.SIGHUP)
            d.wait_for("worker reloaded", after=mark)
            cc_request_to_deliver(env)
            d.wait_for("mail delivered", lambda r: r.get("how") == "relayed", after=mark)
            assert [r.rcpt_tos for r in sink.wait(1)] == [[ADMIN]]
    finally:
        sink.stop()


def test_a_flood_forging_the_admin_asks_them_only_so_many_times(tmp_path) -> None:
    # Unsigned requests From the IANA admin's own address (anyone can write it): each would
    # ask the admin to confirm. Only auth.max_open_confirmations of them wait at once; the
    # others are refused without a mail to the admin, so our daemon cannot be made to flood
    # the mailbox of a ccTLD's administrative contact.
    with auth_daemon(tmp_path, **{"auth.max_open_confirmations": 2}) as env:
        qids = [env.send(request(ADMIN), mail_from=ADMIN) for _ in range(4)]
        outcomes = [env.processed(q) for q in qids]
        assert sorted(status for status, _ in outcomes) == ["done", "done", "rejected", "rejected"], outcomes
        assert all(reason == ".mt: already 2 requests waiting for the IANA administrative contact's"
                   " confirmation; no more is asked" for status, reason in outcomes if status == "rejected")
        assert env.d.query("SELECT count(*) FROM requests WHERE state = 'awaiting-confirmation'") == [(2,)]
        mails = env.delivered(2)
        assert [m["X-Envelope-To"] for m in mails] == [f"<{ADMIN}>"] * 2
        # Answering one frees a place: the next forged request asks again.
        cid = answer(env, confirm_address(mails[0]))
        assert env.processed(cid)[0] == "done"
        again = env.send(request(ADMIN), mail_from=ADMIN)
        assert env.processed(again)[0] == "done"
        assert env.d.query("SELECT count(*) FROM outbox_deliveries d JOIN outbox_messages m"
                           " ON m.id = d.message_id WHERE m.purpose = 'confirmation' AND d.rcpt = ?",
                           (ADMIN,)) == [(3,)]


def test_the_default_cap_is_three_waiting_confirmations(tmp_path) -> None:
    with auth_daemon(tmp_path, **{"auth.max_open_confirmations": None}) as env:
        outcomes = [env.processed(env.send(request(ADMIN), mail_from=ADMIN)) for _ in range(4)]
        assert [status for status, _ in outcomes] == ["done", "done", "done", "rejected"], outcomes
