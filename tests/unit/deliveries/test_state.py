"""The delivery state machine, exhaustively and by random walks; no service needed."""

from __future__ import annotations

import copy
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.deliveries.state import (
    TERMINAL_STATES,
    TRANSITIONS,
    DeliveryEvent,
    DeliverySnapshot,
    DeliveryState,
    IllegalTransition,
    InvalidFact,
    Transition,
    UnknownStateOrEvent,
    allowed_events,
    apply,
    is_terminal,
    next_state,
    order_status_for,
)
from schema.errors import WakalaError

S, E = DeliveryState, DeliveryEvent
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ORDER_STATUSES = {
    "pending", "confirmed", "preparing", "ready", "dispatched",
    "picked_up", "delivered", "cancelled", "failed", "returned",
}  # fmt: skip
ALL_PAIRS = [(state, event) for state in S for event in E]
LEGAL_PAIRS = [pair for pair in ALL_PAIRS if pair in TRANSITIONS]
ILLEGAL_PAIRS = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]
# A shortest legal route from pending to each state, to build real snapshots from.
ROUTE_TO = {
    S.PENDING: [],
    S.OFFERED: [E.OFFER],
    S.ASSIGNED: [E.OFFER, E.ACCEPT],
    S.AT_PICKUP: [E.OFFER, E.ACCEPT, E.ARRIVE_PICKUP],
    S.PICKED_UP: [E.OFFER, E.ACCEPT, E.ARRIVE_PICKUP, E.PICK_UP],
    S.DELIVERED: [E.OFFER, E.ACCEPT, E.ARRIVE_PICKUP, E.PICK_UP, E.DELIVER],
    S.FAILED: [E.FAIL],
    S.CANCELLED: [E.CANCEL],
    S.UNASSIGNED: [E.GIVE_UP],
}


def facts_for(event: DeliveryEvent, n: int = 0) -> dict[str, Any]:
    """Valid keyword arguments (facts and reason) for ``event``."""
    if event is E.OFFER:
        return {"driver_id": f"driver-{n}"}
    if event is E.DELIVER:
        return {"proof_of_delivery": {"photo": "s3://pod/1.jpg"}}
    if event in (E.FAIL, E.CANCEL, E.GIVE_UP):
        return {"reason": f"{event.value} #{n}"}
    return {}


def snapshot_in(state: DeliveryState) -> DeliverySnapshot:
    snapshot, at = DeliverySnapshot(), T0
    for event in ROUTE_TO[state]:
        at += timedelta(minutes=5)
        snapshot, _ = apply(snapshot, event, at=at, **facts_for(event))
    assert snapshot.state is state
    return snapshot


def successors() -> dict[DeliveryState, set[DeliveryState]]:
    graph: dict[DeliveryState, set[DeliveryState]] = {state: set() for state in S}
    for (source, _), target in TRANSITIONS.items():
        graph[source].add(target)
    return graph


def reachable(start: DeliveryState, without: frozenset[DeliveryState] = frozenset()) -> set:
    graph, seen, queue = successors(), {start}, deque([start])
    while queue:
        for nxt in graph[queue.popleft()] - seen - without:
            seen.add(nxt)
            queue.append(nxt)
    return seen


