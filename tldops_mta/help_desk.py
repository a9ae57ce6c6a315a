"""help@: answers with the request form (rules/replies.toml, table [help]).

Anyone may ask, so the answer is an automatic reply under auto_reply's rules: never to a
null sender or a robot, at most one per sender per interval. It holds the form and nothing
of the roster.
"""

from __future__ import annotations

from . import auto_reply, spool
from .live import Live
from .message_facts import MessageFacts

_FALLBACK = ("Send your request to {requests} as a plain-text form: 'Action: subscribe',\n"
             "'ccTLD: xx', then one 'SSC: primary' block per contact with First name,\n"
             "Last name, Phone and Email. (This server has no rules/replies.toml.)\n")


def template(live: Live) -> tuple[str, str]:
    """(subject, body) of the help reply, with the service addresses filled in."""
    table = live.rules.get("replies", {}).get("help", {})
    subject = str(table.get("subject", "[TLD-OPS] How to send a request"))
    body = str(table.get("body", _FALLBACK)).lstrip("\n")
    return subject, body.replace("{requests}", live.service_address("requests")).replace(
        "{help}", live.service_address("help"))


async def handle_help(live: Live, p: spool.Pending, facts: MessageFacts) -> spool.Outcome:
    if not auto_reply.may_answer(live, p, facts):
        return spool.Outcome(p.id, spool.Status.DONE, "help: no reply to a robot or a null sender",
                             ("help",))
    subject, body = template(live)
    effect = auto_reply.reply(live, p, facts, kind="help", subject=subject, body=body)
    return spool.Outcome(p.id, spool.Status.DONE, "help: the request form, unless sent lately",
                         ("help",), effects=(effect,))
