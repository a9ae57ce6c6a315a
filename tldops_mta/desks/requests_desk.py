"""requests@: a request to change a ccTLD's roster, and who may make it.

The imperative shell around ``trust.decide``: it gathers the facts (strictly parsed
addresses, the sender's DKIM, IANA's answer, replay history), asks the pure decision, and
turns its verdict into effects that commit with the spool outcome: a request row with its
evidence, a token and the mail carrying it, or a refusal. A lookup that fails makes the
message wait and come back; it never decides anything. The tokens it issues (confirming a
request, withdrawing one) are declared here, in ``PURPOSES``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from tldops_mta import logs, metrics
from tldops_mta.auth import addresses
from tldops_mta.auth.dkim_verify import DkimReport, authentication_results
from tldops_mta.auth.iana import AdminContact, IanaClient, LookupUnavailable
from tldops_mta.auth.message_facts import REQUIRED_FOR_REQUESTS, MessageFacts
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.auth.token_purposes import Purpose
from tldops_mta.auth.trust import Decision, IanaView, MessageView, Verdict, decide
from tldops_mta.desks import desk_base
from tldops_mta.mail import auto_reply, outbox, tlp
from tldops_mta.policy import roster_policy, texts
from tldops_mta.policy.queue_states import Actor, Event, State
from tldops_mta.policy.request_form import FormProblem, RequestForm, parse_form
from tldops_mta.request_queue import transitions
from tldops_mta.roster import roster_table
from tldops_mta.settings import cctlds
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Services
from tldops_mta.store import spool, tokens
from tldops_mta.store.storage import Reader

PURPOSE_CONFIRM = "confirm-request"


class RequestsDesk:
    def __init__(self, live: Live, reader: Reader, senders: SenderAuth, iana: IanaClient) -> None:
        self.rt = live
        self.reader = reader
        self.senders = senders
        self.iana = iana
        self.log = logs.get("auth")

    async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
        cfg = self.rt.cfg
        now = time.time()
        log, qid = self.log, p.queue_id  # bound only in the lines said (a verified request says none here)
        problem = facts.problem(REQUIRED_FOR_REQUESTS)
        sender: addresses.Mailbox | None = None
        cc: list[addresses.Mailbox] = []
        if problem is None:
            try:
                sender = addresses.parse_single(facts.from_value or "", field="From")
                if facts.sender_value is not None:
                    addresses.parse_single(facts.sender_value, field="Sender")
                if facts.cc_value is not None:
                    cc = addresses.parse_address_list(facts.cc_value, field="Cc")
            except addresses.AddressError as e:
                problem = e.reason
        text = facts.text if problem is None else ""
        form = parse_form(text) if problem is None else None
        if problem is not None or form is None:
            log.info("request refused", queue_id=qid, reason=problem)
            return self._refusal(p, facts, [problem or "unreadable"])
        try:
            table = self.rt.cctld_table()
        except cctlds.CctldsError as e:
            log.error("requests wait: rules/cctlds.csv cannot be read", queue_id=qid, problems=e.problems[:3])
            return spool.waiting(p.id, "requests", f"rules/cctlds.csv cannot be read: {e.problems[0]}",
                                 cfg.worker.retry_base)
        # Before DKIM and IANA: a name that is no ccTLD costs no lookup.
        cctld, tld_problem = _cctld_of(form, table, dt.datetime.fromtimestamp(now, dt.UTC).date())
        if not form.ok or tld_problem is not None:
            problems = _all_problems(form, self.rt, cctld, tld_problem)
            log.info("request form refused", queue_id=qid, problems=len(problems))
            return self._refusal(p, facts, [str(x) for x in problems])
        assert cctld is not None and sender is not None
        a_label = cctld.tld

        signed = await self.senders.verify(p.raw, sender.domain, now)
        report, counting = signed.report, signed.counting
        counted = metrics.worker_metrics()
        for sig in report.signatures:
            counted.count_signature(sig.result, "yes" if sig in counting else "no")
        replayed, replay_why = await self._replayed(facts, now)
        view = MessageView(
            from_key=sender.key,
            cc_keys=frozenset(m.key for m in cc),
            problem=None,
            dkim_domains=frozenset(s.domain for s in counting),
            dkim_temporary=signed.temporary,
            replayed=replayed,
        )
        contact: AdminContact | None = None
        unavailable: str | None = None
        try:
            contact = await self.iana.admin_contact(a_label)
        except LookupUnavailable as e:
            unavailable = e.reason
            log.warning("IANA lookup unavailable", queue_id=qid, tld=a_label, reason=e.reason)
            d = decide(view, IanaView(a_label, None, unavailable=True))
        else:
            d = decide(view, IanaView(a_label, contact.email if contact.status == "ok" else None))
        # A wait names the lookup that failed and how (refused, SERVFAIL, timed out, HTTP 500),
        # in the log and in the spool's reason: an operator must see which service is down.
        failed = None if d.verdict is not Verdict.WAIT else unavailable or report.key_failures()
        decided = {"tld": d.tld, "verdict": d.verdict.value, "reason": d.reason,
                   "dkim": [s.domain for s in counting], "replayed": replayed}
        if d.verdict is Verdict.WAIT or d.verdict is Verdict.REFUSED:
            log.info("request decided", queue_id=qid, failed=failed, **decided)
        if d.verdict is Verdict.WAIT:
            return self.senders.wait(p.id, "requests", f".{d.tld}: {d.reason} ({failed})")

        effects: list[spool.Effect] = []
        if facts.message_id:
            # Verified requests claim their Message-ID strictly: if a copy of the same message
            # was verified in the same batch, this insert fails at commit, the outcome becomes
            # a retry, and the retry sees a replay.
            effects.append(_remember_message_id(facts.message_id, p.id, now,
                                                strict=d.verdict is Verdict.VERIFIED))
        if d.verdict is Verdict.REFUSED:
            return self._refusal(p, facts, [f".{d.tld}: {d.reason}"], effects)

        current = await self.reader.run(roster_table.current, d.tld)
        judgement = roster_policy.judge(form, d.tld, current, self.rt.rules)
        if judgement.problems:
            log.info("request decided", queue_id=qid, failed=failed, **decided)
            log.info("request refused by policy", queue_id=qid, tld=d.tld, problems=len(judgement.problems))
            return self._refusal(p, facts, _policy_problems(judgement, d), effects)
        change = transitions.change_of(form, judgement, current, auto_reply.may_answer(self.rt, p, facts),
                                       tlp.of_message(facts.subject or "", text))
        evidence = _evidence(d, contact, report, authentication_results(cfg.hostname, report),
                             sender, facts, replay_why)
        ids: dict[str, int] = {}
        if d.verdict is Verdict.VERIFIED:
            effects.append(self._verified(p, d, form.action or "", sender.key, evidence, change, now,
                                          facts.message_id, ids))
            said = f".{d.tld}: verified"
        else:
            assert d.admin_key is not None
            effects.append(self._confirmation(p, facts, d, form.action or "", sender.key, evidence,
                                              change, now, ids))
            said = f".{d.tld}: confirmation asked of the IANA administrative contact"
        # Said once, by the worker after the commit, with the request's id.
        return spool.Outcome(p.id, spool.Status.DONE, said, ("requests",), effects=tuple(effects), ids=ids,
                             decided=decided)

    def _verified(self, p: spool.Pending, d: Decision, action: str, requester: str,
                  evidence: dict[str, Any], change: dict[str, Any], now: float,
                  message_id: str | None, ids: dict[str, int]) -> spool.Effect:
        """The request row, then either self-administration applies it (when the policy
        allows and nothing needs a Validator's eye) or the Validators are asked and the
        requester is told its number and how to withdraw it."""
        live = self.rt
        request = _new_request(p.id, d, action, requester, "dkim", State.AWAITING_VALIDATOR,
                               evidence, change, now)
        self_admin = (bool(roster_policy.table(live.rules)["workflow"]["self_administration"])
                      and not change["warnings"])

        def job(conn: sqlite3.Connection) -> None:
            row = request(conn)
            request_id = ids["request"] = row.id
            written: transitions.Request | None = row
            if self_admin:
                by = transitions.By(Actor.POLICY, "self-administration", "dkim")
                if transitions.act(live, conn, request_id, Event.APPROVE, by,
                                   "verified and no policy warning", now=now).ok:
                    transitions.ask_validators(live, conn, request_id, now=now, template="applied")
                    return
                written = None  # act read it again, and may have written: read afresh
            transitions.ask_validators(live, conn, request_id, now=now, request=written)
            transitions.acknowledge(live, conn, request_id, now=now, in_reply_to=message_id,
                                    request=written)

        return job

    async def _replayed(self, facts: MessageFacts, now: float) -> tuple[bool, str | None]:
        window = self.rt.cfg.auth.replay_window
        try:
            sent = parsedate_to_datetime(facts.date_value or "").timestamp()
        except (TypeError, ValueError, IndexError):
            return True, "the Date: line cannot be read"
        if sent < now - window:
            return True, "the Date: line is older than the replay window"
        if sent > now + 86400:
            return True, "the Date: line is in the future"
        seen = bool(facts.message_id) and await self.reader.run(_seen, facts.message_id)
        if seen:
            return True, "this Message-ID was seen before"
        return False, None

    def _confirmation(self, p: spool.Pending, facts: MessageFacts, d: Decision, action: str,
                      requester: str, evidence: dict[str, Any], change: dict[str, Any],
                      now: float, ids: dict[str, int]) -> spool.Effect:
        """Request row, token (hash only) and the mail that carries the token, together."""
        cfg = self.rt.cfg
        token = tokens.new_token()
        admin = d.admin_key
        assert admin is not None
        confirm_addr = self.rt.service_address("confirm", token)
        subject, body = texts.render(self.rt.rules, "confirmation", {
            "tld": d.tld, "admin": admin, "requester": requester,
            "subject": (facts.subject or "")[:200], "date": (facts.date_value or "")[:100],
            "why": d.reason, "request": _quote(facts.text),
            "confirm_address": confirm_addr,
            "expires": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + cfg.auth.token_ttl)),
        })
        raw = outbox.compose(
            from_addr=f"TLD-OPS <{confirm_addr}>", to=admin, subject=subject, body=body,
            tlp=tlp.Tlp[change["tlp"]],  # it quotes the request: labelled as the request is
            domain=cfg.server.domain, reply_to=confirm_addr, in_reply_to=facts.message_id)
        ttl = cfg.auth.token_ttl
        cap = cfg.auth.max_open_confirmations
        request = _new_request(p.id, d, action, requester, "token", State.AWAITING_CONFIRMATION,
                               evidence, change, now)

        def job(conn: sqlite3.Connection) -> spool.Verdict | None:
            # Anyone can write the admin's address in From: each such request would mail the
            # admin. Counted in the transaction, so that two workers cannot both take the last
            # place; a refused request mails nobody.
            [(waiting,)] = conn.execute(
                "SELECT count(*) FROM requests WHERE state = ? AND tld = ?",
                (State.AWAITING_CONFIRMATION.value, d.tld)).fetchall()
            if waiting >= cap:
                return spool.Verdict(spool.Status.REJECTED,
                                     f".{d.tld}: already {texts.counted(waiting, 'request')} waiting for"
                                     " the IANA administrative contact's confirmation; no more is asked")
            request_id = ids["request"] = request(conn).id
            tokens.issue(token, PURPOSE_CONFIRM, request_id, admin, now=now, ttl=ttl)(conn)
            outbox.enqueue(raw, self.rt.service_address("bounces", f"r{request_id}"), [admin],
                           "confirmation", ref=f"request-{request_id}", cfg=cfg)(conn)
            return None

        return job

    def _refusal(self, p: spool.Pending, facts: MessageFacts, reasons: list[str],
                 effects: list[spool.Effect] | None = None) -> spool.Outcome:
        """A short reply saying what was wrong and how to fix it."""
        return desk_base.problems_refusal(self.rt, p, facts, "requests", reasons, effects or ())


def _cctld_of(form: RequestForm, table: list[cctlds.Cctld], day: dt.date,
              ) -> tuple[cctlds.Cctld | None, FormProblem | None]:
    """The ccTLD the form names (A-label or U-label), or the problem with it at its line:
    TLD-OPS serves the ccTLDs of rules/cctlds.csv in the root today, nothing else."""
    if form.tld is None:
        return None, None  # the form's own problem says so
    try:
        return cctlds.find(table, form.tld, day), None
    except cctlds.NotACctld as e:
        if e.on is None:
            return None, FormProblem(
                form.tld_line, f"'{e.name[:60]}' {e.what}",
                "TLD-OPS is for country-code top-level domains: name yours as in 'ccTLD: mt' "
                "(an IDN ccTLD in either form, such as 'ccTLD: \u0431\u0433' or 'ccTLD: xn--90ae').")
        return None, FormProblem(form.tld_line, f"'{e.name[:60]}' {e.what} ({e.detail})",
                                 "Name a ccTLD that is in the root zone today.")
    except ValueError:
        return None, FormProblem(form.tld_line, f"'{form.tld[:30]}' is not a top-level domain name",
                                 "Write the ccTLD as in 'ccTLD: mt'.")


def _all_problems(form: RequestForm, live: Live, cctld: cctlds.Cctld | None,
                  tld_problem: FormProblem | None) -> list[FormProblem]:
    """A form with problems (its ccTLD's among them), and what the policy says of each SSC
    in it (an address that is a role mailbox, a number that does not exist), so that one
    reply lists everything that stands in the way. A line the form already faults is not
    faulted twice."""
    faulted = {x.line for x in form.problems}
    named = [tld_problem] if tld_problem is not None and tld_problem.line not in faulted else []
    more = [x for x in roster_policy.entry_problems(form, cctld.tld if cctld else None, live.rules)
            if x.line not in faulted]
    return sorted([*form.problems, *named, *more], key=lambda x: x.line or 0)


def _policy_problems(judgement: roster_policy.Judgement, d: Decision) -> list[str]:
    """What the sender may be told: everything when the ccTLD's administrative contact
    sent the request (DKIM-verified); otherwise not what would reveal the current roster
    to whoever put the admin in Cc."""
    if d.verdict is Verdict.VERIFIED:
        return [str(x) for x in judgement.problems]
    shown = [str(x) for x in judgement.problems if not x.private]
    if len(shown) < len(judgement.problems):
        shown.append(f"the request does not fit the current roster of .{d.tld}. Only a request "
                     "from the ccTLD's administrative contact at IANA is told how")
    return shown


def _quote(text: str, limit: int = 4000) -> str:
    lines = text[:limit].splitlines() or [""]
    return "\n".join("> " + line for line in lines)


def _seen(conn: sqlite3.Connection, message_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM seen_messages WHERE message_id = ?", (message_id,)).fetchone()
    return row is not None


def _remember_message_id(message_id: str, spool_id: int, now: float, *, strict: bool) -> spool.Effect:
    verb = "INSERT" if strict else "INSERT OR IGNORE"

    def job(conn: sqlite3.Connection) -> None:
        conn.execute(f"{verb} INTO seen_messages (message_id, spool_id, seen_at) VALUES (?,?,?)",
                     (message_id, spool_id, now))

    return job


def _new_request(spool_id: int, d: Decision, action: str, requester: str, auth: str, state: State,
                 evidence: dict[str, Any], change: dict[str, Any], now: float,
                 ) -> Callable[[sqlite3.Connection], transitions.Request]:
    """The request row and its birth in the audit log (the evidence encoded once for both);
    the request as written, so that what follows in the transaction need not read it back."""
    def job(conn: sqlite3.Connection) -> transitions.Request:
        encoded = transitions.row_json(evidence)
        cur = conn.execute(
            "INSERT INTO requests (spool_id, tld, requester, admin_email, auth, state, evidence,"
            " created_at, updated_at, action, change) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (spool_id, d.tld, requester, d.admin_key, auth, state.value, encoded, now, now,
             action, transitions.row_json(change)))
        request_id = int(cur.lastrowid or 0)
        who = Actor.ADMIN if auth == "dkim" else Actor.REQUESTER
        transitions.record(conn, request_id, "submit", None, state.value,
                           transitions.By(who, requester, auth if auth == "dkim" else "-"), d.reason, now,
                           encoded)
        return transitions.Request(request_id, d.tld, requester, d.admin_key or "", auth, state, action,
                                   change, evidence, now, now)

    return job


def _confirmed(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str,
               now: float) -> str:
    """The administrative contact confirmed the request: it goes to the Validators."""
    assert r.request_id is not None
    by = transitions.By(Actor.ADMIN, sender_key, "token")
    if transitions.act(live, conn, r.request_id, Event.CONFIRM, by, "token redeemed", now=now).ok:
        transitions.ask_validators(live, conn, r.request_id, now=now)
        transitions.acknowledge(live, conn, r.request_id, now=now, in_reply_to=None)
    return r.reason


def _withdrawn(live: Live, conn: sqlite3.Connection, r: tokens.Redemption, sender_key: str,
               now: float) -> str:
    """The administrative contact who sent the request withdraws it."""
    assert r.request_id is not None
    by = transitions.By(Actor.ADMIN, sender_key, "token")
    return transitions.act(live, conn, r.request_id, Event.WITHDRAW, by,
                           "withdrawn by the administrative contact", now=now).message


PURPOSES = (
    Purpose(PURPOSE_CONFIRM, "requests", _confirmed, "confirmed request {request_id}", "request confirmed",
            ("request_id",), about_a_request=True),
    Purpose(transitions.PURPOSE_WITHDRAW, "requests", _withdrawn, "withdrawal: {result}", "withdrawal",
            ("request_id", "result"), about_a_request=True),
)


def _evidence(d: Decision, contact: AdminContact | None, report: DkimReport, ar: str,
              sender: addresses.Mailbox, facts: MessageFacts, replay_why: str | None) -> dict[str, Any]:
    return {
        "decision": {"verdict": d.verdict.value, "reason": d.reason},
        "from": sender.address,
        "message_id": facts.message_id,
        "date": facts.date_value,
        "replay": replay_why,
        "dkim": [dict(s.__dict__) for s in report.signatures],  # flat: asdict's deep copy is costly
        "authentication_results": ar,
        "iana": None if contact is None else {
            "email": contact.email, "status": contact.status, "source": contact.source,
            "fetched_at": contact.fetched_at, "from_cache": contact.from_cache,
        },
    }