def assert_consistent(s: DeliverySnapshot, offers: int) -> None:
    """What a deliveries row must look like in each state."""
    assert s.offer_attempts == offers
    committed = {S.ASSIGNED, S.AT_PICKUP, S.PICKED_UP, S.DELIVERED}
    if s.state in {S.PENDING, S.UNASSIGNED}:
        assert s.driver_id is None
    if s.state in committed | {S.OFFERED}:
        assert s.driver_id
    if s.state in {S.FAILED, S.CANCELLED}:
        # a driver who accepted stays on record; an open offer is withdrawn
        assert (s.driver_id is not None) == (s.assigned_at is not None)
    if s.state in committed:
        assert s.assigned_at is not None
    if s.state in {S.PENDING, S.OFFERED, S.UNASSIGNED}:
        assert s.assigned_at is None
    if s.state in {S.PICKED_UP, S.DELIVERED}:
        assert s.picked_up_at is not None
    if s.state in {S.PENDING, S.OFFERED, S.UNASSIGNED, S.ASSIGNED, S.AT_PICKUP}:
        assert s.picked_up_at is None
    delivered = s.state is S.DELIVERED
    assert (s.delivered_at is not None) == delivered
    assert (s.actual_duration_s is not None) == delivered
    assert bool(s.proof_of_delivery) == delivered
    assert bool(s.failure_reason) == (s.state in {S.FAILED, S.CANCELLED, S.UNASSIGNED})
    stamps = [t for t in (s.assigned_at, s.picked_up_at, s.delivered_at) if t is not None]
    assert stamps == sorted(stamps)
    if delivered:
        assert s.picked_up_at is not None and s.delivered_at is not None
        assert s.actual_duration_s == (s.delivered_at - s.picked_up_at).total_seconds()


# --- the table --------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "event"), LEGAL_PAIRS)
def test_legal_event_leads_exactly_to_the_table_target(state, event):
    assert next_state(state, event) is TRANSITIONS[state, event]
    assert next_state(state.value, event.value) is TRANSITIONS[state, event]
    before = snapshot_in(state)
    after, record = apply(before, event, at=T0 + timedelta(hours=1), **facts_for(event))
    assert after.state is TRANSITIONS[state, event]
    assert (record.from_state, record.to_state, record.event) == (state, after.state, event)


@pytest.mark.parametrize(("state", "event"), ILLEGAL_PAIRS)
def test_illegal_event_is_refused_naming_the_allowed_events_and_changes_nothing(state, event):
    with pytest.raises(IllegalTransition) as refused:
        next_state(state, event)
    assert (refused.value.state, refused.value.event) == (state, event)
    message = str(refused.value)
    assert event.value in message and state.value in message
    for allowed in allowed_events(state):
        assert allowed.value in message
    if is_terminal(state):
        assert "none" in message

    before = snapshot_in(state)
    kept = copy.deepcopy(before)
    with pytest.raises(IllegalTransition):
        apply(before, event, at=T0 + timedelta(hours=1), **facts_for(event))
    assert before == kept


def test_allowed_events_are_exactly_the_table_rows():
    for state in S:
        assert allowed_events(state) == {e for (s, e) in TRANSITIONS if s is state}
        assert allowed_events(state.value) == allowed_events(state)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_accept_nothing(state):
    assert is_terminal(state) and is_terminal(state.value)
    assert allowed_events(state) == frozenset()
    assert set(TERMINAL_STATES) == {S.DELIVERED, S.FAILED, S.CANCELLED}


@pytest.mark.parametrize("state", [s for s in S if s not in TERMINAL_STATES])
def test_every_live_state_can_fail_or_be_cancelled_in_one_step(state):
    assert not is_terminal(state)
    assert next_state(state, E.FAIL) is S.FAILED
    assert next_state(state, E.CANCEL) is S.CANCELLED
    assert {S.FAILED, S.CANCELLED} <= reachable(state)


def test_every_state_is_reachable_from_pending():
    assert reachable(S.PENDING) == set(S)


def test_delivered_is_reachable_only_through_picked_up():
    assert {s for (s, _), t in TRANSITIONS.items() if t is S.DELIVERED} == {S.PICKED_UP}
    for gate in (S.OFFERED, S.ASSIGNED, S.AT_PICKUP, S.PICKED_UP):
        assert S.DELIVERED not in reachable(S.PENDING, without=frozenset({gate}))


def test_decline_and_timeout_go_back_for_the_next_candidate():
    assert next_state(S.OFFERED, E.DECLINE) is S.PENDING
    assert next_state(S.OFFERED, E.OFFER_TIMEOUT) is S.PENDING
    assert next_state(S.PENDING, E.GIVE_UP) is S.UNASSIGNED
    assert next_state(S.UNASSIGNED, E.RETRY) is S.PENDING


