"""list@: the built-in TLD-OPS list. A post from an SSC goes to every SSC, labelled and re-signed.

An SSC is authenticated as for who@ (``who_desk.identify``): a DKIM signature that counts,
or the answer to a one-time token whose payload carries the unconfirmed post's octets (the
spool's are the retention purge's to remove). The copy carries exactly one TLP label, the
list's header fields and only the author's fields a reader needs, with From rewritten where
the author's domain enforces DMARC; it is queued once per Message-ID, one delivery per SSC.
A first post can wait for a Validator (``list.moderate_first_posts``); a released or
confirmed post goes back to the spool and through this same path. Robots' mail is dropped
unanswered, so no loop can start; nothing is archived (TLP). README.md tells the whole rule.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import formataddr, make_msgid
from typing import Any

from tldops_mta import logs
from tldops_mta.auth import addresses
from tldops_mta.auth.dkim_verify import KeyRecordError, KeyResolver, KeyTemporaryError, organisational_domain
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.desks import desk_base, who_desk
from tldops_mta.mail import mailing, outbox, tlp
from tldops_mta.policy import texts
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Services
from tldops_mta.store import spool, tokens
from tldops_mta.store.storage import Reader

PURPOSE_POST = "list-post"
"""Tokens that confirm an unsigned post; the payload names its spool row (and, until it is
answered or expires, holds its octets)."""

KEPT = frozenset({"from", "to", "cc", "subject", "date", "reply-to", "in-reply-to", "references",
                  "mime-version", "content-type", "content-transfer-encoding", "content-language",
                  "content-disposition"})
"""Header fields of the post that the copy carries (From, Subject and Reply-To may be changed)."""

SEEN = "list: this post was distributed before"
STRICT_DMARC = frozenset({"quarantine", "reject"})
MAX_REFERENCES = 50
"""Message-IDs of References looked up for a label to inherit: a thread's latest posts."""

_MSG_ID = re.compile(r"<[^<>\s]{1,250}>")
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]*):")
"""A header field's first line, as the stdlib's parser recognises one (email.feedparser)."""


@dataclass(frozen=True)
class Post:
    """The copy to distribute, built once (and signed once, when it is queued)."""

    raw: bytes
    message_id: str
    label: tlp.Tlp
    from_rewritten: bool


# -- DMARC -------------------------------------------------------------------------------------


def dmarc_tags(record: bytes) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 6.3), or None when it is not one."""
    text = record.decode("ascii", "replace")
    if not re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", text):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    return tags


async def dmarc_policy(resolver: KeyResolver, domain: str) -> str:
    """The DMARC policy that applies to mail From ``domain``: the domain's own record, else
    its organisational domain's (whose ``sp=`` governs subdomains). "none" when there is no
    record; "reject" when what DNS holds is ambiguous (several records): rewriting From then
    costs nothing, a copy rejected at every SSC would. KeyTemporaryError: ask again later."""
    org = organisational_domain(domain)
    for name, own in ((domain.lower(), True), (org, False)):
        if not own and name == domain.lower():
            break
        try:
            record = await resolver.fetch(f"_dmarc.{name}")
        except KeyRecordError:
            return "reject"
        tags = dmarc_tags(record) if record is not None else None
        if tags is not None:
            return tags.get("p" if own else "sp", tags.get("p", "none"))
    return "none"


# -- the copy ----------------------------------------------------------------------------------


def header_fields(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """((lower-case name, the whole field as written, folding kept), body), in LF lines.

    The header ends where the stdlib's parser (which read the facts the post was judged
    by) ends it: at the first line that is neither a field nor a continuation. What follows
    is body to both, so the copy can never show a From the checks did not see."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    fields: list[tuple[str, bytes]] = []
    for i, line in enumerate(lines):
        if line.startswith(b"From "):
            continue  # an mbox separator: skipped by the stdlib (a defect when not first)
        if line[:1] in (b" ", b"\t"):
            if fields:  # (a continuation with nothing to continue: dropped, as the stdlib does)
                fields[-1] = (fields[-1][0], fields[-1][1] + b"\n" + line)
            continue
        m = _FIELD.match(line)
        if m is None:
            rest = lines[i + 1:] if line == b"" else lines[i:]
            return fields, b"\n".join(rest)
        fields.append((m.group(1).lower().decode("ascii"), line))
    return fields, b""


def decoded_subject(value: str) -> str:
    """The Subject as its reader sees it (RFC 2047 words decoded), on one line."""
    try:
        text = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        text = value
    return " ".join(text.split())


