"""Authentication of requests (``requests@``) and of token confirmations (``confirm+TOKEN@``).

The imperative shell around ``auth_decision.decide``: it gathers the facts (strictly parsed
addresses, DKIM results, IANA's answer, replay history), asks the pure decision, and turns
verdicts into effects that commit with the spool outcome: a request row with its evidence,
a token and the mail carrying it, or a refusal reply. Lookups that fail make the message
wait and come back; they never decide anything.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from . import (
    addresses,
    auto_reply,
    broadcast,
    cctlds,
    decisions,
    list_desk,
    logs,
    metrics,
    outbox,
    policy,
    redelegation,
    roster,
    spool,
    texts,
    tlp,
    tokens,
    update_desk,
)
from .auth_decision import Decision, IanaView, MessageView, Verdict, decide
from .config import Config
from .dkim_verify import DkimReport, KeyResolver, authentication_results, verify
from .iana import AdminContact, IanaClient, LookupUnavailable
from .live import Live
from .message_facts import REQUIRED_FOR_REQUESTS, MessageFacts
from .queue_states import Actor, Event, State
from .request_form import FormProblem, RequestForm, body_text, parse_form
from .storage import Reader, Writer

PURPOSE_CONFIRM = "confirm-request"


class Authenticator:
    def __init__(self, live: Live, writer: Writer, reader: Reader, resolver: KeyResolver,
                 iana: IanaClient, *, offload: bool = True) -> None:
        self.offload = offload
        self.rt = live
        self.writer = writer
        self.reader = reader
        self.resolver = resolver
        self.iana = iana
        self.log = logs.get("auth")

    def reconfigure(self, cfg: Config) -> None:
        """New DNS servers and IANA settings apply to the next message (SIGHUP)."""
        self.resolver = KeyResolver.from_config(cfg)
        self.iana.reconfigure(cfg)

    # -- requests@ ---------------------------------------------------------------------

    async def handle_request(self, p: spool.Pending, facts: MessageFacts) -> spool.Outcome:
        cfg = self.rt.cfg
        now = time.time()
        log = self.log.bind(queue_id=p.queue_id)
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
        text = body_text(facts.message or p.raw) if problem is None else ""
        form = parse_form(text) if problem is None else None
        if problem is not None or form is None:
            log.info("request refused", reason=problem)
            return self._refusal(p, facts, [problem or "unreadable"])
        try:
            table = self.rt.cctld_table()
        except cctlds.CctldsError as e:
            log.error("requests wait: rules/cctlds.csv cannot be read", problems=e.problems[:3])
            return spool.waiting(p.id, "requests", f"rules/cctlds.csv cannot be read: {e.problems[0]}",
                                 float(cfg["worker.retry_base"]))
        # Before DKIM and IANA: a name that is no ccTLD costs no lookup.
        cctld, tld_problem = _cctld_of(form, table, dt.datetime.fromtimestamp(now, dt.UTC).date())
        if not form.ok or tld_problem is not None:
            problems = _all_problems(form, self.rt, cctld, tld_problem)
            log.info("request form refused", problems=len(problems))
            return self._refusal(p, facts, [str(x) for x in problems])
        assert cctld is not None and sender is not None
        a_label = cctld.tld

        report = await verify(p.raw, self.resolver, min_rsa_bits=cfg["dkim.min_rsa_bits"], now=now,
                              offload=self.offload)
        alignment = cfg["dkim.alignment"]
        counting = report.counting(sender.domain, alignment)
        dkim_counter = metrics.worker_metrics().dkim
        for sig in report.signatures:
            dkim_counter.labels(sig.result, "yes" if sig in counting else "no").inc()
        replayed, replay_why = await self._replayed(facts, now)
        view = MessageView(
            from_key=sender.key,
            cc_keys=frozenset(m.key for m in cc),
            problem=None,
            dkim_domains=frozenset(s.domain for s in counting),
            dkim_temporary=report.temporary(sender.domain, alignment),
            replayed=replayed,
        )
        contact: AdminContact | None = None
        unavailable: str | None = None
        try:
            contact = await self.iana.admin_contact(a_label)
        except LookupUnavailable as e:
            unavailable = e.reason
            log.warning("IANA lookup unavailable", tld=a_label, reason=e.reason)
            d = decide(view, IanaView(a_label, None, unavailable=True))
        else:
            d = decide(view, IanaView(a_label, contact.email if contact.status == "ok" else None))
        # A wait names the lookup that failed and how (refused, SERVFAIL, timed out, HTTP 500),
        # in the log and in the spool's reason: an operator must see which service is down.
        failed = None if d.verdict is not Verdict.WAIT else unavailable or report.key_failures()
        log.info("request decided", tld=d.tld, verdict=d.verdict.value, reason=d.reason,
                 dkim=[s.domain for s in counting], replayed=replayed, failed=failed)
        if d.verdict is Verdict.WAIT:
            return spool.waiting(p.id, "requests", f".{d.tld}: {d.reason} ({failed})",
                                 float(cfg["worker.retry_base"]))

        effects: list[spool.Effect] = []
        if facts.message_id:
            # Verified requests claim their Message-ID strictly: if a copy of the same message
            # was verified in the same batch, this insert fails at commit, the outcome becomes
            # a retry, and the retry sees a replay.
            effects.append(_remember_message_id(facts.message_id, p.id, now,
                                                strict=d.verdict is Verdict.VERIFIED))
        if d.verdict is Verdict.REFUSED:
            return self._refusal(p, facts, [f".{d.tld}: {d.reason}"], effects)

        current = await self.reader.run(roster.current, d.tld)
        judgement = policy.judge(form, d.tld, current, self.rt.rules)
        if judgement.problems:
            log.info("request refused by policy", tld=d.tld, problems=len(judgement.problems))
            return self._refusal(p, facts, _policy_problems(judgement, d), effects)
        change = decisions.change_of(form, judgement, current, auto_reply.may_answer(self.rt, p, facts),
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
        return spool.Outcome(p.id, spool.Status.DONE, said, ("requests",), effects=tuple(effects), ids=ids)

    def _verified(self, p: spool.Pending, d: Decision, action: str, requester: str,
                  evidence: dict[str, Any], change: dict[str, Any], now: float,
                  message_id: str | None, ids: dict[str, int]) -> spool.Effect:
        """The request row, then either self-administration applies it (when the policy
        allows and nothing needs a Validator's eye) or the Validators are asked and the
        requester is told its number and how to withdraw it."""
        live = self.rt
        request = _new_request(p.id, d, action, requester, "dkim", State.AWAITING_VALIDATOR,
                               evidence, change, now)
        self_admin = (bool(policy.table(live.rules)["workflow"]["self_administration"])
                      and not change["warnings"])

        def job(conn: sqlite3.Connection) -> None:
            request_id = ids["request"] = request(conn)
            if self_admin:
                by = decisions.By(Actor.POLICY, "self-administration", "dkim")
                if decisions.act(live, conn, request_id, Event.APPROVE, by,
                                 "verified and no policy warning", now=now).ok:
                    decisions.ask_validators(live, conn, request_id, now=now, template="applied")
                    return
            decisions.ask_validators(live, conn, request_id, now=now)
            decisions.acknowledge(live, conn, request_id, now=now, in_reply_to=message_id)

        return job

    async def _replayed(self, facts: MessageFacts, now: float) -> tuple[bool, str | None]:
        window = float(self.rt.cfg["auth.replay_window"])
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
            "why": d.reason, "request": _quote(body_text(facts.message or p.raw)),
            "confirm_address": confirm_addr,
            "expires": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + cfg["auth.token_ttl"])),
        })
        raw = outbox.compose(
            from_addr=f"TLD-OPS <{confirm_addr}>", to=admin, subject=subject, body=body,
            tlp=tlp.Tlp[change["tlp"]],  # it quotes the request: labelled as the request is
            domain=cfg["server.domain"], reply_to=confirm_addr, in_reply_to=facts.message_id)
        ttl = float(cfg["auth.token_ttl"])
        request = _new_request(p.id, d, action, requester, "token", State.AWAITING_CONFIRMATION,
                               evidence, change, now)

        def job(conn: sqlite3.Connection) -> None:
            request_id = ids["request"] = request(conn)
            tokens.issue(token, PURPOSE_CONFIRM, request_id, admin, now=now, ttl=ttl)(conn)
            outbox.enqueue(raw, self.rt.service_address("bounces", f"r{request_id}"), [admin],
                           "confirmation", ref=f"request-{request_id}", cfg=cfg)(conn)

        return job

    # -- confirm+TOKEN@ ----------------------------------------------------------------

    async def handle_confirmation(self, p: spool.Pending, facts: MessageFacts, token: str) -> spool.Outcome:
        log = self.log.bind(queue_id=p.queue_id)
        if not p.mail_from or facts.automatic:
            log.info("automatic mail to a confirmation address ignored")
            return spool.Outcome(p.id, spool.Status.REJECTED,
                                 "automatic mail (null sender or Auto-Submitted) does not confirm",
                                 ("confirm",))
        try:
            sender = addresses.parse_single(facts.from_value or "", field="From")
        except addresses.AddressError as e:
            return self._refusal(p, facts, [e.reason], service="confirm")
        now = time.time()
        redeem = _redeem(self.rt, token, sender.key, now, p.id)
        ids: dict[str, int] = {}
        got: list[tokens.Redemption] = []

        def job(conn: sqlite3.Connection) -> spool.Verdict:
            # Whether the token counts is read at commit, with the spool row: an answer
            # processed again after a failed commit finds it as unused as the first time.
            r = redeem(conn)
            got[:] = [r]
            if r.request_id is None:
                reasons = [f"this confirmation does not count: {r.reason}"]
                self._reply_refusal(p, facts, reasons)(conn)
                return spool.Verdict(spool.Status.REJECTED, "; ".join(reasons)[:1000])
            if r.purpose in _ABOUT_A_REQUEST:
                ids["request"] = r.request_id
            said = _CONFIRMED[r.purpose or PURPOSE_CONFIRM][0]
            return spool.Verdict(spool.Status.DONE, said.format(request_id=r.request_id, result=r.reason))

        def logged() -> None:
            r = got[0]
            if r.request_id is None:
                log.info("confirmation refused", reason=r.reason)
                return
            _, event, names = _CONFIRMED[r.purpose or PURPOSE_CONFIRM]
            fields = {"request_id": r.request_id, "result": r.reason}
            log.info(event, **{k: fields[k] for k in names})

        return spool.Outcome(p.id, spool.Status.DONE, "confirmation", ("confirm",), effects=(job,),
                             ids=ids, after_commit=logged)

    # -- refusals ------------------------------------------------------------------------

    def _refusal(self, p: spool.Pending, facts: MessageFacts, reasons: list[str],
                 effects: list[spool.Effect] | None = None, service: str = "requests") -> spool.Outcome:
        all_effects = [*(effects or []), self._reply_refusal(p, facts, reasons)]
        return spool.Outcome(p.id, spool.Status.REJECTED, "; ".join(reasons)[:1000], (service,),
                             effects=tuple(all_effects))

    def _reply_refusal(self, p: spool.Pending, facts: MessageFacts, reasons: list[str]) -> spool.Effect:
        """A short reply saying what was wrong and how to fix it (auto_reply: RFC 3834, one
        per sender per ``auth.refusal_interval``), holding no roster data."""
        subject, body = texts.render(self.rt.rules, "refusal", {
            "problems": "".join(f"  - {r}\n" for r in reasons),
            "requests": self.rt.service_address("requests"), "help": self.rt.service_address("help")})
        return auto_reply.reply(self.rt, p, facts, kind="refusal", body=body, subject=subject)


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
    more = [x for x in policy.entry_problems(form, cctld.tld if cctld else None, live.rules)
            if x.line not in faulted]
    return sorted([*form.problems, *named, *more], key=lambda x: x.line or 0)


def _policy_problems(judgement: policy.Judgement, d: Decision) -> list[str]:
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
                 ) -> Callable[[sqlite3.Connection], int]:
    """The request row and its birth in the audit log."""
    def job(conn: sqlite3.Connection) -> int:
        cur = conn.execute(
            "INSERT INTO requests (spool_id, tld, requester, admin_email, auth, state, evidence,"
            " created_at, updated_at, action, change) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (spool_id, d.tld, requester, d.admin_key, auth, state.value, json.dumps(evidence), now, now,
             action, json.dumps(change, ensure_ascii=False)))
        request_id = int(cur.lastrowid or 0)
        who = Actor.ADMIN if auth == "dkim" else Actor.REQUESTER
        decisions.record(conn, request_id, "submit", None, state.value,
                         decisions.By(who, requester, auth if auth == "dkim" else "-"), d.reason, now,
                         evidence)
        return request_id

    return job


_CONFIRMED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    PURPOSE_CONFIRM: ("confirmed request {request_id}", "request confirmed", ("request_id",)),
    decisions.PURPOSE_CONFIRM_DECISION: ("decision confirmed: {result}", "decision confirmed",
                                         ("request_id", "result")),
    decisions.PURPOSE_WITHDRAW: ("withdrawal: {result}", "withdrawal", ("request_id", "result")),
    redelegation.PURPOSE_RECONFIRM: ("reconfirm: {result}", "ccTLD reconfirmed after a redelegation", ()),
    update_desk.PURPOSE_SELF_UPDATE: ("update: {result}", "self-update confirmed", ("result",)),
    broadcast.PURPOSE_WHO: ("who: roster sent (token)", "who confirmed", ()),
    list_desk.PURPOSE_POST: ("list: {result}", "list post confirmed", ("result",)),
}
"""What a token of each purpose that counted is: the spool's reason, and the log line said
once it committed (its event, and which of request_id and result it names)."""

_ABOUT_A_REQUEST = frozenset({PURPOSE_CONFIRM, decisions.PURPOSE_CONFIRM_DECISION,
                              decisions.PURPOSE_WITHDRAW})
"""Purposes whose token belongs to a request (the others carry none)."""


def _redeem(live: Live, token: str, sender_key: str, now: float, spool_id: int,
            ) -> Callable[[sqlite3.Connection], tokens.Redemption]:
    """Use the token and carry out what it confirms, in one transaction: a request goes to
    the Validators; a Validator's decision (sent without a DKIM signature that counts, where
    ``validation.decision_auth`` allows confirming it) is made; a request is withdrawn by
    the administrative contact who sent it; an unsigned list post goes back to the spool."""
    use = tokens.redeem(token, frozenset(_CONFIRMED), sender_key, now, spool_id)

    def job(conn: sqlite3.Connection) -> tokens.Redemption:
        r = use(conn)
        if r.request_id is None or r.again:
            return r  # again: what it confirms was carried out with its first use
        if r.purpose == broadcast.PURPOSE_WHO:
            broadcast.send_one(conn, live.cfg, sender_key, now)  # to the roster address it was sent to
            return tokens.Redemption(r.request_id, "roster sent", r.purpose)
        if r.purpose == list_desk.PURPOSE_POST:
            return tokens.Redemption(r.request_id, list_desk.confirmed(conn, r.payload or "", now), r.purpose)
        if r.purpose == redelegation.PURPOSE_RECONFIRM:
            done = redelegation.reconfirmed(conn, r.payload or "", sender_key, now)
            return tokens.Redemption(r.request_id, done, r.purpose)
        if r.purpose == update_desk.PURPOSE_SELF_UPDATE:
            done = update_desk.apply(conn, r.payload or "{}", sender_key, now)
            return tokens.Redemption(r.request_id, done, r.purpose)
        if r.purpose == decisions.PURPOSE_WITHDRAW:
            by = decisions.By(Actor.ADMIN, sender_key, "token")
            result = decisions.act(live, conn, r.request_id, Event.WITHDRAW, by,
                                   "withdrawn by the administrative contact", now=now)
            return tokens.Redemption(r.request_id, result.message, r.purpose)
        if r.purpose == decisions.PURPOSE_CONFIRM_DECISION:
            wanted = json.loads(r.payload or "{}")
            by = decisions.By(Actor.VALIDATOR, sender_key, "token")
            result = decisions.act(live, conn, r.request_id, Event(wanted["event"]), by,
                                   wanted.get("reason"), now=now)
            decisions.answer_validator(live, conn, r.request_id, sender_key, result.message, None)
            return tokens.Redemption(r.request_id, result.message, r.purpose)
        by = decisions.By(Actor.ADMIN, sender_key, "token")
        if decisions.act(live, conn, r.request_id, Event.CONFIRM, by, "token redeemed", now=now).ok:
            decisions.ask_validators(live, conn, r.request_id, now=now)
            decisions.acknowledge(live, conn, r.request_id, now=now, in_reply_to=None)
        return r

    return job


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