# --- apply: what each event writes ------------------------------------------------------


def test_a_full_delivery_fills_in_the_row_and_never_mutates_its_input():
    start = DeliverySnapshot()
    s1, t1 = apply(start, E.OFFER, at=T0, actor="matcher", driver_id="d1", distance_m=4200)
    s2, _ = apply(s1, E.OFFER_TIMEOUT, at=T0 + timedelta(seconds=30), reason="no answer")
    s3, _ = apply(s2, "offer", at=T0 + timedelta(seconds=31), driver_id="d2")
    s4, _ = apply(s3, "accept", at=T0 + timedelta(seconds=40), estimated_duration_s=900)
    s5, _ = apply(s4, E.ARRIVE_PICKUP, at=T0 + timedelta(minutes=8))
    s6, _ = apply(s5, E.PICK_UP, at=T0 + timedelta(minutes=12))
    proof = {"photo": "s3://pod/1.jpg"}
    s7, t7 = apply(
        s6, E.DELIVER, at=T0 + timedelta(minutes=27), actor="d2", proof_of_delivery=proof
    )

    assert start == DeliverySnapshot()  # untouched
    assert t1 == Transition(S.PENDING, S.OFFERED, E.OFFER, T0, "matcher", None)
    assert s1.driver_id == "d1" and s1.offer_attempts == 1 and s1.distance_m == 4200
    assert s2.state is S.PENDING and s2.driver_id is None and s2.offer_attempts == 1
    assert s3.driver_id == "d2" and s3.offer_attempts == 2
    assert s4.assigned_at == T0 + timedelta(seconds=40) and s4.estimated_duration_s == 900
    assert s6.picked_up_at == T0 + timedelta(minutes=12)
    assert s7.state is S.DELIVERED and s7.delivered_at == T0 + timedelta(minutes=27)
    assert s7.actual_duration_s == 15 * 60  # from pick-up, the leg distance_m measures
    assert s7.proof_of_delivery == proof and s7.proof_of_delivery is not proof
    assert (s7.driver_id, s7.distance_m, s7.estimated_duration_s) == ("d2", 4200, 900)
    assert t7.actor == "d2" and t7.event is E.DELIVER


def test_give_up_records_the_reason_and_retry_starts_a_clean_round():
    offered = snapshot_in(S.OFFERED)
    gave_up, record = apply(offered, E.GIVE_UP, at=T0, reason="5 offers declined")
    assert gave_up.state is S.UNASSIGNED and gave_up.driver_id is None
    assert gave_up.failure_reason == record.reason == "5 offers declined"
    again, _ = apply(gave_up, E.RETRY, at=T0 + timedelta(minutes=2))
    assert again.state is S.PENDING and again.driver_id is None and again.failure_reason is None
    assert again.offer_attempts == offered.offer_attempts


def test_failure_after_acceptance_keeps_the_driver_but_an_open_offer_is_withdrawn():
    failed, _ = apply(snapshot_in(S.AT_PICKUP), E.FAIL, at=T0 + timedelta(hours=1), reason="x")
    assert failed.driver_id == "driver-0" and failed.failure_reason == "x"
    cancelled, _ = apply(snapshot_in(S.OFFERED), E.CANCEL, at=T0, reason="customer cancelled")
    assert cancelled.driver_id is None and cancelled.failure_reason == "customer cancelled"