def referenced_ids(facts: MessageFacts) -> list[str]:
    """The Message-IDs the post answers (In-Reply-To, then the latest of References)."""
    msg = facts.message
    if msg is None:
        return []
    found: list[str] = []
    for name in ("in-reply-to", "references"):
        for value in msg.get_all(name) or []:
            found += _MSG_ID.findall(str(value))
    return list(dict.fromkeys(found[:1] + found[::-1]))[:MAX_REFERENCES]


def answered_labels(conn: sqlite3.Connection, ids: Iterable[str]) -> list[tlp.Tlp]:
    """The labels of the earlier posts among ``ids`` (by our Message-ID or the author's)."""
    wanted = list(ids)
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    rows = conn.execute(f"SELECT tlp FROM list_posts WHERE message_id IN ({marks})"  # noqa: S608
                        f" OR original_message_id IN ({marks})", [*wanted, *wanted]).fetchall()
    return [tlp.Tlp.parse(r[0]) for r in rows]


def build(live: Live, raw: bytes, subject: str, label: tlp.Tlp, author: addresses.Mailbox,
          rewrite_from: bool) -> Post:
    """The copy of ``raw`` that every SSC gets (see the module's docstring), unsigned: it is
    signed where it is queued, as every mail the daemon sends."""
    cfg = live.cfg
    domain = cfg.server.domain
    name = cfg.list.name
    list_address = live.service_address("list")
    list_id = f"{cfg.addresses.list}.{domain}"  # RFC 2919: the list's address, dotted
    fields, body = header_fields(raw)
    message_id = make_msgid(domain=domain)
    out: list[bytes] = []
    seen: set[str] = set()
    for key, field in fields:
        if key not in KEPT or key in seen or key == "subject" or (rewrite_from and key == "reply-to"):
            continue
        seen.add(key)
        if key == "from" and rewrite_from:
            # Without a display name, the address "at" its domain: a name holding an address
            # is what the spoofing defences here refuse, and some clients show it as the sender.
            shown = author.display or author.address.replace("@", " at ")
            out.append(("From: " + formataddr((f"{shown} via {name}", list_address), "utf-8")).encode())
            out.append(f"Reply-To: {author.address}".encode())
            continue
        out.append(field)
    out.append(f"Subject: {outbox._subject(tlp.relabelled(subject, label))}".encode())
    out += [f"Message-ID: {message_id}".encode(),
            f"List-Id: {formataddr((name, list_id))}".encode(),
            f"List-Post: <mailto:{list_address}>".encode(),
            f"List-Help: <mailto:{live.service_address('help')}>".encode(),
            f"List-Unsubscribe: <mailto:{live.service_address('help')}?subject=removal>".encode(),
            b"Precedence: list"]
    copy = (b"\n".join(out) + b"\n\n" + body).replace(b"\n", b"\r\n")
    return Post(copy, message_id, label, rewrite_from)


def distribute(live: Live, post: Post, original_id: str, author: str, spool_id: int,
               queue_id: str) -> spool.Effect:
    """The effect that records the post and queues its copy to every SSC, once: a post whose
    Message-ID was distributed before queues nothing (the UNIQUE column decides, at the
    commit) and its outcome says so."""
    cfg = live.cfg
    domain = cfg.server.domain
    bounces = cfg.addresses.bounces

    def job(conn: sqlite3.Connection) -> spool.Verdict | None:
        now = time.time()
        cur = conn.execute(
            "INSERT OR IGNORE INTO list_posts (original_message_id, message_id, spool_id, author, tlp,"
            " from_rewritten, created_at, recipients) VALUES (?,?,?,?,?,?,?,0)",
            (original_id, post.message_id, spool_id, author, post.label.label, int(post.from_rewritten), now))
        if cur.rowcount == 0:
            return spool.Verdict(spool.Status.DONE, SEEN)
        rcpts = [r[0] for r in conn.execute("SELECT DISTINCT lower(email) FROM roster ORDER BY 1")]
        # VERP as the broadcast's: a bounce names the delivery, so the SSC it is about.
        message_id = outbox.enqueue(post.raw, f"{bounces}@{domain}", rcpts, "list", ref=queue_id,
                                    cfg=cfg, verp=True)(conn)
        conn.execute("UPDATE list_posts SET outbox_message_id = ?, recipients = ? WHERE id = ?",
                     (message_id, len(rcpts), cur.lastrowid))
        return None

    return job


