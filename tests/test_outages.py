"""Outages, end to end: DNS, RDAP, WHOIS or the smarthost down, and the daemon waits them out.

Every case follows one story against the real daemon and real loopback servers. A properly
DKIM-signed request from the IANA administrative contact arrives over SMTP and gets 250 (intake
never depends on a lookup). While a service it needs is down, nothing is decided: no request
row, no refusal, no token mail; the spooled message waits with a retry time and a logged reason
that names what failed, and is tried again on its own. Then the service comes back on the same
port, and the request ends verified: awaiting the Validator, the Validator's mail in the outbox.
For the smarthost, the mail waits in the outbox instead, and is delivered once the smarthost
accepts; a permanent refusal is recorded as failed with its reason, never retried, never lost.

The retry intervals are made short through configuration (worker.retry_base, retry_max), so the
waits below are on log lines and database rows, never on the clock.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from auth_env import ADMIN, AuthEnv, auth_daemon, request
from daemon_proc import DOMAIN, DaemonProc
from dkim_sign import dns_name
from smtp_sink import SmtpSink

from tldops_mta.daemon import health
from tldops_mta.policy.texts import counted

VALIDATOR = f"validator@{DOMAIN}"  # the configured default: its mail stays in the local outbox
KEY_NAME = dns_name("sel", "nic.org.mt")
FAST = {
    "worker.retry_base": 0.3,  # a waiting request is tried again after this long
    "worker.retry_max": 1.0,   # and a deferred delivery after at most this long
    "dns.timeout": 0.5,        # a DNS server that never answers costs this much per try
    "iana.timeout": 0.5,       # as do RDAP and WHOIS servers that never answer
}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AuthEnv]:
    with auth_daemon(tmp_path, **FAST) as e:
        yield e


# -- the story's steps ----------------------------------------------------------------------


def send_request(env: AuthEnv) -> str:
    """The admin's DKIM-signed request; ``send`` asserts the 250 (intake asks nobody)."""
    return env.send(env.signed(request(ADMIN)))


