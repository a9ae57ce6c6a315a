"""Which handler a spooled message goes to, by the service address it was sent to.

One message, one handler: a mail to several service addresses is handled as the first of
them in ``ORDER`` (confirmations before new requests, so an answer is never mistaken for a
request), and the others are noted in its services.
"""

from __future__ import annotations

from dataclasses import replace

from . import postmaster_desk, spool
from .bounce_desk import BounceDesk
from .decision_desk import DecisionDesk
from .help_desk import handle_help
from .list_desk import ListDesk
from .live import Live
from .message_facts import MessageFacts
from .recipients import Service, classify
from .request_auth import Authenticator
from .update_desk import UpdateDesk
from .who_desk import WhoDesk

ORDER = (Service.CONFIRM, Service.DECIDE, Service.REQUESTS, Service.UPDATE, Service.WHO,
         Service.LIST, Service.HELP, Service.BOUNCES, Service.POSTMASTER, Service.ABUSE)


class Dispatcher:
    def __init__(self, live: Live, auth: Authenticator, desk: DecisionDesk, who: WhoDesk,
                 update: UpdateDesk, bounces: BounceDesk) -> None:
        self.rt = live
        self.auth = auth
        self.desk = desk
        self.who = who
        self.update = update
        self.bounces = bounces
        self.list = ListDesk(live, who.reader, auth)

    async def __call__(self, p: spool.Pending, facts: MessageFacts,
                       services: frozenset[Service]) -> spool.Outcome:
        outcome = await self._handle(p, facts, services)
        # Every service the message was sent to is noted, not only the one that handled it.
        noted = tuple(sorted(set(outcome.services) | {s.value for s in services}))
        return outcome if noted == outcome.services else replace(outcome, services=noted)

    async def _handle(self, p: spool.Pending, facts: MessageFacts,
                      services: frozenset[Service]) -> spool.Outcome:
        first = next(s for s in ORDER if s in services)
        if first in (Service.CONFIRM, Service.DECIDE, Service.BOUNCES):
            tag = next(r.tag for r in (classify(a, self.rt.cfg["server.domain"], self.rt.parts)
                                        for a in p.rcpt_to)
                       if r is not None and r.service is first)
            assert tag is not None
            if first is Service.DECIDE:
                return await self.desk.handle(p, facts, tag)
            if first is Service.BOUNCES:
                return await self.bounces.handle(p, facts, tag)
            return await self.auth.handle_confirmation(p, facts, tag)
        if first is Service.REQUESTS:
            return await self.auth.handle_request(p, facts)
        if first is Service.UPDATE:
            return await self.update.handle(p, facts)
        if first is Service.WHO:
            return await self.who.handle(p, facts)
        if first is Service.LIST:
            return await self.list.handle(p, facts)
        if first is Service.HELP:
            return await handle_help(self.rt, p, facts)
        return postmaster_desk.forward(self.rt, p, facts, services)
