"""help@: answers with the request form (rules/replies.toml, table [help]).

Anyone may ask, so the answer is an automatic reply under auto_reply's rules: never to a
null sender or a robot, at most one per sender per interval. It holds the form and nothing
of the roster.
"""

from __future__ import annotations

from . import auto_reply, spool, texts
from .live import Live
from .message_facts import MessageFacts


def template(live: Live) -> tuple[str, str]:
    """(subject, body) of the help reply, with the service addresses filled in."""
    return texts.render(live.rules, "help", {"requests": live.service_address("requests"),
                                             "help": live.service_address("help")})


async def handle_help(live: Live, p: spool.Pending, facts: MessageFacts) -> spool.Outcome:
    if not auto_reply.may_answer(live, p, facts):
        return spool.Outcome(p.id, spool.Status.DONE, "help: no reply to a robot or a null sender",
                             ("help",))
    subject, body = template(live)
    effect = auto_reply.reply(live, p, facts, kind="help", subject=subject, body=body)
    return spool.Outcome(p.id, spool.Status.DONE, "help: the request form, unless sent lately",
                         ("help",), effects=(effect,))
