"""Moving a request through the queue, and everything a move causes, in one transaction.

Every caller (the worker for decide+TOKEN@ and confirmations, the CLI, the scheduler, and
self-administration) comes through ``act``: the state machine (queue_states) says whether
the move is allowed, an approval re-judges the request against the roster as it is *now*
(another request may have changed it since), the roster change, the audit row and the
mails it causes (outcome, welcome, removal, escalation) commit together or not at all. The
state is read and written in the same IMMEDIATE transaction, so of two decisions the first
to commit wins and the second finds the request decided.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from tldops_mta.mail import mailing
from tldops_mta.mail.tlp import Tlp, for_reply
from tldops_mta.policy import roster_policy
from tldops_mta.policy.queue_states import FINAL, Actor, Event, State, move
from tldops_mta.policy.request_form import RequestForm, SscEntry
from tldops_mta.policy.roster_policy import RosterEntry
from tldops_mta.policy.texts import missing
from tldops_mta.roster import roster_table
from tldops_mta.settings.live import Live

PURPOSE_DECIDE = "decide"
PURPOSE_CONFIRM_DECISION = "confirm-decision"
PURPOSE_WITHDRAW = "withdraw-request"
DECIDE_TOKEN_TTL = 366 * 86400.0
"""A Validator's decide+TOKEN@ address outlives any wait: the request's state, not the
token, says when deciding is over (an escalated request can wait for the Committee)."""


@dataclass(frozen=True)
class By:
    """Who acts, and how we know: ``who`` is an address or ``cli:USER``; ``auth`` is
    dkim, token, cli or - (the scheduler)."""

    actor: Actor
    who: str
    auth: str


@dataclass(frozen=True)
class Result:
    ok: bool
    message: str
    state: str | None = None


@dataclass(frozen=True)
class Request:
    id: int
    tld: str
    requester: str
    admin_email: str
    auth: str
    state: State
    action: str
    change: dict[str, Any]
    evidence: dict[str, Any]
    created_at: float
    updated_at: float


def load(conn: sqlite3.Connection, request_id: int) -> Request | None:
    row = conn.execute(
        "SELECT id, tld, requester, admin_email, auth, state, action, change, evidence, created_at,"
        " updated_at FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        return None
    return Request(int(row[0]), row[1], row[2], row[3], row[4], State(row[5]), row[6] or "",
                   json.loads(row[7] or "{}"), json.loads(row[8] or "{}"), float(row[9]), float(row[10]))


def record(conn: sqlite3.Connection, request_id: int, event: str, from_state: str | None,
           to_state: str, by: By, reason: str | None, now: float,
           evidence: dict[str, Any] | str | None = None) -> None:
    """One row of the append-only audit log. ``evidence`` may come already as JSON
    (``row_json``'s), as the new request's row stores it: encoded once for both."""
    conn.execute(
        "INSERT INTO request_events (request_id, at, event, from_state, to_state, actor, who, auth,"
        " evidence, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (request_id, now, event, from_state, to_state, by.actor.value, by.who, by.auth,
         evidence if evidence is None or isinstance(evidence, str) else row_json(evidence), reason))


row_json = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
"""A value (evidence, a change) as the requests and request_events rows store it:
``json.dumps(value, ensure_ascii=False)``, the same text, without a new encoder each time
(nor the check for cycles: the rows' values are trees of plain values)."""


def change_of(form: RequestForm, judgement: roster_policy.Judgement, current: list[RosterEntry],
              reply_ok: bool, label: Tlp) -> dict[str, Any]:
    """What a request row stores of its form: enough to judge it again at approval."""
    return {
        "sscs": roster_table.as_dicts(judgement.entries),
        "removals": list(form.removals),
        "remove_all": form.remove_all,
        "warnings": list(judgement.warnings),
        "before": roster_table.as_dicts(current),
        "after": roster_table.as_dicts(judgement.roster),
        "reply_ok": reply_ok,
        "tlp": label.name,  # the request's own label: what answers it inherits
    }


def form_of(r: Request) -> RequestForm:
    c = r.change
    return RequestForm(r.action, r.tld, tuple(SscEntry(**e) for e in c.get("sscs", [])),
                       tuple(c.get("removals", [])), bool(c.get("remove_all")), ())


def act(live: Live, conn: sqlite3.Connection, request_id: int, event: Event, by: By,
        reason: str | None = None, *, now: float | None = None,
        evidence: dict[str, Any] | None = None) -> Result:
    """Apply ``event`` to the request, inside the caller's transaction."""
    now = time.time() if now is None else now
    r = load(conn, request_id)
    if r is None:
        return Result(False, missing("request", request_id))
    if event is Event.DENY and r.state is State.APPROVED:
        event = Event.REVERSE  # "deny" on a self-administered approval takes it back
    m = move(r.state, event, by.actor)
    if m.state is None:
        return Result(False, f"request #{r.id}: {m.refusal}", r.state.value)
    if event in (Event.DENY, Event.ESCALATE) and not (reason or "").strip():
        return Result(False, f"request #{r.id}: say why ('{event.value} REASON')", r.state.value)
    done = f"request #{r.id} {m.state.value}"
    if event is Event.APPROVE:
        judgement = roster_policy.judge(form_of(r), r.tld, roster_table.current(conn, r.tld), live.rules)
        if judgement.problems:
            return Result(False, f"request #{r.id} cannot be approved as the roster is now: "
                          + "; ".join(str(p) for p in judgement.problems), r.state.value)
        before = roster_table.replace_all(conn, r.tld, judgement.roster, r.id, now)
        # Approved: the roster is confirmed by this admin (a redelegated ccTLD is settled).
        conn.execute("INSERT INTO cctlds (tld, admin_email, checked_at) VALUES (?,?,?) ON CONFLICT (tld)"
                     " DO UPDATE SET admin_email = excluded.admin_email, needs_reconfirmation = 0",
                     (r.tld, r.admin_email, now))
        _tell_people(live, conn, r, before, list(judgement.roster))
        _tell_requester(live, conn, r, "approved", reason, list(judgement.roster))
    elif event is Event.REVERSE:
        last = conn.execute("SELECT actor FROM request_events WHERE request_id = ? AND event = 'approve'"
                            " ORDER BY id DESC LIMIT 1", (r.id,)).fetchone()
        if last is None or last[0] != Actor.POLICY.value:
            # A Validator's approval is final: a later "deny" is a conflicting decision.
            return Result(False, f"request #{r.id}: the request is already approved", r.state.value)
        applied = roster_table.from_dicts(r.change.get("applied", r.change.get("after", [])))
        if roster_table.current(conn, r.tld) != applied:
            return Result(False, f"request #{r.id}: the roster of .{r.tld} has changed since it was "
                          "applied; send the change as a new request", r.state.value)
        restored = roster_table.from_dicts(r.change.get("applied_over", r.change.get("before", [])))
        roster_table.replace_all(conn, r.tld, restored, r.id, now)
        _tell_people(live, conn, r, applied, restored)
        _tell_requester(live, conn, r, "reversed by a Validator", reason, restored)
        done = f"request #{r.id} reversed: the roster of .{r.tld} is back as it was"
    elif event is Event.ESCALATE:
        committee = live.cfg.validation.committee
        if not committee:
            return Result(False, "no Standing Committee address is configured "
                          "(validation.committee)", r.state.value)
        _mail(live, conn, r, "escalation", [committee], {
            **_summary(live, conn, r), "reason": reason or "", "validator": by.who})
    elif event in (Event.DENY, Event.EXPIRE, Event.WITHDRAW):
        _tell_requester(live, conn, r, m.state.value, reason, roster_table.current(conn, r.tld))
    cur = conn.execute("UPDATE requests SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                       (m.state.value, now, r.id, r.state.value))
    assert cur.rowcount == 1, "the state was read in this transaction"
    if event is Event.APPROVE:
        # What was applied, and over what, for a reversal of a self-administered approval.
        applied_change = {**r.change, "applied": roster_table.as_dicts(roster_table.current(conn, r.tld)),
                          "applied_over": roster_table.as_dicts(before)}
        conn.execute("UPDATE requests SET change = ? WHERE id = ?",
                     (row_json(applied_change), r.id))
    record(conn, r.id, event.value, r.state.value, m.state.value, by, reason, now, evidence)
    return Result(True, done, m.state.value)


def ask_validators(live: Live, conn: sqlite3.Connection, request_id: int, *, now: float,
                   template: str = "validator", reminder: bool = False,
                   request: Request | None = None) -> int:
    """Mail each Validator the request with their own decide+TOKEN@ address; how many.
    ``request``: the request as this transaction just wrote it (else it is read, and only
    when there is a Validator to mail)."""
    validators = live.cfg.validation.validators
    sent = 0
    if validators:
        r = request or load(conn, request_id)
        assert r is not None
        expires = time.strftime("%Y-%m-%d %H:%M UTC",
                                time.gmtime(r.updated_at + live.cfg.validation.expire_after))
        rule = decision_rule(live.cfg.validation.decision_auth)
        summary = _summary(live, conn, r)  # the same for every Validator: the loop writes no roster
        for validator in validators:
            decide_address = mailing.one_time_address(live, conn, PURPOSE_DECIDE, to=validator.lower(),
                                                      now=now, ttl=DECIDE_TOKEN_TTL, request_id=r.id,
                                                      service="decide")
            values: dict[str, object] = {**summary, "decide_address": decide_address,
                                         "decision_rule": rule}
            if template == "validator":
                values["expires"] = expires
                values["reminder"] = ("This is a reminder: the request has waited since "
                                      + _when(r.updated_at) + ".\n\n") if reminder else ""
            _mail(live, conn, r, template, [validator], values, reply_to=decide_address)
            sent += 1
    if reminder:
        conn.execute("UPDATE requests SET reminded_at = ? WHERE id = ?", (now, request_id))
    return sent


def decision_rule(decision_auth: str) -> str:
    """What makes a Validator's reply by mail count, as ``validation.decision_auth`` is set
    (decision_desk applies it): the mail tells the rule in force, not a fixed one."""
    if decision_auth == "dkim-or-confirmation":
        return ("Your reply counts only from your Validator address. With a valid DKIM signature of\n"
                "your domain it counts at once; without one, you are first mailed a one-time\n"
                "confirmation, and it counts when you answer that.")
    return ("Your reply counts only from your Validator address, with a valid DKIM signature of\n"
            "your domain.")


def acknowledge(live: Live, conn: sqlite3.Connection, request_id: int, *, now: float,
                in_reply_to: str | None, request: Request | None = None) -> None:
    """Tell the IANA admin (who sent the request, or confirmed it) that it waits for a
    Validator: its number, and a one-time address to withdraw it. ``request``: the request
    as this transaction just wrote it (else it is read)."""
    r = request or load(conn, request_id)
    assert r is not None
    if not r.change.get("reply_ok", True):
        return
    address = mailing.one_time_address(live, conn, PURPOSE_WITHDRAW, to=r.admin_email, now=now,
                                       ttl=live.cfg.validation.expire_after, request_id=request_id)
    _mail(live, conn, r, "received", [r.admin_email], {
        "id": r.id, "tld": r.tld, "action": r.action, "withdraw_address": address,
        "diff": _diff(live, conn, r)},
        reply_to=address, auto="auto-replied", in_reply_to=in_reply_to)


def ask_to_confirm(live: Live, conn: sqlite3.Connection, request_id: int, validator: str,
                   event: Event, reason: str | None, *, now: float, in_reply_to: str | None,
                   answered: Tlp = Tlp.RED) -> None:
    """A Validator's decision that came without a DKIM signature that counts, where the
    configuration allows confirming it: a one-time token to their address; the decision
    is made when they answer it (confirm_desk)."""
    r = load(conn, request_id)
    assert r is not None
    address = mailing.one_time_address(live, conn, PURPOSE_CONFIRM_DECISION, to=validator, now=now,
                                       request_id=request_id,
                                       payload=json.dumps({"event": event.value, "reason": reason}))
    _mail(live, conn, r, "decision_confirmation", [validator], {
        "id": r.id, "tld": r.tld, "decision": f"{event.value} {reason or ''}".strip(),
        "confirm_address": address, "expires": _when(now + live.cfg.auth.token_ttl)},
        reply_to=address, auto="auto-replied", in_reply_to=in_reply_to, answered=answered)


def open_states() -> tuple[str, ...]:
    return tuple(s.value for s in State if s not in FINAL)


def _summary(live: Live, conn: sqlite3.Connection, r: Request) -> dict[str, object]:
    warnings = r.change.get("warnings") or []
    return {
        "id": r.id, "tld": r.tld, "action": r.action, "requester": r.requester,
        "evidence": evidence_text(r),
        "diff": _diff(live, conn, r),
        "warnings": "".join(f"  - {w}\n" for w in warnings) or "  (none)\n",
    }


def _diff(live: Live, conn: sqlite3.Connection, r: Request) -> str:
    before = roster_table.from_dicts(r.change.get("before", []))
    after = roster_table.from_dicts(r.change.get("after", []))
    if r.state in (State.AWAITING_VALIDATOR, State.ESCALATED, State.AWAITING_CONFIRMATION):
        # The diff against the roster as it is now, which is what an approval would change
        # (judged again only when the roster changed since the request came).
        now_roster = roster_table.current(conn, r.tld)
        if now_roster != before:
            before = now_roster
            j = roster_policy.judge(form_of(r), r.tld, before, live.rules)
            if not j.problems:
                after = list(j.roster)
    return "\n".join(roster_table.diff_lines(before, after)) or "  (no SSCs)"


def evidence_text(r: Request) -> str:
    """The authentication evidence in plain words."""
    e = r.evidence
    lines = []
    if r.auth == "dkim":
        lines.append(f"  The request came From {r.requester}, the administrative contact IANA lists "
                     f"for .{r.tld}, with a valid DKIM signature of its domain.")
    else:
        lines.append(f"  The request came From {r.requester}; IANA's administrative contact for "
                     f".{r.tld}, {r.admin_email}, was sent a one-time token and confirmed it.")
    for s in e.get("dkim", []):
        verdict = "counts" if s.get("counts") else f"does not count ({s.get('reason', '')})"
        lines.append(f"  DKIM: d={s.get('domain')} s={s.get('selector')} {s.get('algorithm')}"
                     f" {s.get('key_bits') or '?'} bits: {s.get('result')}, {verdict}")
    iana = e.get("iana") or {}
    if iana:
        lines.append(f"  IANA ({iana.get('source')}, answer of {_when(float(iana.get('fetched_at') or 0))}"
                     f"{', from cache' if iana.get('from_cache') else ''}): administrative contact "
                     f"{iana.get('email')}")
    if e.get("replay"):
        lines.append(f"  Not verified by signature alone: {e['replay']}")
    return "\n".join(lines)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


ROSTER_MAIL = frozenset({"validator", "applied", "escalation", "welcome", "removed"})
"""Mails that carry roster data: labelled as the roster (broadcast.tlp)."""
ANSWERS_THE_REQUEST = frozenset({"received", "outcome"})
"""Mails that answer the request and show roster data: as the request, or stricter."""


def _label(live: Live, r: Request | None, template: str, answered: Tlp) -> Tlp:
    roster_label = _parsed_label(live.cfg.broadcast.tlp)
    if template in ROSTER_MAIL:
        return roster_label
    if template in ANSWERS_THE_REQUEST and r is not None:
        return for_reply([Tlp[r.change.get("tlp", "RED")]], [roster_label])
    return for_reply([answered])


_parsed_label = functools.lru_cache(maxsize=8)(Tlp.parse)
"""broadcast.tlp as a label: parsed once per setting, not per mail."""


def _mail(live: Live, conn: sqlite3.Connection, r: Request | None, template: str, to: list[str],
          values: dict[str, object], *, reply_to: str | None = None,
          auto: str = "auto-generated", in_reply_to: str | None = None,
          answered: Tlp = Tlp.RED) -> None:
    """A mail about request ``r`` (its bounces tagged with it). ``answered``: the label of
    the mail this one answers (RED when it had none), for the replies to Validators."""
    mailing.send(live, conn, template, to, values, tlp=_label(live, r, template, answered),
                 bounce_tag=f"r{r.id}" if r is not None else "decision", purpose=template,
                 reply_to=reply_to, auto=auto, in_reply_to=in_reply_to,
                 ref=f"request-{r.id}" if r is not None else None)


def answer_validator(live: Live, conn: sqlite3.Connection, request_id: int | None, to: str,
                     result: str, in_reply_to: str | None, answered: Tlp = Tlp.RED) -> None:
    """Tell a Validator what became of their decision mail (every one: a decision that did
    not count must not pass for one that did)."""
    r = load(conn, request_id) if request_id is not None else None
    _mail(live, conn, r, "decision", [to],
          {"id": r.id if r else "?", "tld": r.tld if r else "?", "result": result},
          auto="auto-replied", in_reply_to=in_reply_to, answered=answered)


def _tell_requester(live: Live, conn: sqlite3.Connection, r: Request, outcome: str,
                    reason: str | None, now_roster: list[RosterEntry]) -> None:
    """The IANA admin learns the outcome with the ccTLD's roster as it now is; a requester
    who is someone else (the admin was in Cc and confirmed) learns the outcome only: the
    roster's phone numbers are not theirs to see. Nobody is told when the request came
    from a robot or a null sender (no loops)."""
    if not r.change.get("reply_ok", True):
        return
    values: dict[str, object] = {"id": r.id, "tld": r.tld, "action": r.action, "outcome": outcome,
                                 "reason": f"Reason: {reason}\n" if reason else ""}
    admin = r.admin_email.lower()
    _mail(live, conn, r, "outcome", [admin], {
        **values, "diff": "\n".join(f"  {roster_table.line(e)}" for e in now_roster) or "  (no SSCs)"},
        auto="auto-replied")
    if r.requester.lower() != admin:
        _mail(live, conn, r, "outcome", [r.requester], {
            **values, "diff": f"  (sent to the administrative contact, {admin})"}, auto="auto-replied")


def _tell_people(live: Live, conn: sqlite3.Connection, r: Request, before: list[RosterEntry],
                 after: list[RosterEntry]) -> None:
    """Welcome whoever the change adds; tell whoever it removes."""
    old = {e.email.lower() for e in before}
    new = {e.email.lower() for e in after}
    help_addr = live.service_address("help")
    listing = roster_table.text(conn)
    for e in after:
        if e.email.lower() not in old:
            _mail(live, conn, r, "welcome", [e.email], {
                "tld": r.tld, "name": f"{e.first_name} {e.last_name}", "roster": listing,
                "who": live.service_address("who"), "update": live.service_address("update"),
                "help": help_addr})
    for e in before:
        if e.email.lower() not in new:
            _mail(live, conn, r, "removed", [e.email], {
                "tld": r.tld, "name": f"{e.first_name} {e.last_name}", "help": help_addr})
