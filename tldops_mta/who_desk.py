"""who@: a subscribed SSC asks for the current roster, and gets it as the broadcast is.

Only an SSC: the From address (strictly parsed) must be on the roster. Verified by a DKIM
signature of its domain that counts, the roster goes back at once; otherwise a one-time
token goes to that roster address and the roster follows the answer to it, so the roster
only ever goes to an address on it. Anyone else gets a short refusal with no roster data
(auto_reply's rules: once a day, never to robots).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import addresses, auto_reply, broadcast, logs, mailing, spool, texts, tlp
from .dkim_verify import verify
from .live import Live
from .message_facts import MessageFacts
from .request_form import body_text
from .storage import Reader

if TYPE_CHECKING:  # a type only: request_auth imports the desks (token purposes)
    from .request_auth import Authenticator

TOKEN_GAP = 600.0
"""At most one token mail per SSC in this many seconds: forged queries cannot flood an inbox."""
NOT_ASKED = "who: a token was sent lately; not again"


def is_member(conn: sqlite3.Connection, address: str) -> bool:
    row = conn.execute("SELECT 1 FROM roster WHERE lower(email) = ? LIMIT 1", (address.lower(),))
    return row.fetchone() is not None


@dataclass(frozen=True)
class Sender:
    """Who wrote a message to an SSC-only service (who@, list@), as far as mail can say."""

    mailbox: addresses.Mailbox
    """The strictly parsed From."""
    on_roster: bool
    dkim: bool
    """A DKIM signature of its domain counts (checked only for someone on the roster)."""
    lookup_failed: str | None
    """No signature counts because a key lookup failed for now: which, and how."""


async def identify(live: Live, reader: Reader, auth: Authenticator, p: spool.Pending,
                   facts: MessageFacts) -> Sender:
    """The one authentication of an SSC, shared by who@ and list@: the From on the roster,
    then its domain's DKIM. AddressError when the From cannot be read strictly."""
    cfg = live.cfg
    mailbox = addresses.parse_single(facts.from_value or "", field="From")
    if not await reader.run(is_member, mailbox.key):
        return Sender(mailbox, False, False, None)
    report = await verify(p.raw, auth.resolver, min_rsa_bits=cfg["dkim.min_rsa_bits"], now=time.time(),
                          offload=auth.offload)
    alignment = cfg["dkim.alignment"]
    if report.counting(mailbox.domain, alignment):
        return Sender(mailbox, True, True, None)
    failed = report.key_failures() if report.temporary(mailbox.domain, alignment) else None
    return Sender(mailbox, True, False, failed)


def ask_token(live: Live, conn: sqlite3.Connection, purpose: str, to: str, now: float, template: str,
              values: dict[str, object], *, label: tlp.Tlp, bounce_tag: str, mail_purpose: str,
              in_reply_to: str | None, payload: str | None = None) -> bool:
    """A token for ``purpose`` mailed to ``to`` (a roster address: never one the message
    names) with template ``template``, whose answer goes to its confirm+TOKEN@ address.
    False, and nothing sent, when ``to`` was sent one for ``purpose`` within TOKEN_GAP:
    who@ and list@ share this, so neither can be made to flood an SSC's inbox."""
    last = conn.execute("SELECT max(created_at) FROM tokens WHERE purpose = ? AND address = ?",
                        (purpose, to)).fetchone()[0]
    if last is not None and last > now - TOKEN_GAP:
        return False
    address = mailing.one_time_address(live, conn, purpose, to=to, now=now, payload=payload)
    mailing.send(live, conn, template, [to], {**values, "confirm_address": address}, tlp=label,
                 bounce_tag=bounce_tag, purpose=mail_purpose, reply_to=address, auto="auto-replied",
                 in_reply_to=in_reply_to)
    return True


class WhoDesk:
    def __init__(self, live: Live, reader: Reader, auth: Authenticator) -> None:
        self.rt = live
        self.reader = reader
        self.auth = auth
        self.log = logs.get("who")

    async def handle(self, p: spool.Pending, facts: MessageFacts) -> spool.Outcome:
        cfg = self.rt.cfg
        log = self.log.bind(queue_id=p.queue_id)
        now = time.time()
        if not auto_reply.may_answer(self.rt, p, facts):
            return spool.Outcome(p.id, spool.Status.DONE, "who: no answer to a robot or a null sender",
                                 ("who",))
        try:
            sender = await identify(self.rt, self.reader, self.auth, p, facts)
        except addresses.AddressError as e:
            return self._refusal(p, facts, e.reason)
        if not sender.on_roster:
            log.info("who refused: not an SSC")
            return self._refusal(p, facts, "the roster goes only to its Security and Stability Contacts")
        live, to = self.rt, sender.mailbox.key
        if sender.dkim:
            log.info("who answered", dkim=True)
            return spool.Outcome(p.id, spool.Status.DONE, "who: roster sent (DKIM)", ("who",),
                                 effects=(lambda conn: broadcast.send_one(conn, live.cfg, to, now),))
        if sender.lookup_failed:
            return spool.waiting(p.id, "who", f"DKIM key lookup failed ({sender.lookup_failed})",
                                 float(cfg["worker.retry_base"]))
        label = tlp.of_message(facts.subject or "", body_text(facts.message or p.raw))

        def ask(conn: sqlite3.Connection) -> spool.Verdict | None:
            # Whether one was sent lately is what the database says at the commit.
            asked = ask_token(live, conn, broadcast.PURPOSE_WHO, to, now, "who_confirmation", {},
                              label=label, bounce_tag="who", mail_purpose="who-token",
                              in_reply_to=facts.message_id)
            return None if asked else spool.Verdict(spool.Status.DONE, NOT_ASKED)

        log.info("who needs confirmation")
        return spool.Outcome(p.id, spool.Status.DONE, "who: token sent to the roster address", ("who",),
                             effects=(ask,))

    def _refusal(self, p: spool.Pending, facts: MessageFacts, why: str) -> spool.Outcome:
        subject, body = texts.render(self.rt.rules, "who_refusal", {
            "reason": why, "help": self.rt.service_address("help")})
        effect = auto_reply.reply(self.rt, p, facts, kind="who", subject=subject, body=body)
        return spool.Outcome(p.id, spool.Status.REJECTED, f"who: {why}", ("who",), effects=(effect,))