def matching(d: DaemonProc, event: str, where: Callable[[dict[str, Any]], bool], n: int,
             timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until ``event`` matching ``where`` was logged ``n`` times; those records."""
    deadline = time.monotonic() + timeout
    while True:
        seen = d.mark()
        found = [r for r in d.lines[:seen] if r.get("event") == event and where(r)]
        if len(found) >= n:
            return found
        d.wait_for(event, where, after=seen, timeout=max(0.0, deadline - time.monotonic()))


def assert_waits(env: AuthEnv, qid: str, *failed: str) -> dict[str, Any]:
    """The request was not decided: it waits, has been tried again on its own, and says why.

    ``failed``: texts of which the logged reason must hold one, naming what failed; the
    spool's record of each wait holds it too. Returns the last "request decided" record."""
    decided = matching(env.d, "request decided",
                       lambda r: r.get("queue_id") == qid and r.get("verdict") == "wait", 2)
    assert not [r for r in env.d.events("request decided")
                if r.get("queue_id") == qid and r.get("verdict") != "wait"], "decided on a failed lookup"
    why = decided[-1]["failed"]
    assert any(f in why for f in failed), why
    # A second try means the first one's wait was committed (a message is claimed only
    # from 'received'): its record is in the spool's history, with what failed.
    history = env.d.query("SELECT e.at, e.status, e.reason FROM spool_events e JOIN spool s"
                          " ON s.id = e.spool_id WHERE s.queue_id = ? ORDER BY e.rowid", (qid,))
    assert {st for _, st, _ in history} == {"processing", "received"}, history
    waits = [reason for _, st, reason in history if st == "received"]
    assert waits and all(r.startswith("waiting: .mt: ") and any(f in r for f in failed) for r in waits), waits
    # Each try after a wait came no sooner than the retry time: counted from the end of the
    # failed lookups, not from before them (lookups that time out must not eat the wait).
    gaps = [b[0] - a[0] for a, b in pairwise(history)
            if (a[1], b[1]) == ("received", "processing")]
    assert gaps and min(gaps) >= 0.8 * FAST["worker.retry_base"], gaps
    [(status, next_at, updated, attempts)] = env.d.query(
        "SELECT status, next_attempt_at, updated_at, attempts FROM spool WHERE queue_id = ?", (qid,))
    if status == "received":  # between two tries (not in one): the next one is timed
        assert next_at > updated, (next_at, updated)
    assert attempts <= 1, "waiting must not use up attempts"
    assert env.requests_for(qid) == [], "a request row on the strength of a failed lookup"
    assert env.outbox_rows() == [], "mail (a refusal, a token) on the strength of a failed lookup"
    return decided[-1]


def assert_verified(env: AuthEnv, qid: str, after: int) -> dict[str, Any]:
    """The request resumed on its own (logged after index ``after``) and ended verified: it
    awaits the Validator, whose mail is in the outbox. Returns the request's evidence."""
    env.d.wait_for("message processed", lambda r: r.get("queue_id") == qid and r.get("status") == "done",
                   after=after, timeout=20)
    assert env.requests_for(qid) == [("mt", "dkim", "awaiting-validator", ADMIN)]
    assert [rcpt for _, _, rcpt in env.outbox_rows("validator")] == [VALIDATOR]
    assert env.outbox_rows("refusal") == [] and env.outbox_rows("confirmation") == []
    [(attempts,)] = env.d.query("SELECT attempts FROM spool WHERE queue_id = ?", (qid,))
    assert attempts == 1, "the waits did not count as attempts"
    [(evidence,)] = env.d.query("SELECT evidence FROM requests r JOIN spool s ON s.id = r.spool_id"
                                " WHERE s.queue_id = ?", (qid,))
    e: dict[str, Any] = json.loads(evidence)
    assert [(s["domain"], s["result"], s["counts"]) for s in e["dkim"]] == [("nic.org.mt", "pass", True)]
    return e


def validator_mail_text(env: AuthEnv) -> str:
    """The Validator's mail, as the local outbox wrote it."""
    rec = env.d.wait_for("mail delivered", lambda r: r.get("purpose") == "validator")
    assert rec["how"] == "written"
    [path] = [p for p in env.outgoing_dir().glob("*.eml") if VALIDATOR in p.name]
    body = message_from_bytes(path.read_bytes()).get_payload(decode=True)
    assert isinstance(body, bytes)
    return body.decode()


# -- DNS: the DKIM key cannot be fetched ------------------------------------------------------


def dns_down(env: AuthEnv, how: str) -> None:
    if how == "stopped":
        env.dns.stop()  # the port is closed: queries are refused
    elif how == "servfail":
        env.dns.servfail(KEY_NAME)
    else:
        env.dns.never_answer(KEY_NAME)


def dns_back(env: AuthEnv, how: str) -> None:
    if how == "stopped":
        env.dns.start()  # on the same port, the zone as it was
    else:
        env.publish("sel", "nic.org.mt", env.admin_key)  # answers again


@pytest.mark.parametrize(("how", "failed"), [
    # A closed UDP port answers with ICMP "port unreachable", which the resolver may see
    # (refused) or miss (then it times out): either way the lookup failed.
    ("stopped", ("no server answered", "no answer within 0.5 s")),
    ("servfail", ("SERVFAIL",)),
    ("silent", ("no answer within 0.5 s",)),
], ids=["stopped", "servfail", "silent"])
def test_dns_down_the_request_waits_not_bad_signature_then_is_verified(
        env: AuthEnv, how: str, failed: tuple[str, ...]) -> None:
    dns_down(env, how)
    qid = send_request(env)
    rec = assert_waits(env, qid, *failed)
    assert f"DKIM key {KEY_NAME}: DNS lookup failed: " in rec["failed"]
    assert "DKIM key could not be fetched" in rec["reason"]
    if how != "stopped":
        env.dns.wait_for_query(KEY_NAME)  # the key was asked for, and the answer was a failure
    mark = env.d.mark()
    dns_back(env, how)
    assert_verified(env, qid, mark)


# -- IANA: RDAP and WHOIS -------------------------------------------------------------------


def both_down(env: AuthEnv, rdap: str, whois: str) -> None:
    if rdap == "stopped":
        env.rdap.down()
    else:
        env.rdap.mode = rdap
    if whois == "stopped":
        env.whois.down()
    else:
        env.whois.mode = whois


@pytest.mark.parametrize(("rdap", "whois", "failed"), [
    ("stopped", "stopped", "rdap: ConnectError"),
    ("500", "slow", "rdap: HTTP 500; whois: no complete answer within 0.5 s"),
    ("garbage", "stopped", "rdap: RDAP answer is not JSON"),
], ids=["both-stopped", "rdap-500-whois-silent", "rdap-garbage-whois-stopped"])
def test_rdap_and_whois_down_without_cache_the_request_waits_then_is_verified(
        env: AuthEnv, rdap: str, whois: str, failed: str) -> None:
    both_down(env, rdap, whois)
    qid = send_request(env)
    rec = assert_waits(env, qid, failed)
    assert "whois: " in rec["failed"] and "no cached answer" in rec["failed"]
    assert "IANA could not be asked" in rec["reason"]
    assert env.d.query("SELECT count(*) FROM iana_contacts WHERE status = 'ok'") == [(0,)]
    mark = env.d.mark()
    env.rdap.mode = env.whois.mode = "normal"
    env.rdap.up()
    env.whois.up()
    e = assert_verified(env, qid, mark)
    assert (e["iana"]["source"], e["iana"]["from_cache"], e["iana"]["email"]) == ("rdap", False, ADMIN)


@pytest.mark.parametrize(("rdap", "logged"), [
    ("stopped", "failed"),
    ("503", "failed"),
    ("garbage", "unreadable"),
], ids=["rdap-stopped", "rdap-503", "rdap-garbage"])
def test_rdap_down_whois_up_decides_from_whois_and_the_evidence_says_so(
        env: AuthEnv, rdap: str, logged: str) -> None:
    both_down(env, rdap, "normal")
    qid = send_request(env)
    e = assert_verified(env, qid, 0)
    assert (e["iana"]["source"], e["iana"]["from_cache"], e["iana"]["email"]) == ("whois", False, ADMIN)
    assert not [r for r in env.d.events("request decided") if r.get("queue_id") == qid
                and r.get("verdict") == "wait"], "WHOIS answered: nothing to wait for"
    assert env.whois.hits == ["mt"]
    [failure] = [r for r in env.d.events("iana_lookup") if r.get("source") == "rdap"]
    assert failure["outcome"] == logged and failure["reason"]
    kept = env.d.query("SELECT source, status FROM iana_contacts ORDER BY id")
    assert kept == ([("rdap", "unreadable")] if logged == "unreadable" else []) + [("whois", "ok")]
    text = validator_mail_text(env)  # what the Validator reads the decision rested on
    assert "IANA (whois, answer of" in text and f"administrative contact {ADMIN}" in text


# -- IANA down with a cached answer -----------------------------------------------------------

AGE = 3600.0
"""How old the cached answer is made: beyond fresh_for, so IANA is asked first."""


def cache_an_answer(env: AuthEnv, age: float) -> float:
    """IANA's answer as the CLI fetches it into the daemon's cache, then aged; its time."""
    subprocess.run([sys.executable, "-m", "tldops_mta", "iana", "show", "mt", "--config",
                    str(env.d.config_path)], check=True, capture_output=True, timeout=60)
    assert env.d.execute("UPDATE iana_contacts SET fetched_at = fetched_at - ?", (age,)) == 1
    [(fetched_at,)] = env.d.query("SELECT fetched_at FROM iana_contacts")
    return float(fetched_at)


@pytest.mark.parametrize("usable_for", [AGE / 6, AGE * 2], ids=["beyond-usable_for", "within-usable_for"])
def test_iana_down_with_a_cached_answer(tmp_path: Path, usable_for: float) -> None:
    settings = {**FAST, "iana.fresh_for": 60.0, "iana.usable_for": usable_for}
    with auth_daemon(tmp_path, **settings) as env:
        fetched_at = cache_an_answer(env, AGE)
        env.rdap.down()
        env.whois.down()
        qid = send_request(env)
        if usable_for > AGE:  # young enough to stand in for IANA: decided at once from it
            e = assert_verified(env, qid, 0)
            assert e["iana"] == {"email": ADMIN, "status": "ok", "source": "rdap",
                                 "fetched_at": fetched_at, "from_cache": True}
            [used] = [r for r in env.d.events("iana_lookup") if r.get("source") == "cache"]
            assert "IANA gave no answer" in used["reason"] and used["age"] >= AGE
            assert "from cache" in validator_mail_text(env)
            return
        assert_waits(env, qid, f"no cached answer younger than {usable_for:g} s")
        mark = env.d.mark()
        env.rdap.up()
        env.whois.up()
        e = assert_verified(env, qid, mark)
        assert (e["iana"]["source"], e["iana"]["from_cache"]) == ("rdap", False)
        assert e["iana"]["fetched_at"] > fetched_at + AGE / 2


# -- the smarthost ---------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    s = SmtpSink()
    yield s
    s.stop()


@pytest.fixture
def relayed(tmp_path: Path, sink: SmtpSink) -> Iterator[AuthEnv]:
    relay = {"outbox.smarthost": f"127.0.0.1:{sink.port}", "outbox.smarthost_tls": "none"}
    with auth_daemon(tmp_path, **FAST, **relay) as e:
        yield e


def verified_request_with_mail(env: AuthEnv) -> list[tuple[int, str]]:
    """A verified request, whose mails (to the Validator, and the admin's receipt) are
    queued; (delivery id, recipient) of each."""
    qid = send_request(env)
    assert_verified(env, qid, 0)
    rows = env.d.query("SELECT id, rcpt FROM outbox_deliveries ORDER BY id")
    assert sorted(r for _, r in rows) == sorted([VALIDATOR, ADMIN])
    return [(int(i), str(r)) for i, r in rows]


def deliveries(env: AuthEnv) -> dict[str, tuple[str, int, str | None]]:
    """recipient -> (status, attempts, last error)."""
    return {r: (s, a, e) for r, s, a, e in env.d.query(
        "SELECT rcpt, status, attempts, last_error FROM outbox_deliveries")}


def deferred_twice(env: AuthEnv, delivery: int) -> list[dict[str, Any]]:
    """Wait until ``delivery`` was deferred twice: it waits, and is tried again on its own."""
    return matching(env.d, "delivery deferred", lambda r: r.get("delivery") == delivery, 2)


def assert_queued(env: AuthEnv, error: str) -> None:
    for rcpt, (status, attempts, last_error) in deliveries(env).items():
        assert status == "queued", (rcpt, status, last_error)
        assert attempts >= 1 and error in (last_error or ""), (rcpt, attempts, last_error)
    [(pending,)] = env.d.query("SELECT count(*) FROM outbox_deliveries WHERE next_attempt_at <= updated_at")
    assert pending == 0, "every waiting delivery has its next try timed"


def assert_delivered_once_each(env: AuthEnv, sink: SmtpSink, queued: list[tuple[int, str]]) -> None:
    for _, rcpt in queued:
        sink.wait_for(lambda r, rcpt=rcpt: rcpt in r.rcpt_tos)
    matching(env.d, "mail delivered", lambda r: r.get("how") == "relayed", len(queued))
    assert {r: s for r, (s, _, _) in deliveries(env).items()} == {r: "sent" for _, r in queued}
    assert sorted(r for m in sink.received for r in m.rcpt_tos) == sorted(r for _, r in queued), \
        "each mail delivered exactly once"
    validator_mail = sink.to(VALIDATOR)[0].data
    assert b"Reply-To: decide+" in validator_mail and b".mt" in validator_mail


def test_smarthost_down_the_mail_waits_in_the_outbox_then_is_delivered(
        relayed: AuthEnv, sink: SmtpSink) -> None:
    sink.down()  # connection refused
    queued = verified_request_with_mail(relayed)
    for delivery, _ in queued:
        [first, *_] = deferred_twice(relayed, delivery)
        assert "Connect" in first["error"] and first["retry_in"] > 0
    assert_queued(relayed, "Connect")
    assert sink.received == [] and sink.attempts == []
    sink.up()  # the same port
    assert_delivered_once_each(relayed, sink, queued)


@pytest.mark.parametrize(("command", "reply"), [
    ("DATA", "421 4.3.2 Service shutting down"),
    ("DATA", "451 4.3.0 Temporary local problem"),
    ("RCPT", "450 4.2.1 Mailbox busy"),
], ids=["DATA-421", "DATA-451", "RCPT-450"])
def test_smarthost_answering_4xx_the_mail_waits_then_is_delivered(
        relayed: AuthEnv, sink: SmtpSink, command: str, reply: str) -> None:
    sink.answer(command, reply)
    queued = verified_request_with_mail(relayed)
    code = reply.split(maxsplit=1)[0]
    for delivery, _ in queued:
        for rec in deferred_twice(relayed, delivery):
            assert code in rec["error"], rec
    assert_queued(relayed, code)
    tries = sink.attempts
    assert sink.received == [] and {c for c, _, _ in tries} == {command} and len(tries) >= 4
    sink.accept()  # it accepts again
    assert_delivered_once_each(relayed, sink, queued)


def ask_for_help(env: AuthEnv) -> None:
    with smtplib.SMTP(env.d.host, env.d.port, timeout=10) as s:
        s.sendmail("someone@nic.example", [f"help@{DOMAIN}"],
                   b"From: someone@nic.example\r\nSubject: help\r\n\r\nhow?\r\n")


@pytest.mark.parametrize(("command", "reply"), [
    ("DATA", "554 5.6.0 Message refused"),
    ("RCPT", "550 5.1.1 No such user"),
], ids=["DATA-554", "RCPT-550"])
def test_smarthost_refusing_for_good_is_recorded_never_retried_never_dropped(
        relayed: AuthEnv, sink: SmtpSink, command: str, reply: str) -> None:
    sink.answer(command, reply)
    queued = verified_request_with_mail(relayed)
    refused = matching(relayed.d, "delivery refused for good", lambda r: True, len(queued))
    code, text = reply.split(" ", 2)[0], reply.split(" ", 2)[2]
    for rec in refused:
        assert rec["level"] == "error" and code in rec["error"] and text in rec["error"], rec
    for rcpt, (status, attempts, last_error) in deliveries(relayed).items():
        assert (status, attempts) == ("failed", 1), rcpt
        assert code in (last_error or "") and text in (last_error or ""), last_error
    # Kept, not dropped: the octets stay in the outbox, and the health check names them.
    [(kept,)] = relayed.d.query("SELECT count(*) FROM outbox_messages WHERE length(raw) > 0")
    assert kept == len(queued)
    conn = sqlite3.connect(relayed.d.db_path)
    try:
        problems = health.read(conn).problems
    finally:
        conn.close()
    assert f"{counted(len(queued), 'outgoing mail')} failed for good" in " ".join(problems), problems

    # The smarthost accepts again, and the deliverer sends the next mail: a failed delivery
    # would be due before it (next_attempt_at 0), so none was tried again.
    sink.accept()
    ask_for_help(relayed)
    relayed.d.wait_for("mail delivered", lambda r: r.get("purpose") == "help")
    assert len(sink.attempts) == len(queued) + 1, sink.attempts
    assert [m.rcpt_tos for m in sink.received] == [["someone@nic.example"]]
    assert {r: s for r, (s, _, _) in deliveries(relayed).items()} == {
        **{r: "failed" for _, r in queued}, "someone@nic.example": "sent"}