# --- missing or bad facts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "event", "kwargs", "says"),
    [
        (S.PENDING, E.OFFER, {}, "needs driver_id"),
        (S.PENDING, E.OFFER, {"driver_id": ""}, "driver_id"),
        (S.PENDING, E.OFFER, {"driver_id": "d", "distance_m": -1}, "distance_m"),
        (S.PENDING, E.OFFER, {"driver_id": "d", "colour": "red"}, "does not take colour"),
        (S.OFFERED, E.ACCEPT, {"estimated_duration_s": 9.5}, "estimated_duration_s"),
        (S.ASSIGNED, E.ARRIVE_PICKUP, {"driver_id": "d"}, "does not take driver_id"),
        (S.PICKED_UP, E.DELIVER, {}, "needs proof_of_delivery"),
        (S.PICKED_UP, E.DELIVER, {"proof_of_delivery": {}}, "non-empty dict"),
        (S.PICKED_UP, E.DELIVER, {"proof_of_delivery": "photo.jpg"}, "non-empty dict"),
        (S.ASSIGNED, E.FAIL, {}, "needs a non-empty reason"),
        (S.OFFERED, E.CANCEL, {"reason": "  "}, "needs a non-empty reason"),
        (S.PENDING, E.GIVE_UP, {}, "needs a non-empty reason"),
    ],
)
def test_missing_or_bad_facts_are_refused_and_change_nothing(state, event, kwargs, says):
    before = snapshot_in(state)
    kept = copy.deepcopy(before)
    with pytest.raises(InvalidFact, match=says) as refused:
        apply(before, event, at=T0 + timedelta(hours=1), **kwargs)
    assert isinstance(refused.value, WakalaError)
    assert before == kept


def test_a_naive_timestamp_is_refused():
    with pytest.raises(InvalidFact, match="timezone-aware"):
        apply(DeliverySnapshot(), E.OFFER, at=datetime(2025, 3, 1, 12), driver_id="d")


def test_an_illegal_event_is_reported_before_its_missing_facts():
    with pytest.raises(IllegalTransition):
        apply(snapshot_in(S.DELIVERED), E.OFFER, at=T0)


# --- unknown strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: next_state("flying", "offer"),
        lambda: next_state("pending", "teleport"),
        lambda: allowed_events("flying"),
        lambda: is_terminal("flying"),
        lambda: order_status_for("flying"),
        lambda: apply(DeliverySnapshot(), "teleport", at=T0),
    ],
)
def test_unknown_state_or_event_strings_are_refused_clearly(call):
    with pytest.raises(UnknownStateOrEvent) as refused:
        call()
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, WakalaError)
    message = str(refused.value)
    assert ("'flying'" in message and "picked_up" in message) or (
        "'teleport'" in message and "offer_timeout" in message
    )


# --- order status -----------------------------------------------------------------------


def test_order_status_is_defined_for_every_state_and_uses_the_orders_vocabulary():
    statuses = {state: order_status_for(state) for state in S}
    assert set(statuses.values()) - {None} <= ORDER_STATUSES
    assert statuses == {
        S.PENDING: None,
        S.OFFERED: None,
        S.UNASSIGNED: None,
        S.ASSIGNED: "dispatched",
        S.AT_PICKUP: None,
        S.PICKED_UP: "picked_up",
        S.DELIVERED: "delivered",
        S.FAILED: "failed",
        S.CANCELLED: "cancelled",
    }
    assert order_status_for("assigned") == "dispatched"


# --- random walks -----------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(E)), st.integers(min_value=0, max_value=3600)),
        max_size=40,
    )
)
def test_random_event_sequences_never_leave_an_inconsistent_row(steps):
    snapshot, at, offers = DeliverySnapshot(), T0, 0
    assert_consistent(snapshot, offers)
    for n, (event, seconds) in enumerate(steps):
        at += timedelta(seconds=seconds)
        if (snapshot.state, event) not in TRANSITIONS:
            kept = copy.deepcopy(snapshot)
            with pytest.raises(IllegalTransition):
                apply(snapshot, event, at=at, **facts_for(event, n))
            assert snapshot == kept
            continue
        after, record = apply(snapshot, event, at=at, **facts_for(event, n))
        offers += event is E.OFFER
        assert after.state is TRANSITIONS[snapshot.state, event] is record.to_state
        assert record.from_state is snapshot.state and record.at == at
        snapshot = after
        assert_consistent(snapshot, offers)
