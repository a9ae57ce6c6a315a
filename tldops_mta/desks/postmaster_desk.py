"""postmaster@ and abuse@: their mail goes to a person, the operators of postmaster.forward_to.

A forward is a new mail of ours with the original attached as message/rfc822, octet for
octet, not the original resent with Resent-* fields: it keeps the original intact (its
header, its signatures, its From) and can never pass for mail the daemon wrote or vouched
for, since our From, Subject and any signature of ours are on the wrapper, while a forged
"From: postmaster@" of ours stays inside, visibly someone else's. Its envelope sender is
bounces+forward@, so a failure comes back to us, never to the original's sender.

Loops are impossible: a mail is never forwarded when it comes from the null sender (a
delivery report: the bounce of a forward among them), from our own domain, carries our
X-Loop (a forward of ours that came back), or is automatic and answers or claims to be
our own mail (a vacation reply to a forward). Such mail is kept in the spool, unread.
Every message is forwarded at most once: its row here commits with its spool outcome.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable, Sequence
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr

from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.mail import outbox, tlp
from tldops_mta.policy import texts
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, Services
from tldops_mta.store import spool


def why_kept(mail_from: str, header: Message, automatic: bool, domain: str) -> str | None:
    """Why this mail must not be forwarded (a loop it could start), or None. Pure."""
    own = "@" + domain.lower()
    if not mail_from:
        return "the null sender (a delivery report) is never forwarded"
    if mail_from.lower().endswith(own):
        return "mail from our own domain is never forwarded"
    if any(own in str(v).lower() for v in header.get_all("X-Loop") or []):
        return "a forward of ours that came back (X-Loop)"
    if automatic:
        answered = " ".join(str(v) for name in ("In-Reply-To", "References")
                            for v in header.get_all(name) or [])
        if own + ">" in answered.lower():
            return "an automatic answer to our own mail"
        if parseaddr(str(header.get("From", "")))[1].lower().endswith(own):
            return "automatic mail in our own name"
    return None


def forward(live: Live, p: spool.Pending, facts: MessageFacts,
            services: frozenset[Service]) -> spool.Outcome:
    """The outcome for a mail to postmaster@ or abuse@: forwarded to the operators, or kept."""
    service = Service.POSTMASTER if Service.POSTMASTER in services else Service.ABUSE
    domain = live.cfg.server.domain
    operators = live.cfg.postmaster.forward_to
    header = facts.message or BytesHeaderParser(policy=compat32).parsebytes(p.raw)
    kept = why_kept(p.mail_from, header, facts.automatic, domain)
    if kept is None and not operators:
        kept = "no operator to forward to (postmaster.forward_to)"
    reason = (f"{service.value}: kept, unread: {kept}" if kept
              else f"{service.value}: forwarded to {len(operators)} operator(s)")
    effect = _record(live, p, facts, service, operators if kept is None else (), kept)
    return spool.Outcome(p.id, spool.Status.DONE, reason, (service.value,), effects=(effect,))


def _record(live: Live, p: spool.Pending, facts: MessageFacts, service: Service,
            operators: Sequence[str], kept: str | None) -> spool.Effect:
    """The effect: the message's row and, unless kept, its forward in the outbox (once)."""
    address = live.service_address(service.value)
    bounces = live.service_address("bounces", "forward")
    rules, domain = live.rules, live.cfg.server.domain

    def job(conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT received_at, client_addr, helo FROM spool WHERE id = ?",
                           (p.id,)).fetchone()
        received_at = float(row[0]) if row else time.time()
        cur = conn.execute("INSERT OR IGNORE INTO postmaster_mail (spool_id, service, received_at,"
                           " kept) VALUES (?,?,?,?)", (p.id, service.value, received_at, kept))
        if cur.rowcount != 1 or not operators:
            return  # recorded before (forwarded then, or kept), or nobody to send it to
        subject, body = texts.render(rules, "postmaster_forward", {
            "address": address, "sender": p.mail_from, "queue_id": p.queue_id,
            "client": f"{row[1]} (HELO {row[2]})" if row else "?",
            "received": dt.datetime.fromtimestamp(received_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "subject": facts.subject or "(no subject)"})
        # Labelled as what it carries, at the least (no label there: RED), as any reply.
        label = tlp.of_message(facts.subject or "", facts.text)
        raw = outbox.compose(from_addr=f"TLD-OPS <{address}>", to=", ".join(operators),
                             subject=subject, body=body, domain=domain, tlp=label,
                             extra_headers=[("X-Loop", address)], attached=p.raw)
        mid = outbox.enqueue(raw, bounces, operators, "postmaster-forward", ref=p.queue_id,
                             cfg=live.cfg)(conn)
        conn.execute("UPDATE postmaster_mail SET outbox_id = ? WHERE spool_id = ?", (mid, p.id))

    return job


class PostmasterDesk:
    """postmaster@ and abuse@ alike: which of them the mail was for is in its services."""

    def __init__(self, live: Live) -> None:
        self.rt = live

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        return forward(self.rt, p, facts, services)


class NotMarkable(ValueError):
    """An id that names no kept mail to postmaster@ or abuse@: nothing is marked."""


def mark_read(queue_ids: Sequence[str], now: float, who: str) -> Callable[[sqlite3.Connection], None]:
    """A writer job: mark kept mails to postmaster@/abuse@ read, all of them or (raising
    NotMarkable, which rolls the transaction back) none."""

    def job(conn: sqlite3.Connection) -> None:
        for queue_id in queue_ids:
            row = conn.execute("SELECT p.spool_id, p.outbox_id FROM postmaster_mail p"
                               " JOIN spool s ON s.id = p.spool_id WHERE s.queue_id = ?",
                               (queue_id,)).fetchone()
            if row is None:
                raise NotMarkable(f"no mail to postmaster@ or abuse@ with id {queue_id}")
            if row[1] is not None:
                raise NotMarkable(f"{queue_id} was forwarded to the operators: it needs no marking")
            conn.execute("UPDATE postmaster_mail SET read_at = ?, read_by = ? WHERE spool_id = ?"
                         " AND read_at IS NULL", (now, who, row[0]))

    return job
