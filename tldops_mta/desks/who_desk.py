"""who@: a subscribed SSC asks for the current roster, and gets it as the broadcast is.

Only an SSC: the From (strictly parsed) must be on the roster. With a DKIM signature of its
domain that counts, the roster goes back at once; otherwise a one-time token goes to that
roster address and the roster follows the answer, so the roster only ever goes to an
address on it. Anyone else gets a short refusal with no roster data. ``identify`` and
``ask_token`` are list@'s too: both services are for SSCs only.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from tldops_mta import logs
from tldops_mta.auth import addresses
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.desks import desk_base
from tldops_mta.mail import mailing, tlp
from tldops_mta.roster import broadcast
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Services
from tldops_mta.store import spool, tokens
from tldops_mta.store.storage import Reader

PURPOSE_WHO = "who"
"""The token of an SSC's who@ query that had no DKIM signature that counts."""

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


async def identify(reader: Reader, senders: SenderAuth, p: spool.Pending, facts: MessageFacts) -> Sender:
    """The one authentication of an SSC, shared by who@ and list@: the From on the roster,
    then its domain's DKIM. AddressError when the From cannot be read strictly."""
    mailbox = addresses.parse_single(facts.from_value or "", field="From")
    if not await reader.run(is_member, mailbox.key):
        return Sender(mailbox, False, False, None)
    signed = await senders.verify(p.raw, mailbox.domain)
    return Sender(mailbox, True, bool(signed.counting), signed.lookup_failed)


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


def _roster_sent(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str,
                 now: float) -> str:
    broadcast.send_one(conn, live.cfg, sender_key, now)  # to the roster address it was sent to
    return "roster sent"


PURPOSES = (Purpose(PURPOSE_WHO, "who", _roster_sent, "who: roster sent (token)", "who confirmed"),)


class WhoDesk:
    def __init__(self, live: Live, reader: Reader, senders: SenderAuth) -> None:
        self.rt = live
        self.reader = reader
        self.senders = senders
        self.log = logs.get("who")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        log = self.log.bind(queue_id=p.queue_id)
        now = time.time()
        robot = desk_base.robot_or_null_sender(self.rt, p, facts, "who",
                                               "who: no answer to a robot or a null sender")
        if robot is not None:
            return robot
        try:
            sender = await identify(self.reader, self.senders, p, facts)
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
            return self.senders.wait(p.id, "who", f"DKIM key lookup failed ({sender.lookup_failed})")
        label = tlp.of_message(facts.subject or "", facts.text)

        def ask(conn: sqlite3.Connection) -> spool.Verdict | None:
            # Whether one was sent lately is what the database says at the commit.
            asked = ask_token(live, conn, PURPOSE_WHO, to, now, "who_confirmation", {},
                              label=label, bounce_tag="who", mail_purpose="who-token",
                              in_reply_to=facts.message_id)
            return None if asked else spool.Verdict(spool.Status.DONE, NOT_ASKED)

        log.info("who needs confirmation")
        return spool.Outcome(p.id, spool.Status.DONE, "who: token sent to the roster address", ("who",),
                             effects=(ask,))

    def _refusal(self, p: spool.Pending, facts: MessageFacts, why: str) -> spool.Outcome:
        return desk_base.refusal(self.rt, p, facts, "who", f"who: {why}", template="who_refusal", kind="who",
                                 values={"reason": why})
