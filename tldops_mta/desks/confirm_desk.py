"""confirm+TOKEN@: the answer to a one-time token, whatever it was issued for.

The token counts only when it is unused, unexpired, and answered From the address it was
sent to (``tokens.redeem``, read at the commit with the spool row, so an answer processed
again finds it as its first processing left it). What a counted token carries out, and how
the outcome says so, is its purpose's declaration (``token_purposes``), looked up here.
A token that does not count is refused with a reply; automatic mail confirms nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping

from tldops_mta import logs
from tldops_mta.auth import addresses
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.desks import desk_base
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, Services
from tldops_mta.store import spool, tokens


class ConfirmDesk:
    def __init__(self, live: Live, purposes: Mapping[str, Purpose]) -> None:
        self.rt = live
        self.purposes = {name: x for name, x in purposes.items() if x.redeem is not None}
        self.log = logs.get("auth")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        log = self.log.bind(queue_id=p.queue_id)
        if not p.mail_from or facts.automatic:
            log.info("automatic mail to a confirmation address ignored")
            return spool.Outcome(p.id, spool.Status.REJECTED,
                                 "automatic mail (null sender or Auto-Submitted) does not confirm",
                                 ("confirm",))
        try:
            sender = addresses.parse_single(facts.from_value or "", field="From")
        except addresses.AddressError as e:
            return desk_base.problems_refusal(self.rt, p, facts, "confirm", [e.reason])
        now = time.time()
        live, purposes, sender_key = self.rt, self.purposes, sender.key
        use = tokens.redeem(services.tag(Service.CONFIRM), frozenset(purposes), sender_key, now, p.id)
        ids: dict[str, int] = {}
        got: list[tuple[tokens.Redemption, str]] = []

        def job(conn: sqlite3.Connection) -> spool.Verdict:
            # Whether the token counts is read at commit, with the spool row: an answer
            # processed again after a failed commit finds it as unused as the first time.
            r = use(conn)
            if r.request_id is None:
                got[:] = [(r, r.reason)]
                reasons = [f"this confirmation does not count: {r.reason}"]
                desk_base.problems_told(live, p, facts, reasons)(conn)
                return spool.Verdict(spool.Status.REJECTED, "; ".join(reasons)[:1000])
            purpose = purposes[r.purpose or ""]
            assert purpose.redeem is not None
            # Again: what it confirms was carried out with its first use.
            result = r.reason if r.again else purpose.redeem(live, conn, r, sender_key, now)
            got[:] = [(r, result)]
            if purpose.about_a_request:
                ids["request"] = r.request_id
            said = purpose.said.format(request_id=r.request_id, result=result)
            return spool.Verdict(spool.Status.DONE, said)

        def logged() -> None:
            r, result = got[0]
            if r.request_id is None:
                log.info("confirmation refused", reason=r.reason)
                return
            purpose = purposes[r.purpose or ""]
            fields = {"request_id": r.request_id, "result": result}
            log.info(purpose.event, **{k: fields[k] for k in purpose.logged})

        return spool.Outcome(p.id, spool.Status.DONE, "confirmation", ("confirm",), effects=(job,),
                             ids=ids, after_commit=logged)
