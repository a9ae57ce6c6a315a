"""decide+TOKEN@: a Validator's answer to the mail that asked for a decision.

It counts only when all hold: the From is one of ``validation.validators``, the message
carries a counting DKIM signature aligned with that address's domain (the same strict
check as for requests), the token is one we issued for a request to that very Validator
(each has their own; another's token is refused and stays its owner's), and the first line of
the text is ``approve``, ``deny REASON`` or ``escalate REASON``. Anything else from a
stranger is dropped without a reply (no backscatter, nothing learned); a Validator is
always told what became of their mail, so a decision that did not count is never mistaken
for one that did.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

from tldops_mta import logs
from tldops_mta.auth import addresses
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.mail import tlp
from tldops_mta.policy.queue_states import Actor, Event
from tldops_mta.request_queue import transitions
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, Services
from tldops_mta.store import spool, tokens
from tldops_mta.store.storage import Reader

_COMMAND = re.compile(r"^(approve|deny|escalate)\b[\s:,-]*(.*)$", re.IGNORECASE)
HOW = "Write 'approve', 'deny REASON' or 'escalate REASON' on the first line of your reply."


def first_line(text: str) -> str:
    """The first line a person wrote: blank lines and quoted lines ('>') skipped."""
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith(">"):
            return s
    return ""


def command(text: str) -> tuple[Event, str] | None:
    m = _COMMAND.match(first_line(text))
    if m is None:
        return None
    return Event(m.group(1).lower()), " ".join(m.group(2).split())[:500]


def _confirmed(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str,
               now: float) -> str:
    """A Validator confirmed a decision they sent without a DKIM signature that counts
    (where ``validation.decision_auth`` allows it): it is made now."""
    assert r.request_id is not None
    wanted = json.loads(r.payload or "{}")
    by = transitions.By(Actor.VALIDATOR, sender_key, "token")
    result = transitions.act(live, conn, r.request_id, Event(wanted["event"]), by, wanted.get("reason"),
                             now=now)
    transitions.answer_validator(live, conn, r.request_id, sender_key, result.message, None)
    return result.message


PURPOSES = (
    Purpose(transitions.PURPOSE_DECIDE, "decide", None),  # answered at decide+TOKEN@ itself
    Purpose(transitions.PURPOSE_CONFIRM_DECISION, "decide", _confirmed, "decision confirmed: {result}",
            "decision confirmed", ("request_id", "result"), about_a_request=True),
)


class DecisionDesk:
    def __init__(self, live: Live, reader: Reader, senders: SenderAuth) -> None:
        self.rt = live
        self.reader = reader
        self.senders = senders
        self.log = logs.get("decide")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        cfg = self.rt.cfg
        log = self.log.bind(queue_id=p.queue_id)
        now = time.time()
        token = services.tag(Service.DECIDE)

        def dropped(why: str) -> spool.Outcome:
            log.info("decision ignored", reason=why)
            return spool.Outcome(p.id, spool.Status.REJECTED, f"decision ignored: {why}", ("decide",))

        if not p.mail_from or facts.automatic:
            return dropped("automatic mail (null sender or Auto-Submitted)")
        try:
            sender = addresses.parse_single(facts.from_value or "", field="From")
        except addresses.AddressError as e:
            return dropped(e.reason)
        if sender.key not in {v.lower() for v in cfg.validation.validators}:
            return dropped("the sender is not a Validator")
        # From here on the answer goes to a Validator's own address: safe to send, even if
        # this mail was forged in their name (they then learn of the attempt).
        found = await self.reader.run(tokens.find(token, transitions.PURPOSE_DECIDE, now))
        signed = await self.senders.verify(p.raw, sender.domain, now)
        counting = signed.counting
        if signed.lookup_failed:
            return self.senders.wait(p.id, "decide", f"DKIM key lookup failed ({signed.lookup_failed})")
        request_id = found[0] if found else None
        text = facts.text
        wanted = command(text)
        label = tlp.of_message(facts.subject or "", text)
        confirmable = cfg.validation.decision_auth == "dkim-or-confirmation"
        if found is None:
            why = "this decision address is unknown or has expired; answer the newest mail about the request"
        elif found[1] != sender.key:
            why = (f"your decision did not count: this decision address was sent to another Validator. "
                   f"Answer the mail about request #{request_id} that was sent to you.")
        elif not counting and confirmable and wanted is not None:
            assert request_id is not None
            rid, (event, reason), to = request_id, wanted, sender.key
            live = self.rt

            def ask(conn: sqlite3.Connection) -> None:
                transitions.ask_to_confirm(live, conn, rid, to, event, reason or None, now=now,
                                           in_reply_to=facts.message_id, answered=label)

            log.info("decision waits for confirmation", request_id=request_id)
            return spool.Outcome(p.id, spool.Status.DONE, "decision without DKIM: confirmation asked",
                                 ("decide",), effects=(ask,))
        elif not counting:
            why = (f"your decision did not count: it has no valid DKIM signature of {sender.domain}. "
                   "Send it from your usual mail system, which signs, or decide with 'tldops queue'.")
        elif wanted is None:
            why = f"your mail did not say what to do. {HOW}"
        else:
            why = ""
        if why:
            log.info("decision refused", request_id=request_id, reason=why)
            told = self._answer(request_id, sender.key, why, facts.message_id, label)
            return spool.Outcome(p.id, spool.Status.REJECTED, why[:1000], ("decide",), effects=(told,))

        assert wanted is not None and request_id is not None
        event, reason = wanted
        by = transitions.By(Actor.VALIDATOR, sender.key, "dkim")
        evidence = {"message_id": facts.message_id, "spool": p.queue_id,
                    "dkim": [dict(s.__dict__) for s in counting]}
        live = self.rt

        once = facts.message_id or f"<spool-{p.id}@{cfg.server.domain}>"

        results: list[transitions.Result] = []

        def job(conn: sqlite3.Connection) -> spool.Verdict:
            # A decision mail counts once: a replayed copy changes nothing and mails nobody.
            # What the request's state allows is read here, at commit, with the spool row.
            if conn.execute("SELECT 1 FROM seen_messages WHERE message_id = ?", (once,)).fetchone():
                result = transitions.Result(False, "this decision mail was already processed")
            else:
                conn.execute("INSERT INTO seen_messages (message_id, spool_id, seen_at) VALUES (?,?,?)",
                             (once, p.id, now))
                result = transitions.act(live, conn, request_id, event, by, reason or None, now=now,
                                         evidence=evidence)
                transitions.answer_validator(live, conn, request_id, sender.key, result.message,
                                             facts.message_id, label)
            results[:] = [result]
            status = spool.Status.DONE if result.ok else spool.Status.REJECTED
            return spool.Verdict(status, result.message[:1000])

        def logged() -> None:
            result = results[0]
            log.info("decision", request_id=request_id, action=event.value, ok=result.ok, state=result.state)

        return spool.Outcome(p.id, spool.Status.DONE, f"decision: {event.value}", ("decide",),
                             effects=(job,), ids={"request": request_id}, after_commit=logged)

    def _answer(self, request_id: int | None, to: str, text: str, in_reply_to: str | None,
                label: tlp.Tlp) -> spool.Effect:
        live = self.rt

        def job(conn: sqlite3.Connection) -> None:
            transitions.answer_validator(live, conn, request_id, to, text, in_reply_to, label)

        return job
