"""The request queue's states and who may move an item between them: policy as a table.

An item is born ``awaiting-confirmation`` (the IANA admin was only in Cc and must confirm)
or ``awaiting-validator`` (the admin sent it, DKIM-verified, or has confirmed). From there
only the events below move it; every move is one row of the audit log. ``approved``,
``denied``, ``expired`` and ``withdrawn`` are final (except that a Validator may reverse
an approval made by self-administration: transitions.act checks who approved);
``escalated`` waits for the Standing Committee, whose answer comes back through a
Validator (approve or deny).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    AWAITING_CONFIRMATION = "awaiting-confirmation"
    AWAITING_VALIDATOR = "awaiting-validator"
    APPROVED = "approved"
    DENIED = "denied"
    ESCALATED = "escalated"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class Event(StrEnum):
    CONFIRM = "confirm"  # the IANA admin redeemed the token
    APPROVE = "approve"  # a Validator (or self-administration, when the policy allows it)
    DENY = "deny"
    ESCALATE = "escalate"
    EXPIRE = "expire"  # the scheduler: nobody acted in time
    WITHDRAW = "withdraw"  # the requester, or the IANA admin, takes it back
    REVERSE = "reverse"  # a Validator takes back what self-administration applied


class Actor(StrEnum):
    ADMIN = "admin"  # the ccTLD's IANA administrative contact
    VALIDATOR = "validator"
    SCHEDULER = "scheduler"
    POLICY = "policy"  # self-administration (report section 5.3), off by default
    REQUESTER = "requester"  # who sent a request the admin must still confirm (audit only)


FINAL = frozenset({State.APPROVED, State.DENIED, State.EXPIRED, State.WITHDRAWN})

TRANSITIONS: dict[tuple[State, Event], tuple[State, frozenset[Actor]]] = {
    (State.AWAITING_CONFIRMATION, Event.CONFIRM): (State.AWAITING_VALIDATOR, frozenset({Actor.ADMIN})),
    (State.AWAITING_CONFIRMATION, Event.EXPIRE): (State.EXPIRED, frozenset({Actor.SCHEDULER})),
    (State.AWAITING_CONFIRMATION, Event.WITHDRAW): (State.WITHDRAWN, frozenset({Actor.ADMIN})),
    (State.AWAITING_VALIDATOR, Event.APPROVE): (State.APPROVED, frozenset({Actor.VALIDATOR, Actor.POLICY})),
    (State.AWAITING_VALIDATOR, Event.DENY): (State.DENIED, frozenset({Actor.VALIDATOR})),
    (State.AWAITING_VALIDATOR, Event.ESCALATE): (State.ESCALATED, frozenset({Actor.VALIDATOR})),
    (State.AWAITING_VALIDATOR, Event.EXPIRE): (State.EXPIRED, frozenset({Actor.SCHEDULER})),
    (State.AWAITING_VALIDATOR, Event.WITHDRAW): (State.WITHDRAWN, frozenset({Actor.ADMIN})),
    (State.APPROVED, Event.REVERSE): (State.DENIED, frozenset({Actor.VALIDATOR})),
    (State.ESCALATED, Event.APPROVE): (State.APPROVED, frozenset({Actor.VALIDATOR})),
    (State.ESCALATED, Event.DENY): (State.DENIED, frozenset({Actor.VALIDATOR})),
    (State.ESCALATED, Event.WITHDRAW): (State.WITHDRAWN, frozenset({Actor.ADMIN})),
}


@dataclass(frozen=True)
class Move:
    """The outcome of asking for a transition: the new state, or why not (then nothing
    changes; a second decision on a decided item is refused this way: the first one wins)."""

    state: State | None
    refusal: str | None = None


def move(state: State, event: Event, actor: Actor) -> Move:
    rule = TRANSITIONS.get((state, event))
    if rule is None:
        if state in FINAL:
            return Move(None, f"the request is already {state.value}")
        return Move(None, f"a request that is {state.value} cannot be {_past(event)}")
    target, allowed = rule
    if actor not in allowed:
        return Move(None, f"only {' or '.join(sorted(a.value for a in allowed))} may {event.value} "
                          f"a request that is {state.value}")
    return Move(target)


def _past(event: Event) -> str:
    return {Event.CONFIRM: "confirmed", Event.APPROVE: "approved", Event.DENY: "denied",
            Event.ESCALATE: "escalated", Event.EXPIRE: "expired",
            Event.WITHDRAW: "withdrawn", Event.REVERSE: "reversed"}[event]