# -- moderation of first posts -----------------------------------------------------------------

QUOTED_MAX = 20000
"""Characters of a held post's text quoted to the Validators (the rest is cut off)."""


@dataclass(frozen=True)
class Decided:
    ok: bool
    message: str


def held_state(conn: sqlite3.Connection, spool_id: int, original_id: str) -> str | None:
    """The state of this post's held row (by spool row or by its Message-ID), if it has one."""
    row = conn.execute("SELECT state FROM list_held WHERE spool_id = ? OR original_message_id = ?"
                       " ORDER BY spool_id = ? DESC LIMIT 1", (spool_id, original_id, spool_id)).fetchone()
    return None if row is None else str(row[0])


def has_posted(conn: sqlite3.Connection, author: str) -> bool:
    """True when a post of ``author`` was distributed or released: they are no first poster."""
    return conn.execute(
        "SELECT 1 FROM list_posts WHERE author = ?1"
        " UNION ALL SELECT 1 FROM list_held WHERE author = ?1 AND state = 'released' LIMIT 1",
        (author,)).fetchone() is not None


def hold(live: Live, p: spool.Pending, facts: MessageFacts, author: str, subject: str,
         label: tlp.Tlp) -> spool.Effect:
    """The effect that holds a first post, and tells its author and the Validators."""
    original_id = facts.message_id or ""
    text = facts.text
    validators = live.cfg.validation.validators

    def job(conn: sqlite3.Connection) -> None:
        now = time.time()
        cur = conn.execute(
            "INSERT OR IGNORE INTO list_held (spool_id, original_message_id, author, subject, tlp, raw,"
            " held_at) VALUES (?,?,?,?,?,?,?)", (p.id, original_id, author, subject, label.label, p.raw, now))
        if cur.rowcount == 0:
            return
        held_id = cur.lastrowid
        # Both mails carry the post's label: they show its subject, the Validators' its text.
        mailing.send(live, conn, "list_held", [author], {"subject": subject}, tlp=label,
                     bounce_tag="list", purpose="list-held", auto="auto-replied",
                     in_reply_to=original_id or None, ref=p.queue_id)
        quoted = text if len(text) <= QUOTED_MAX else text[:QUOTED_MAX] + "\n[...]"
        mailing.send(live, conn, "list_moderation", validators,
                     {"id": held_id, "author": author, "subject": subject, "tlp": label.label,
                      "post": "\n".join("> " + line for line in quoted.splitlines())},
                     tlp=label, bounce_tag="list", purpose="list-moderation", ref=p.queue_id)

    return job


