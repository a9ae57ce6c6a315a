"""The request queue's state machine (issue 5): every (state, event, actor) combination."""

from __future__ import annotations

import itertools

import pytest

from tldops_mta.policy.queue_states import FINAL, TRANSITIONS, Actor, Event, State, move

# The whole table as the issue states it: who may do what, from where, to where.
EXPECTED = {
    (State.AWAITING_CONFIRMATION, Event.CONFIRM, Actor.ADMIN): State.AWAITING_VALIDATOR,
    (State.AWAITING_CONFIRMATION, Event.EXPIRE, Actor.SCHEDULER): State.EXPIRED,
    (State.AWAITING_CONFIRMATION, Event.WITHDRAW, Actor.ADMIN): State.WITHDRAWN,
    (State.AWAITING_VALIDATOR, Event.APPROVE, Actor.VALIDATOR): State.APPROVED,
    (State.AWAITING_VALIDATOR, Event.APPROVE, Actor.POLICY): State.APPROVED,
    (State.AWAITING_VALIDATOR, Event.DENY, Actor.VALIDATOR): State.DENIED,
    (State.AWAITING_VALIDATOR, Event.ESCALATE, Actor.VALIDATOR): State.ESCALATED,
    (State.AWAITING_VALIDATOR, Event.EXPIRE, Actor.SCHEDULER): State.EXPIRED,
    (State.AWAITING_VALIDATOR, Event.WITHDRAW, Actor.ADMIN): State.WITHDRAWN,
    # A Validator takes back what self-administration applied (transitions.act checks that
    # the approval was the policy's, not a Validator's).
    (State.APPROVED, Event.REVERSE, Actor.VALIDATOR): State.DENIED,
    (State.ESCALATED, Event.APPROVE, Actor.VALIDATOR): State.APPROVED,
    (State.ESCALATED, Event.DENY, Actor.VALIDATOR): State.DENIED,
    (State.ESCALATED, Event.WITHDRAW, Actor.ADMIN): State.WITHDRAWN,
}


@pytest.mark.parametrize(("state", "event", "actor"),
                         list(itertools.product(State, Event, Actor)))
def test_every_combination_moves_as_the_table_says(state: State, event: Event, actor: Actor) -> None:
    m = move(state, event, actor)
    want = EXPECTED.get((state, event, actor))
    assert m.state == want
    assert (m.refusal is None) == (want is not None)


def test_final_states_stay_final_and_say_so() -> None:
    reversible = {State.APPROVED}
    assert {s for s in State if not any(k[0] == s for k in TRANSITIONS)} == FINAL - reversible
    for state in FINAL:
        assert move(state, Event.APPROVE, Actor.VALIDATOR).refusal == f"the request is already {state}"


def test_a_refusal_says_who_could() -> None:
    assert move(State.AWAITING_VALIDATOR, Event.DENY, Actor.ADMIN).refusal == (
        "only validator may deny a request that is awaiting-validator")
    assert move(State.ESCALATED, Event.EXPIRE, Actor.SCHEDULER).refusal == (
        "a request that is escalated cannot be expired")
