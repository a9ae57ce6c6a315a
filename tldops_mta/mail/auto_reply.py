"""Automatic replies (refusals, the help template): to whom, how often, and how.

RFC 3834: to the envelope sender, never to a null sender, to a robot (Auto-Submitted,
Precedence: bulk/list) or to ourselves; ``Auto-Submitted: auto-replied`` on the reply. And
no backscatter: at most one reply of each kind per sender in ``auth.refusal_interval``,
counted in the same transaction that queues the reply, so a flood of forged senders costs
at most one mail each per interval. The mail is composed only when it is sent.
"""

from __future__ import annotations

import sqlite3
import time

from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.mail import outbox, tlp
from tldops_mta.settings.live import Live
from tldops_mta.store import spool


def may_answer(live: Live, p: spool.Pending, facts: MessageFacts) -> bool:
    """Whether this message may get an automatic reply at all (RFC 3834)."""
    to = p.mail_from
    own = "@" + live.cfg.server.domain.lower()
    return bool(to) and not facts.automatic and not to.lower().endswith(own)


def reply(live: Live, p: spool.Pending, facts: MessageFacts, *, kind: str, subject: str,
          body: str) -> spool.Effect:
    """An effect that queues ``body`` to the sender of ``p``, unless RFC 3834 or the per-sender
    limit says not to (then it does nothing)."""
    if not may_answer(live, p, facts):
        return _nothing
    cfg = live.cfg
    to = p.mail_from
    interval = cfg.auth.refusal_interval
    from_addr = f"TLD-OPS <{live.service_address('postmaster')}>"
    domain = cfg.server.domain
    queue_id, in_reply_to = p.queue_id, facts.message_id

    def job(conn: sqlite3.Connection) -> None:
        now = time.time()
        row = conn.execute("SELECT last_sent FROM auto_replies WHERE kind = ? AND address = ?",
                           (kind, to.lower())).fetchone()
        if row is not None and row[0] > now - interval:
            return
        # A reply is labelled like what it answers, at the least (no label there: RED). Read
        # only for a reply that goes: a sender over the limit costs no walk through its text.
        label = tlp.of_message(facts.subject or "", facts.text)
        conn.execute("INSERT INTO auto_replies (kind, address, last_sent) VALUES (?, ?, ?)"
                     " ON CONFLICT (kind, address) DO UPDATE SET last_sent = excluded.last_sent",
                     (kind, to.lower(), now))
        raw = outbox.compose(from_addr=from_addr, to=to, body=body, domain=domain, tlp=label,
                             subject=subject, in_reply_to=in_reply_to, auto="auto-replied")
        outbox.enqueue(raw, "", [to], kind, ref=queue_id, cfg=cfg)(conn)

    return job


def _nothing(conn: sqlite3.Connection) -> None:
    return None
