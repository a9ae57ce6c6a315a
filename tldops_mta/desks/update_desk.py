"""update@: an SSC corrects their own name or phone, without the Validator.

The mail holds the request form (docs/requests.md) with ``Action: update``, the ccTLD, and
one SSC block: the SSC's own role and address (``Email`` and ``Replaces`` both the address
the roster has), with the new name and phone. Nothing else can change this way: another
address, another role, another person, or who is an SSC needs the IANA admin's request.
Whatever the signature, the change waits for the answer to a one-time token sent to the
roster address, so only the person at that address can make it.
"""

from __future__ import annotations

import json
import sqlite3
import time

from tldops_mta import logs
from tldops_mta.auth import addresses
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.desks import desk_base
from tldops_mta.mail import mailing, tlp
from tldops_mta.policy import roster_policy
from tldops_mta.policy.request_form import parse_form
from tldops_mta.policy.roster_policy import RosterEntry
from tldops_mta.roster import freshness, roster_table
from tldops_mta.settings.cctlds import tld_labels
from tldops_mta.settings.config import Config
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Services
from tldops_mta.store import spool, tokens
from tldops_mta.store.storage import Reader

PURPOSE_SELF_UPDATE = "self-update"


def apply(conn: sqlite3.Connection, cfg: Config, payload: str, address: str, now: float) -> str:
    """On the token's answer: the correction, if the SSC still holds that role."""
    wanted = json.loads(payload)
    tld = wanted["tld"]
    current = roster_table.current(conn, tld)
    mine = next((e for e in current if e.email.lower() == address.lower()), None)
    if mine is None or mine.role != wanted["role"]:
        return "not applied: the roster changed since (you no longer hold that role)"
    new = RosterEntry(mine.role, wanted["first_name"], wanted["last_name"], wanted["phone"], mine.email)
    roster_table.replace_all(conn, tld, [new if e is mine else e for e in current], None, now,
                             by=f"ssc:{address} (token)")
    freshness.confirmed(conn, cfg, tld, address, now)  # a correction is an answer to the yearly ask
    return f"your details for .{tld} are corrected"


def _applied(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str, now: float) -> str:
    return apply(conn, live.cfg, r.payload or "{}", sender_key, now)


PURPOSES = (Purpose(PURPOSE_SELF_UPDATE, "update", _applied, "update: {result}", "self-update confirmed",
                    ("result",)),)


class UpdateDesk:
    def __init__(self, live: Live, reader: Reader) -> None:
        self.rt = live
        self.reader = reader
        self.log = logs.get("update")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        live = self.rt
        now = time.time()
        robot = desk_base.robot_or_null_sender(live, p, facts, "update",
                                               "update: no answer to a robot or a null sender")
        if robot is not None:
            return robot
        try:
            sender = addresses.parse_single(facts.from_value or "", field="From")
        except addresses.AddressError as e:
            return self._refusal(p, facts, [e.reason])
        text = facts.text
        form = parse_form(text)
        problems = [str(x) for x in form.problems]
        tld = ""
        if not problems:
            try:
                tld = tld_labels(form.tld or "")[0]
            except ValueError:
                problems.append(f"'{form.tld}' is not a ccTLD")
        if not problems and (form.action != "update" or len(form.sscs) != 1):
            problems.append("a correction is 'Action: update' with one SSC block: your own")
        current = await self.reader.run(roster_table.current, tld) if tld else []
        mine = next((e for e in current if e.email.lower() == sender.key), None)
        if not problems:
            s = form.sscs[0]
            if mine is None:
                problems.append(f"you are not an SSC of .{tld} at the address you wrote from")
            elif {s.email.lower(), (s.replaces or "").lower()} != {sender.key}:
                problems.append("Email and Replaces must both be the address you write from: changing "
                                "the address, or who is an SSC, needs your ccTLD's administrative contact")
            elif s.role != mine.role:
                problems.append(f"your role is {mine.role}: changing it needs your ccTLD's administrative "
                                "contact")
            else:
                problems += [str(x) for x in roster_policy.entry_problems(form, tld, live.rules)]
        if problems:
            self.log.info("self-update refused", problems=len(problems))
            return self._refusal(p, facts, problems)
        s = form.sscs[0]
        number = roster_policy.e164(s.phone, roster_policy.region_of(tld, roster_policy.table(live.rules)))
        payload = json.dumps({"tld": tld, "role": s.role, "first_name": s.first_name,
                              "last_name": s.last_name, "phone": number})
        label = tlp.of_message(facts.subject or "", text)
        to = sender.key

        def ask(conn: sqlite3.Connection) -> None:
            address = mailing.one_time_address(live, conn, PURPOSE_SELF_UPDATE, to=to, now=now,
                                               payload=payload)
            mailing.send(live, conn, "self_update_confirmation", [to], {
                "tld": tld, "change": f"  {s.first_name} {s.last_name}, {number}",
                "confirm_address": address}, tlp=label, bounce_tag="update", purpose="self-update",
                reply_to=address, auto="auto-replied", in_reply_to=facts.message_id)

        self.log.info("self-update waits for confirmation", tld=tld)
        return spool.Outcome(p.id, spool.Status.DONE, "update: token sent to the roster address", ("update",),
                             effects=(ask,))

    def _refusal(self, p: spool.Pending, facts: MessageFacts, problems: list[str]) -> spool.Outcome:
        return desk_base.problems_refusal(self.rt, p, facts, "update", problems)