def pending(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The held posts not yet decided, oldest first (``tldops list held``)."""
    return [{"id": r[0], "queue_id": r[1], "author": r[2], "subject": r[3], "tlp": r[4], "held_at": r[5]}
            for r in conn.execute(
                "SELECT h.id, s.queue_id, h.author, h.subject, h.tlp, h.held_at FROM list_held h"
                " JOIN spool s ON s.id = h.spool_id WHERE h.state = 'held' ORDER BY h.id")]


def decide(live: Live, conn: sqlite3.Connection, held_id: int, release: bool, by: str,
           reason: str | None = None, now: float | None = None) -> Decided:
    """Release or reject held post ``held_id``, inside the caller's (IMMEDIATE) transaction:
    the state is read and changed there, so of two decisions the first wins. A release puts
    the post back in the spool for the worker; a rejection tells the author why."""
    now = time.time() if now is None else now
    row = conn.execute("SELECT spool_id, state, decided_by, author, subject, tlp, original_message_id, raw"
                       " FROM list_held WHERE id = ?", (held_id,)).fetchone()
    if row is None:
        return Decided(False, texts.missing("held post", held_id))
    spool_id, state, decided_by, author, subject, label, original_id, raw = row
    if state != "held":
        return Decided(False, f"post #{held_id} was already {state} by {decided_by}")
    if release and not raw:
        return Decided(False, f"post #{held_id} cannot be released: its octets were erased")
    new = "released" if release else "rejected"
    conn.execute("UPDATE list_held SET state = ?, decided_by = ?, decided_at = ?, reason = ?"
                 " WHERE id = ? AND state = 'held'", (new, by, now, reason, held_id))
    if release:
        spool.requeue(conn, spool_id, now, f"list: released by {by}", raw=raw)
        return Decided(True, f"post #{held_id} released: it is distributed to every SSC")
    why = f"list: rejected by {by}: {reason}"[:1000]
    conn.execute("UPDATE list_held SET raw = x'' WHERE id = ?", (held_id,))
    conn.execute("UPDATE spool SET status = 'rejected', reason = ?, updated_at = ? WHERE id = ?",
                 (why, now, spool_id))
    conn.execute("INSERT INTO spool_events (spool_id, at, status, reason) VALUES (?,?,?,?)",
                 (spool_id, now, spool.Status.REJECTED.value, why))
    mailing.send(live, conn, "list_rejected", [author],
                 {"subject": subject, "reason": reason or "", "help": live.service_address("help")},
                 tlp=tlp.Tlp.parse(label), bounce_tag="list", purpose="list-rejected",
                 in_reply_to=original_id or None, auto="auto-replied")
    return Decided(True, f"post #{held_id} rejected: its author is told")


# -- unsigned posts confirmed by token -----------------------------------------------------------


ASKED = "list: unsigned; token sent to the roster address"
NOT_ASKED = "list: unsigned; a token was sent lately, not again"


def ask_confirmation(live: Live, p: spool.Pending, facts: MessageFacts, author: str, subject: str,
                     label: tlp.Tlp) -> spool.Effect:
    """The effect that mails ``author`` (the roster address) a token whose answer has the
    post distributed, for an outcome that says ``ASKED``; when one went out lately (as
    the database says at the commit) it sends none and settles the outcome as ``NOT_ASKED``."""
    payload = json.dumps({"spool_id": p.id, "raw": base64.b64encode(p.raw).decode("ascii")})

    def job(conn: sqlite3.Connection) -> spool.Verdict | None:
        now = time.time()
        forget_posts(conn, expired_before=now)
        # The post's label: the mail shows its subject.
        asked = who_desk.ask_token(live, conn, PURPOSE_POST, author, now, "list_confirmation",
                                   {"subject": subject}, label=label, bounce_tag="list",
                                   mail_purpose="list-token", in_reply_to=facts.message_id,
                                   payload=payload)
        return None if asked else spool.Verdict(spool.Status.DONE, NOT_ASKED)

    return job


def forget_posts(conn: sqlite3.Connection, *, expired_before: float | None = None,
                 address: str | None = None) -> int:
    """Drop the octets of the unconfirmed posts kept in list tokens: those expired before
    ``expired_before`` (when a token is issued, and nightly), or those of ``address`` (an
    erasure). The token keeps its spool id, so an answer says the post is gone."""
    return conn.execute(
        "UPDATE tokens SET payload = json_object('spool_id', json_extract(payload, '$.spool_id'))"
        " WHERE purpose = ? AND json_extract(payload, '$.raw') IS NOT NULL"
        " AND (expires_at < ? OR lower(address) = ?)",
        (PURPOSE_POST, -1.0 if expired_before is None else expired_before, address or "")).rowcount


def confirmed(conn: sqlite3.Connection, payload: str, now: float) -> str:
    """The author answered the token (``tokens.redeem`` checked it, inside this
    transaction): the post goes back to the spool, and its octets leave the token."""
    data = json.loads(payload or "{}")
    spool_id = int(data.get("spool_id", 0))
    raw = base64.b64decode(str(data.get("raw", "")))
    conn.execute("UPDATE tokens SET payload = json_object('spool_id', ?) WHERE purpose = ?"
                 " AND json_extract(payload, '$.spool_id') = ?", (spool_id, PURPOSE_POST, spool_id))
    if not raw:
        return "the post is no longer kept"
    spool.requeue(conn, spool_id, now, "list: confirmed by its author's token", raw=raw)
    return "the post is distributed"


def token_confirmed(conn: sqlite3.Connection, spool_id: int, author: str) -> bool:
    """True when ``author`` answered a token for this very spool row."""
    return conn.execute("SELECT 1 FROM tokens WHERE purpose = ? AND used_at IS NOT NULL AND address = ?"
                        " AND json_extract(payload, '$.spool_id') = ? LIMIT 1",
                        (PURPOSE_POST, author, spool_id)).fetchone() is not None


def _forget_released(original_id: str) -> spool.Effect:
    """A released post, once distributed, needs its held copy no more."""

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE list_held SET raw = x'' WHERE original_message_id = ? AND state = 'released'",
                     (original_id,))

    return job


def _seen(conn: sqlite3.Connection, original_id: str) -> bool:
    return conn.execute("SELECT 1 FROM list_posts WHERE original_message_id = ?",
                        (original_id,)).fetchone() is not None


def _post_confirmed(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str,
                    now: float) -> str:
    return confirmed(conn, r.payload or "", now)


PURPOSES = (Purpose(PURPOSE_POST, "list", _post_confirmed, "list: {result}", "list post confirmed",
                    ("result",)),)


class ListDesk:
    def __init__(self, live: Live, reader: Reader, senders: SenderAuth) -> None:
        self.rt = live
        self.reader = reader
        self.senders = senders
        self.log = logs.get("list")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        cfg = self.rt.cfg
        log = self.log.bind(queue_id=p.queue_id)
        if facts.automatic or not p.mail_from or _is_our_list(facts):
            # A robot, a bounce, another list, or our own copy coming back: never
            # distributed, never answered (no loop can start).
            return spool.Outcome(p.id, spool.Status.DONE, "list: automatic mail is not distributed",
                                 ("list",))
        try:
            sender = await who_desk.identify(self.reader, self.senders, p, facts)
        except addresses.AddressError as e:
            return self._refusal(p, facts, e.reason)
        author = sender.mailbox
        if not sender.on_roster:
            log.info("list post refused: not an SSC")
            return self._refusal(p, facts, "only the Security and Stability Contacts on the roster "
                                           "may post to the list")
        trusted = sender.dkim or await self.reader.run(token_confirmed, p.id, author.key)
        if not trusted:
            if sender.lookup_failed:
                return self.senders.wait(p.id, "list", f"DKIM key lookup failed ({sender.lookup_failed})")
            if not facts.message_id:
                log.info("list post refused: unsigned, and no Message-ID")
                return self._refusal(p, facts, "the post carries neither a valid DKIM signature of"
                                               f" {author.domain} nor a Message-ID")
        original_id = facts.message_id or ""  # a signature counts only when it signs one
        if await self.reader.run(_seen, original_id):
            log.info("list post already distributed")
            return spool.Outcome(p.id, spool.Status.DONE, SEEN, ("list",))
        subject = decoded_subject(facts.subject or "")
        own = tlp.labels_in(subject) + tlp.labels_in(facts.text)
        answered = await self.reader.run(answered_labels, referenced_ids(facts))
        label = tlp.for_reply(answered, own)
        if not trusted:
            log.info("list post needs confirmation")
            return spool.Outcome(p.id, spool.Status.DONE, ASKED, ("list",),
                                 effects=(ask_confirmation(self.rt, p, facts, author.key, subject, label),))
        held = await self.reader.run(held_state, p.id, original_id)
        if held == "held":
            return spool.Outcome(p.id, spool.Status.DONE, "list: this post waits for a Validator already",
                                 ("list",))
        if held == "rejected":
            return spool.Outcome(p.id, spool.Status.REJECTED, "list: a Validator rejected this post",
                                 ("list",))
        if (held is None and cfg.list.moderate_first_posts
                and not await self.reader.run(has_posted, author.key)):
            log.info("list post held: a first post", tlp=label.label)
            return spool.Outcome(p.id, spool.Status.DONE,
                                 f"list: held for a Validator (a first post) [{label.label}]", ("list",),
                                 effects=(hold(self.rt, p, facts, author.key, subject, label),))
        try:
            policy = await dmarc_policy(self.senders.resolver, author.domain)
        except KeyTemporaryError as e:
            return self.senders.wait(p.id, "list", f"DMARC lookup for {author.domain} failed ({e})")
        post = build(self.rt, p.raw, subject, label, author, policy in STRICT_DMARC)
        log.info("list post distributed", tlp=label.label, from_rewritten=post.from_rewritten)
        effects: tuple[spool.Effect, ...] = (
            distribute(self.rt, post, original_id, author.key, p.id, p.queue_id),)
        if held == "released":
            effects += (_forget_released(original_id),)
        return spool.Outcome(p.id, spool.Status.DONE,
                             f"list: distributed [{label.label}]"
                             + (" (From rewritten: DMARC)" if post.from_rewritten else ""),
                             ("list",), effects=effects)

    def _refusal(self, p: spool.Pending, facts: MessageFacts, why: str) -> spool.Outcome:
        return desk_base.refusal(self.rt, p, facts, "list", f"list: {why}", template="list_refusal",
                                 kind="list-refusal", values={"reason": why})


def _is_our_list(facts: MessageFacts) -> bool:
    """Mail that came through a list (ours or another): its List-Id says so."""
    msg = facts.message
    return msg is not None and msg.get("list-id") is not None
