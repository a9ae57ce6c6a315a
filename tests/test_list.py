"""The built-in TLD-OPS list (issue 9, list@): posts from SSCs to every SSC, end to end.

The real daemon with the loopback DNS, RDAP and WHOIS servers and a real SMTP sink as
smarthost (tests/test_workflow.py's Flow); the list's DKIM key is made with `tldops dkim
keygen` and published in the loopback DNS server, and dkimpy verifies each copy there, as
tests/test_broadcast.py does for the roster broadcast.
"""

from __future__ import annotations

import contextlib
import email
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from auth_env import ATTACKER, SELECTOR, now_date
from daemon_proc import DOMAIN
from dkim_sign import rsa_key
from smtp_sink import Received
from test_broadcast import keygen, verifies
from test_workflow import JANE, JOHN, VALIDATOR, Flow, _text, flow, subscribed

from tldops_mta.desks.list_desk import dmarc_tags
from tldops_mta.mail import tlp
from tldops_mta.ops.housekeeping import purge

LIST = f"list@{DOMAIN}"
STRICT_DOMAIN = "mail.strict.example"
"""Mary's mail domain: its organisational domain strict.example publishes sp=reject."""
MARY = ("third", "Mary", "Poe", "2133 4457", f"mary.poe@{STRICT_DOMAIN}")
SSCS = (JANE, JOHN, MARY)


@contextlib.contextmanager
def listing(tmp_path: Path, **settings: Any) -> Iterator[Flow]:
    """.mt subscribed with Jane and John (nic.org.mt, no DMARC record) and Mary (a domain
    whose organisational domain publishes a strict DMARC policy for its subdomains); the
    list's key published; no scheduled broadcast to get in the way."""
    key, name, value = keygen(tmp_path / "keys")
    with flow(tmp_path / "daemon", **{"broadcast.dkim_key": str(key), "broadcast.enabled": False,
                                      **settings}) as f:
        f.env.dns.set_txt(name, [value])
        f.env.publish(SELECTOR, STRICT_DOMAIN, rsa_key(2048, 3))
        f.env.dns.set_txt("_dmarc.strict.example", ["v=DMARC1; p=none; sp=reject; rua=mailto:d@x.example"])
        subscribed(f, *SSCS)
        yield f


def post(f: Flow, sender: str, subject: str, *, body: str = "The .mt name servers answer SERVFAIL.",
         sign: bool = True, headers: tuple[str, ...] = (), message_id: str | None = None,
         display: str = "") -> tuple[str, str, str]:
    """A post to list@ as an SSC's mail client writes it: (status, reason, its Message-ID)."""
    domain = sender.split("@")[1]
    mid = message_id or f"<post-{time.time_ns()}@{domain}>"
    from_line = f"{display} <{sender}>" if display else sender
    raw = (f"Received: from laptop.{domain} (10.0.0.7) by mx.{domain}\r\n"
           f"From: {from_line}\r\nTo: {LIST}\r\nSubject: {subject}\r\nDate: {now_date()}\r\n"
           f"Message-ID: {mid}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           f"X-Internal-Ticket: INC-4711\r\n" + "".join(h + "\r\n" for h in headers)
           + f"\r\n{body}\r\n").encode()
    if sign:
        raw = f.env.signed(raw, domain, rsa_key(2048, 3) if domain == STRICT_DOMAIN else f.env.admin_key)
    queue_id = f.env.send(raw, mail_from=sender, rcpts=(LIST,))
    status = f.d.wait_processed(queue_id)["status"]  # the first outcome, as logged
    reason = f.d.query("SELECT reason FROM spool WHERE queue_id = ?", (queue_id,))[0][0] or ""
    return status, reason, mid


def copies(f: Flow, subject_has: str) -> list[Received]:
    """The copy of one post each SSC received, once all three came."""
    got = [f.sink.wait_for(lambda r, a=s[4]: a in r.rcpt_tos and subject_has.encode() in _head(r))
           for s in SSCS]
    return got


