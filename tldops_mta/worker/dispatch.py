"""Which desk a spooled message goes to: a map from service address to desk.

One message, one desk: a mail to several service addresses is handled by the desk of the
first of them in ``ORDER`` (confirmations before new requests, so an answer is never taken
for a request), and the others are noted in its services. ``PURPOSES`` gathers the token
purposes each desk declares, for the confirm+ desk to look up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from tldops_mta.auth.iana import IanaClient
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.auth.token_purposes import registry
from tldops_mta.desks import decision_desk, list_desk, requests_desk, update_desk, who_desk
from tldops_mta.desks.bounce_desk import BounceDesk
from tldops_mta.desks.confirm_desk import ConfirmDesk
from tldops_mta.desks.desk_base import Desk
from tldops_mta.desks.help_desk import HelpDesk
from tldops_mta.desks.postmaster_desk import PostmasterDesk
from tldops_mta.roster import freshness, redelegation
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, Services
from tldops_mta.store import spool
from tldops_mta.store.storage import Reader

ORDER = (Service.CONFIRM, Service.DECIDE, Service.REQUESTS, Service.UPDATE, Service.WHO,
         Service.LIST, Service.HELP, Service.BOUNCES, Service.POSTMASTER, Service.ABUSE)

PURPOSES = registry(requests_desk.PURPOSES, decision_desk.PURPOSES, who_desk.PURPOSES,
                    list_desk.PURPOSES, update_desk.PURPOSES, redelegation.PURPOSES,
                    freshness.PURPOSES)


def desks(live: Live, reader: Reader, senders: SenderAuth, iana: IanaClient) -> dict[Service, Desk]:
    """One desk per service address."""
    postmaster = PostmasterDesk(live)
    return {
        Service.CONFIRM: ConfirmDesk(live, PURPOSES),
        Service.DECIDE: decision_desk.DecisionDesk(live, reader, senders),
        Service.REQUESTS: requests_desk.RequestsDesk(live, reader, senders, iana),
        Service.UPDATE: update_desk.UpdateDesk(live, reader),
        Service.WHO: who_desk.WhoDesk(live, reader, senders),
        Service.LIST: list_desk.ListDesk(live, reader, senders),
        Service.HELP: HelpDesk(live),
        Service.BOUNCES: BounceDesk(live, reader),
        Service.POSTMASTER: postmaster,
        Service.ABUSE: postmaster,
    }


class Dispatcher:
    def __init__(self, desks: Mapping[Service, Desk]) -> None:
        missing = set(Service) - set(desks)
        if missing:
            raise ValueError(f"no desk for {', '.join(sorted(missing))}")
        self.desks = dict(desks)

    async def __call__(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        first = next(s for s in ORDER if s in services)
        outcome = await self.desks[first].handle(p, facts, services)
        # Every service the message was sent to is noted, not only the one that handled it.
        noted = tuple(sorted(set(outcome.services) | {s.value for s in services}))
        return outcome if noted == outcome.services else replace(outcome, services=noted)
