"""help@: answers with the request form (rules/replies.toml, table [help]).

Anyone may ask, so the answer is an automatic reply under auto_reply's rules: never to a
null sender or a robot, at most one per sender per interval. It holds the form and nothing
of the roster.
"""

from __future__ import annotations

from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.desks import desk_base
from tldops_mta.mail import auto_reply
from tldops_mta.policy import texts
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Services
from tldops_mta.store import spool


def template(live: Live) -> tuple[str, str]:
    """(subject, body) of the help reply, with the service addresses filled in."""
    return texts.render(live.rules, "help", {"requests": live.service_address("requests"),
                                             "help": live.service_address("help")})


class HelpDesk:
    def __init__(self, live: Live) -> None:
        self.rt = live

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        robot = desk_base.robot_or_null_sender(self.rt, p, facts, "help",
                                               "help: no reply to a robot or a null sender")
        if robot is not None:
            return robot
        subject, body = template(self.rt)
        effect = auto_reply.reply(self.rt, p, facts, kind="help", subject=subject, body=body)
        return spool.Outcome(p.id, spool.Status.DONE, "help: the request form, unless sent lately",
                             ("help",), effects=(effect,))
