"""What every desk (the handler of one service address) is and does alike.

A desk turns one message into its outcome and effects (committed by the worker with the
spool row). Every desk answers no robot and no null sender, and refuses in one way: a short
reply under auto_reply's rules (RFC 3834, once per sender per ``auth.refusal_interval``),
holding no roster data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.mail import auto_reply
from tldops_mta.policy import texts
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Services
from tldops_mta.store import spool


class Desk(Protocol):
    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        """The outcome of ``p``, sent (among others) to this desk's service."""
        ...


def robot_or_null_sender(live: Live, p: spool.Pending, facts: MessageFacts, service: str,
                         said: str) -> spool.Outcome | None:
    """The outcome of mail no desk answers (a robot's, a null sender's, our own), or None."""
    if auto_reply.may_answer(live, p, facts):
        return None
    return spool.Outcome(p.id, spool.Status.DONE, said, (service,))


def told(live: Live, p: spool.Pending, facts: MessageFacts, *, template: str, kind: str,
         values: dict[str, Any]) -> spool.Effect:
    """The effect that tells the sender with ``template`` (its ``help`` value filled in),
    unless auto_reply's rules say not to."""
    subject, body = texts.render(live.rules, template, {**values, "help": live.service_address("help")})
    return auto_reply.reply(live, p, facts, kind=kind, subject=subject, body=body)


def problems_told(live: Live, p: spool.Pending, facts: MessageFacts, problems: Sequence[str]) -> spool.Effect:
    """The reply that lists what was wrong with a request or an answer, and where to send it
    again (template ``refusal``)."""
    return told(live, p, facts, template="refusal", kind="refusal",
                values={"problems": "".join(f"  - {x}\n" for x in problems),
                        "requests": live.service_address("requests")})


def refusal(live: Live, p: spool.Pending, facts: MessageFacts, service: str, reason: str, *,
            template: str, kind: str, values: dict[str, Any],
            effects: Sequence[spool.Effect] = ()) -> spool.Outcome:
    """Rejected with ``reason``, and the sender told (``told``)."""
    reply = told(live, p, facts, template=template, kind=kind, values=values)
    return spool.Outcome(p.id, spool.Status.REJECTED, reason, (service,), effects=(*effects, reply))


def problems_refusal(live: Live, p: spool.Pending, facts: MessageFacts, service: str,
                     problems: Sequence[str], effects: Sequence[spool.Effect] = ()) -> spool.Outcome:
    """Rejected for ``problems``, and the sender told them (``problems_told``)."""
    return spool.Outcome(p.id, spool.Status.REJECTED, "; ".join(problems)[:1000], (service,),
                         effects=(*effects, problems_told(live, p, facts, problems)))