def _head(r: Received) -> bytes:
    return r.data.split(b"\r\n\r\n", 1)[0]


def _msg(r: Received) -> Message:
    return email.message_from_bytes(r.data)


def list_outbox(f: Flow, purpose: str = "list") -> int:
    """Outgoing mails queued for ``purpose``: "list" (copies of posts), "list-refusal" (notes)."""
    return int(f.d.query("SELECT count(*) FROM outbox_messages WHERE purpose = ?", (purpose,))[0][0])


# -- distribution --------------------------------------------------------------------------------

def test_a_members_post_reaches_every_ssc_labelled_red_with_list_headers_and_the_lists_signature(
        tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        status, reason, original = post(f, JANE[4], "Outage at the .mt name servers", display="Jane Doe")
        assert (status, reason) == ("done", "list: distributed [TLP:RED]")
        got = copies(f, "Outage at the .mt name servers")
        assert len({r.mail_from for r in got}) == 3  # VERP: one return path per SSC
        assert all(re.fullmatch(rf"bounces\+b\d+@{re.escape(DOMAIN)}", r.mail_from) for r in got)
        assert len({r.data for r in got}) == 1  # built and signed once
        m = _msg(got[0])
        assert m["Subject"] == "[TLP:RED] Outage at the .mt name servers"  # no label: RED
        assert m["From"] == "Jane Doe <jane.doe@nic.org.mt>"  # nic.org.mt has no DMARC record
        assert m["Reply-To"] is None
        assert m["List-Id"] == f"TLD-OPS <list.{DOMAIN}>"
        assert m["List-Post"] == f"<mailto:{LIST}>"
        assert m["List-Unsubscribe"] == f"<mailto:help@{DOMAIN}?subject=removal>"
        assert m["List-Help"] == f"<mailto:help@{DOMAIN}>"
        assert m["Precedence"] == "list"
        assert m["Message-ID"] != original and m["Message-ID"].endswith(f"@{DOMAIN}>")
        # The author's path stays behind: no trace field, no private header, one signature (ours).
        assert m["Received"] is None and m["X-Internal-Ticket"] is None
        assert len(m.get_all("DKIM-Signature") or []) == 1
        assert re.search(rf"\bd={re.escape(DOMAIN)};", m["DKIM-Signature"])
        for r in got:
            assert verifies(f, r.data)
        assert "The .mt name servers answer SERVFAIL." in m.get_payload()
        # The signature covers the body, the label and the list's own fields.
        for was, now in ((b"SERVFAIL", b"NOERROR!"), (b"[TLP:RED]", b"[TLP:CLEAR]"),
                         (b"List-Id: TLD-OPS", b"List-Id: TLD-OBS"),
                         (b"?subject=removal", b"?subject=removed")):
            assert was in got[0].data
            assert not verifies(f, got[0].data.replace(was, now, 1)), was
        assert f.d.query("SELECT author, tlp, from_rewritten, recipients FROM list_posts") == [
            (JANE[4], "TLP:RED", 0, 3)]


def test_labels_are_kept_normalised_and_never_two(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        assert post(f, JANE[4], "[TLP:AMBER] Scanning of .mt")[1] == "list: distributed [TLP:AMBER]"
        assert _msg(copies(f, "Scanning of .mt")[0])["Subject"] == "[TLP:AMBER] Scanning of .mt"
        # The report's old spelling, and TLP 1.0's WHITE (now CLEAR), read and rewritten.
        assert post(f, JOHN[4], "[TLP-AMBER] Old spelling")[1] == "list: distributed [TLP:AMBER]"
        assert _msg(copies(f, "Old spelling")[0])["Subject"] == "[TLP:AMBER] Old spelling"
        assert post(f, JOHN[4], "TLP:WHITE: public notice")[1] == "list: distributed [TLP:CLEAR]"
        assert _msg(copies(f, "public notice")[0])["Subject"] == "[TLP:CLEAR] public notice"
        # Two labels in the Subject: the stricter wins and only it is shown.
        assert post(f, JOHN[4], "[TLP:GREEN] two labels [TLP:AMBER+STRICT]")[1] == \
            "list: distributed [TLP:AMBER+STRICT]"
        assert _msg(copies(f, "two labels")[0])["Subject"] == "[TLP:AMBER+STRICT] two labels"
        # A label inside an encoded word is read; the Subject goes out encoded, one label.
        assert post(f, JANE[4], "=?utf-8?q?[TLP:GREEN]_Panne_=C3=A0_Malte?=")[1] == \
            "list: distributed [TLP:GREEN]"
        subject = _msg(copies(f, "?=")[0])["Subject"]
        assert str(make_header(decode_header(subject))) == "[TLP:GREEN] Panne à Malte"


def test_a_reply_inherits_the_label_of_what_it_answers_the_stricter_wins(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        post(f, JANE[4], "[TLP:AMBER] Anycast node down")
        first = _msg(copies(f, "Anycast node down")[0])["Message-ID"]
        # John answers the copy he got: his client sets In-Reply-To to its Message-ID. He
        # wrote GREEN; the thread is AMBER: AMBER wins.
        status, reason, _ = post(f, JOHN[4], "Re: [TLP:GREEN] Anycast node down", body="Fixed here.",
                                 headers=(f"In-Reply-To: {first}", f"References: {first}"))
        assert (status, reason) == ("done", "list: distributed [TLP:AMBER]")
        reply = _msg(copies(f, "Re: Anycast node down")[0])
        assert reply["Subject"] == "[TLP:AMBER] Re: Anycast node down"
        assert reply["In-Reply-To"] == first and reply["References"] == first  # threads hold
        second = reply["Message-ID"]
        # Deeper in the thread, with only References naming the first post: still AMBER.
        assert post(f, JANE[4], "Re: Re: Anycast node down", body="Thanks.",
                    headers=(f"References: {first} {second}",))[1] == "list: distributed [TLP:AMBER]"
        # A reply naming nothing we know but quoting an AMBER post inherits from the quote.
        assert post(f, JANE[4], "Re: forwarded report",
                    body="Seen too.\r\n\r\n> [TLP:AMBER] Anycast node down\r\n> Details.")[1] == \
            "list: distributed [TLP:AMBER]"
        # The writer may make it stricter, never less strict.
        assert post(f, JOHN[4], "Re: [TLP:RED] Anycast node down", body="Private detail.",
                    headers=(f"In-Reply-To: {second}",))[1] == "list: distributed [TLP:RED]"


# -- DMARC ---------------------------------------------------------------------------------------

def test_a_post_from_a_strict_dmarc_domain_comes_from_the_list_and_its_signature_verifies(
        tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        status, reason, _ = post(f, MARY[4], "Strict domain post", display="Mary Poe")
        assert (status, reason) == ("done", "list: distributed [TLP:RED] (From rewritten: DMARC)")
        got = copies(f, "Strict domain post")
        m = _msg(got[0])
        assert m["From"] == f"Mary Poe via TLD-OPS <{LIST}>"
        assert m["Reply-To"] == MARY[4]
        for r in got:
            assert verifies(f, r.data)
        # The DMARC record was asked for at the organisational domain (sp= applies).
        asked = {q.name.lower().rstrip(".") for q in f.env.dns.queries}
        assert {f"_dmarc.{STRICT_DOMAIN}", "_dmarc.strict.example"} <= asked


def test_a_dmarc_lookup_that_fails_makes_the_post_wait_then_it_goes(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        f.env.dns.servfail("_dmarc.nic.org.mt")
        status, reason, _ = post(f, JANE[4], "Waits for DNS")
        assert status == "received" and reason.startswith("waiting: DMARC lookup for nic.org.mt failed")
        assert list_outbox(f) == 0
        f.env.dns.set_txt("_dmarc.nic.org.mt", ["v=DMARC1; p=quarantine"])
        m = _msg(copies(f, "Waits for DNS")[0])
        # No display name: the address, written so that no client reads it as one.
        assert m["From"] == f'"jane.doe at nic.org.mt via TLD-OPS" <{LIST}>'
        assert m["Reply-To"] == JANE[4]


# -- refusals ------------------------------------------------------------------------------------

def test_a_non_member_is_refused_with_a_short_note_and_nothing_is_distributed(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        status, reason, _ = post(f, "someone@nic.org.mt", "Let me in")  # signed by nic.org.mt
        assert status == "rejected" and "only the Security and Stability Contacts" in reason
        note = f.mail_to("someone@nic.org.mt", "not sent to the list")
        text = note.get_payload()
        assert "only the Security and Stability Contacts on the roster may post" in text
        assert f"help@{DOMAIN}" in text
        for s in SSCS:  # no roster data in the note
            assert s[4] not in text and s[2] not in text
        assert note["Auto-Submitted"] == "auto-replied"
        assert note["Subject"].startswith("[TLP:RED] ")
        assert list_outbox(f) == 0
        # Once a day: a second refusal is held back (queued with the outcome, or not at all).
        assert post(f, "someone@nic.org.mt", "Let me in again")[0] == "rejected"
        assert list_outbox(f, "list-refusal") == 1
        assert f.d.query("SELECT count(*) FROM list_posts") == [(0,)]


SENT = "list: unsigned; token sent to the roster address"


def waiting_post(f: Flow) -> tuple[str, int]:
    """(queue id, spool id) of the one post that waits for its author's answer."""
    [(queue_id, spool_id)] = f.d.query("SELECT queue_id, id FROM spool WHERE reason = ?", (SENT,))
    return str(queue_id), int(spool_id)


def token_mails(f: Flow) -> list[str]:
    """The recipients of every token mail the list sent, in order."""
    return [str(r[0]) for r in f.d.query(
        "SELECT d.rcpt FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
        " WHERE m.purpose = 'list-token' ORDER BY d.id")]


def confirm_address(f: Flow, rcpt: str, subject_has: str, n: int = 1) -> str:
    ask = f.mail_to(rcpt, "Please confirm your post to the list", n)
    assert subject_has in _text(ask)
    address = str(ask["Reply-To"])
    assert re.fullmatch(rf"confirm\+[A-Za-z0-9_-]{{22,}}@{re.escape(DOMAIN)}", address), address
    return address


def test_a_members_unsigned_post_waits_for_a_token_to_the_roster_address_then_goes_once(
        tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        # Reply-To and Cc name other addresses: the token goes to the roster's only.
        status, reason, mid = post(f, JOHN[4], "[TLP:AMBER] Unsigned words", sign=False,
                                   headers=(f"Reply-To: {ATTACKER}", "Cc: other@nic.org.mt"))
        assert (status, reason) == ("done", SENT)
        confirm = confirm_address(f, JOHN[4], "[TLP:AMBER] Unsigned words")
        ask = f.mail_to(JOHN[4], "Please confirm your post to the list")
        assert ask["Subject"].startswith("[TLP:AMBER] ") and ask["Auto-Submitted"] == "auto-replied"
        assert token_mails(f) == [JOHN[4]]
        assert list_outbox(f) == 0 and f.d.query("SELECT count(*) FROM list_posts") == [(0,)]
        assert f.mails_to(ATTACKER) == [] and f.mails_to("other@nic.org.mt") == []
        # The nightly purge may take the spool's octets meanwhile: the token keeps its own.
        conn = sqlite3.connect(f.d.db_path, timeout=10, isolation_level=None)
        try:
            assert purge(conn, time.time() + 1).spool_raw >= 1
        finally:
            conn.close()
        queue_id, spool_id = waiting_post(f)
        assert f.d.query("SELECT count(*) FROM spool_messages WHERE id = ?", (spool_id,)) == [(0,)]

        # A forged answer from anyone else counts for nothing.
        assert f.answer(confirm, ATTACKER)[0] == "rejected"
        assert f.answer(confirm.replace("confirm+", "confirm+x"), JOHN[4])[0] == "rejected"  # unknown
        assert list_outbox(f) == 0

        mark = f.d.mark()
        assert f.answer(confirm, JOHN[4]) == ("done", "list: the post is distributed")
        done = f.d.wait_for("message processed", lambda r: r.get("queue_id") == queue_id, after=mark)
        assert done["status"] == "done"
        got = copies(f, "Unsigned words")
        for r in got:
            assert _msg(r)["Subject"] == "[TLP:AMBER] Unsigned words"
            assert verifies(f, r.data)
        assert f.d.query("SELECT original_message_id, author, tlp, recipients FROM list_posts") == [
            (mid, JOHN[4], "TLP:AMBER", 3)]
        assert list_outbox(f) == 1
        # The post's octets left the token once it was answered.
        [(payload,)] = f.d.query("SELECT payload FROM tokens WHERE purpose = 'list-post'")
        assert json.loads(payload) == {"spool_id": spool_id}

        # A second use of the token distributes nothing more.
        assert f.answer(confirm, JOHN[4])[0] == "rejected"
        assert list_outbox(f) == 1
        assert f.d.query("SELECT count(*) FROM outbox_deliveries d JOIN outbox_messages m"
                         " ON m.id = d.message_id WHERE m.purpose = 'list'") == [(3,)]

        # Forged unsigned posts in John's name make no second token mail within the gap.
        again = post(f, JOHN[4], "Another", sign=False)[1]
        assert again == "list: unsigned; a token was sent lately, not again"
        assert token_mails(f) == [JOHN[4]]

        # An expired token distributes nothing; the next token strips the octets it carried.
        assert post(f, JANE[4], "Late", sign=False)[1] == SENT
        late = confirm_address(f, JANE[4], "Late")
        f.d.execute("UPDATE tokens SET expires_at = ? WHERE address = ? AND purpose = 'list-post'",
                    (time.time() - 1, JANE[4]))
        assert f.answer(late, JANE[4])[0] == "rejected"
        assert post(f, MARY[4], "Mary's", sign=False)[1] == SENT
        assert token_mails(f) == [JOHN[4], JANE[4], MARY[4]]
        [(stripped,)] = f.d.query("SELECT payload FROM tokens WHERE address = ? AND purpose = 'list-post'",
                                  (JANE[4],))
        assert set(json.loads(stripped)) == {"spool_id"}
        assert list_outbox(f) == 1 and f.d.query("SELECT count(*) FROM list_posts") == [(1,)]

        # Anyone else's unsigned post gets the short refusal, and no token.
        status, reason, _ = post(f, "someone@nic.org.mt", "Unsigned outsider", sign=False)
        assert status == "rejected" and "only the Security and Stability Contacts" in reason
        note = f.mail_to("someone@nic.org.mt", "not sent to the list")
        assert "on the roster may post" in note.get_payload()
        assert token_mails(f) == [JOHN[4], JANE[4], MARY[4]]
        assert list_outbox(f) == 1


def test_an_unsigned_first_post_confirmed_by_token_is_held_for_a_validator_then_released(
        tmp_path: Path) -> None:
    with listing(tmp_path, **MODERATED) as f:
        assert post(f, JANE[4], "Unsigned first", sign=False)[1] == SENT
        queue_id, _ = waiting_post(f)
        mark = f.d.mark()
        assert f.answer(confirm_address(f, JANE[4], "Unsigned first"), JANE[4])[0] == "done"
        f.d.wait_for("message processed", lambda r: r.get("queue_id") == queue_id, after=mark)
        f.mail_to(JANE[4], "Your first post waits for a Validator")
        [(held_id, state)] = f.d.query("SELECT id, state FROM list_held")
        assert state == "held" and list_outbox(f) == 0
        assert decide(f, "release", int(held_id))[0] == 0
        got = copies(f, "Unsigned first")
        assert all(_msg(r)["Subject"] == "[TLP:RED] Unsigned first" for r in got)
        assert f.d.query("SELECT author, recipients FROM list_posts") == [(JANE[4], 3)]


def test_erasing_a_member_drops_the_unsigned_post_that_waits_for_their_answer(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        assert post(f, JOHN[4], "Words to forget", sign=False)[1] == SENT
        address = confirm_address(f, JOHN[4], "Words to forget")
        raw_kept = "SELECT count(*) FROM tokens WHERE purpose = 'list-post'" \
                   " AND json_extract(payload, '$.raw') IS NOT NULL"
        assert f.d.query(raw_kept) == [(1,)]
        r = f.tldops("person", "erase", JOHN[4], "--reason", "asked", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["counts"]["list_posts_unconfirmed"] == 1
        assert f.d.query(raw_kept) == [(0,)]
        f.answer(address, JOHN[4])  # the token's answer finds the post gone
        assert list_outbox(f) == 0


def test_the_same_post_twice_and_automatic_mail_are_not_distributed(tmp_path: Path) -> None:
    with listing(tmp_path) as f:
        mid = f"<once-{time.time_ns()}@nic.org.mt>"
        assert post(f, JANE[4], "Once only", message_id=mid)[1] == "list: distributed [TLP:RED]"
        assert post(f, JANE[4], "Once only", message_id=mid)[1] == "list: this post was distributed before"
        # An out-of-office answer to a copy, and a copy coming back: dropped without a word.
        assert post(f, JOHN[4], "Auto: away", headers=("Auto-Submitted: auto-replied",))[1] == \
            "list: automatic mail is not distributed"
        assert post(f, JOHN[4], "Looped", headers=(f"List-Id: TLD-OPS <list.{DOMAIN}>",))[1] == \
            "list: automatic mail is not distributed"
        assert list_outbox(f) == 1
        assert list_outbox(f, "list-refusal") == 0


# -- moderation of first posts (list.moderate_first_posts) ----------------------------------------

MODERATED = {"list.moderate_first_posts": True}


def held_one(f: Flow, subject: str, sender: str = JANE[4]) -> tuple[int, str]:
    """A first post, held: (its held id, its queue id), after checking what the hold did."""
    status, reason, mid = post(f, sender, subject)
    assert status == "done" and reason.startswith("list: held for a Validator (a first post)"), reason
    [(held_id, queue_id, state)] = f.d.query(
        "SELECT h.id, s.queue_id, h.state FROM list_held h JOIN spool s ON s.id = h.spool_id"
        " WHERE h.original_message_id = ?", (mid,))
    assert state == "held"
    return int(held_id), str(queue_id)


def decide(f: Flow, verb: str, held_id: int, *reason: str) -> tuple[int, dict[str, Any]]:
    r = f.tldops("list", verb, str(held_id), *reason, "--json")
    return r.returncode, json.loads(r.stdout)


def test_a_first_post_is_held_and_released_once_to_every_ssc_then_the_author_posts_freely(
        tmp_path: Path) -> None:
    with listing(tmp_path, **MODERATED) as f:
        held_id, queue_id = held_one(f, "[TLP:AMBER] First words")
        # The author is told it waits; the Validators get its text, labelled as the post is.
        note = f.mail_to(JANE[4], "Your first post waits for a Validator")
        assert note["Subject"].startswith("[TLP:AMBER] ") and "First words" in _text(note)
        ask = f.mail_to(VALIDATOR, f"A first post to the list waits: #{held_id}")
        assert ask["Subject"].startswith("[TLP:AMBER] ")
        assert "> The .mt name servers answer SERVFAIL." in _text(ask)
        assert f"tldops list release {held_id}" in _text(ask)
        assert list_outbox(f) == 0 and f.d.query("SELECT count(*) FROM list_posts") == [(0,)]
        shown = json.loads(f.tldops("list", "held", "--json").stdout)
        assert [(h["id"], h["queue_id"], h["author"], h["tlp"]) for h in shown] == [
            (held_id, queue_id, JANE[4], "TLP:AMBER")]
        # The nightly purge removes the spool's octets of processed mail: the held post's own
        # copy survives it, and the release is distributed from that.
        conn = sqlite3.connect(f.d.db_path, timeout=10, isolation_level=None)
        try:
            assert purge(conn, time.time() + 1).spool_raw >= 1
        finally:
            conn.close()
        assert f.d.query("SELECT count(*) FROM spool_messages m JOIN spool s ON s.id = m.id"
                         " WHERE s.queue_id = ?", (queue_id,)) == [(0,)]

        mark = f.d.mark()
        code, out = decide(f, "release", held_id)
        assert code == 0 and out == {"ok": True, "message": f"post #{held_id} released: it is distributed"
                                                            " to every SSC"}
        done = f.d.wait_for("message processed", lambda r: r.get("queue_id") == queue_id, after=mark)
        assert done["status"] == "done"
        got = copies(f, "First words")
        assert all(_msg(r)["Subject"] == "[TLP:AMBER] First words" for r in got)
        for r in got:
            assert verifies(f, r.data)
        assert f.d.query("SELECT author, tlp, recipients FROM list_posts") == [(JANE[4], "TLP:AMBER", 3)]
        assert list_outbox(f) == 1  # one copy, to the three SSCs
        [(state, by, decided_at, raw_left)] = f.d.query(
            "SELECT state, decided_by, decided_at, length(raw) FROM list_held WHERE id = ?", (held_id,))
        assert state == "released" and by.startswith("cli:") and decided_at > 0
        assert raw_left == 0  # distributed: the held copy is not kept
        assert json.loads(f.tldops("list", "held", "--json").stdout) == []

        # First decision wins: neither a second release nor a rejection changes anything.
        code, out = decide(f, "release", held_id)
        assert code == 1 and out["message"] == f"post #{held_id} was already released by {by}"
        code, out = decide(f, "reject", held_id, "too late")
        assert code == 1 and "already released" in out["message"]
        assert list_outbox(f) == 1

        # The author's next post goes straight through; another member's first one is held.
        assert post(f, JANE[4], "Second words")[1] == "list: distributed [TLP:RED]"
        copies(f, "Second words")
        held_one(f, "John's first", sender=JOHN[4])
        assert list_outbox(f) == 2
        assert f.d.query("SELECT count(*) FROM list_posts WHERE author = ?", (JANE[4],)) == [(2,)]


def test_a_rejected_first_post_is_told_to_its_author_and_never_distributed(tmp_path: Path) -> None:
    with listing(tmp_path, **MODERATED) as f:
        held_id, queue_id = held_one(f, "[TLP:GREEN] Please ignore")
        code, out = decide(f, "reject", held_id, "off-topic", "for", "the", "list")
        assert code == 0 and out == {"ok": True, "message": f"post #{held_id} rejected: its author is told"}
        told = f.mail_to(JANE[4], "Your post was not sent to the list")
        assert told["Subject"].startswith("[TLP:GREEN] ")
        assert "did not send your post (\"[TLP:GREEN] Please ignore\") to the list: off-topic for the list" \
            in _text(told)
        [(state, by, reason, raw_left)] = f.d.query(
            "SELECT state, decided_by, reason, length(raw) FROM list_held WHERE id = ?", (held_id,))
        assert (state, reason, raw_left) == ("rejected", "off-topic for the list", 0)
        assert by.startswith("cli:")
        assert f.d.query("SELECT status, reason FROM spool WHERE queue_id = ?", (queue_id,)) == [
            ("rejected", f"list: rejected by {by}: off-topic for the list")]
        # First decision wins, and reprocessing the message (an operator's retry) does not
        # undo it: nothing is ever distributed.
        code, out = decide(f, "release", held_id)
        assert code == 1 and out["message"] == f"post #{held_id} was already rejected by {by}"
        assert decide(f, "reject", held_id, "again")[0] == 1
        assert len(f.mails_to(JANE[4], "Your post was not sent to the list")) == 1
        mark = f.d.mark()
        assert f.tldops("spool", "retry", queue_id).returncode == 0
        again = f.d.wait_for("message processed", lambda r: r.get("queue_id") == queue_id, after=mark)
        assert again["status"] == "rejected"
        assert f.d.query("SELECT reason FROM spool WHERE queue_id = ?", (queue_id,)) == [
            ("list: a Validator rejected this post",)]
        assert list_outbox(f) == 0 and f.d.query("SELECT count(*) FROM list_posts") == [(0,)]
        # A rejected author is no released one: their next post is held again.
        held_one(f, "Second try")
        assert decide(f, "reject", 999, "no such")[1]["message"] == "no held post 999"


def test_a_held_post_sent_again_waits_once_and_an_erased_authors_post_cannot_be_released(
        tmp_path: Path) -> None:
    with listing(tmp_path, **MODERATED) as f:
        mid = f"<again-{time.time_ns()}@nic.org.mt>"
        assert post(f, JOHN[4], "Twice", message_id=mid)[1].startswith("list: held for a Validator")
        assert post(f, JOHN[4], "Twice", message_id=mid)[1] == "list: this post waits for a Validator already"
        assert f.d.query("SELECT count(*) FROM list_held") == [(1,)]
        f.mail_to(VALIDATOR, "A first post to the list waits")
        assert len(f.mails_to(VALIDATOR, "A first post to the list waits")) == 1
        [(held_id,)] = f.d.query("SELECT id FROM list_held")
        found = json.loads(f.tldops("person", "export", JOHN[4], "--json").stdout)
        assert [(h["message_id"], h["state"]) for h in found["list_held"]] == [(mid, "held")]
        r = f.tldops("person", "erase", JOHN[4], "--reason", "left", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["counts"]["list_held"] == 1
        assert f.d.query("SELECT author, state, decided_by, length(raw) FROM list_held") == [
            ("[erased]", "rejected", "erasure", 0)]
        code, out = decide(f, "release", int(held_id))
        assert code == 1 and out["message"] == f"post #{held_id} was already rejected by erasure"
        assert list_outbox(f) == 0


# -- the pure parts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("subject", "level", "want"), [
    ("Re: [TLP:GREEN] x", tlp.Tlp.AMBER, "[TLP:AMBER] Re: x"),
    ("[TLP-AMBER] old", tlp.Tlp.AMBER, "[TLP:AMBER] old"),
    ("TLP:WHITE: notice (tlp:clear)", tlp.Tlp.CLEAR, "[TLP:CLEAR] notice"),
    ("no label", tlp.Tlp.RED, "[TLP:RED] no label"),
    ("TLPs are nice", tlp.Tlp.RED, "[TLP:RED] TLPs are nice"),
])
def test_relabelled_leaves_exactly_one_label(subject: str, level: tlp.Tlp, want: str) -> None:
    assert tlp.relabelled(subject, level) == want
    assert tlp.labels_in(tlp.relabelled(subject, level)) == [level]


def test_dmarc_records_are_read_by_their_tags() -> None:
    assert dmarc_tags(b"v=DMARC1; p=Reject; sp=none") == {"v": "dmarc1", "p": "reject", "sp": "none"}
    assert dmarc_tags(b"v=spf1 -all") is None
    assert dmarc_tags(b"v=DMARC1") == {"v": "dmarc1"}
