"""The delivery state machine: plain data in, plain data out, no I/O.

::

                  decline / offer_timeout
                 +-----------------------+
                 v                       |
    +------> pending ---- offer ----> offered ---- accept ----> assigned
    |            |                       |                         |
    | retry      | give_up               | give_up          arrive_pickup
    |            v                       |                         v
    +------- unassigned <----------------+                     at_pickup
                                                                   |
                                                                pick_up
                                                                   v
                                          delivered <-- deliver -- picked_up

    fail   : any non-terminal state --> failed
    cancel : any non-terminal state --> cancelled
    terminal: delivered, failed, cancelled

``TRANSITIONS`` is the single source of truth; everything else is derived from it.
``apply`` also updates the ``deliveries`` columns a transition owns and checks the facts
each event needs. The caller decides policy (which driver to offer, how many failed offers
before ``give_up``) and supplies the clock (``at``): nothing here reads time or storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from schema.errors import WakalaError


class DeliveryState(StrEnum):
    PENDING = "pending"
    OFFERED = "offered"
    ASSIGNED = "assigned"
    AT_PICKUP = "at_pickup"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNASSIGNED = "unassigned"


class DeliveryEvent(StrEnum):
    OFFER = "offer"
    DECLINE = "decline"
    OFFER_TIMEOUT = "offer_timeout"
    ACCEPT = "accept"
    ARRIVE_PICKUP = "arrive_pickup"
    PICK_UP = "pick_up"
    DELIVER = "deliver"
    FAIL = "fail"
    CANCEL = "cancel"
    GIVE_UP = "give_up"
    RETRY = "retry"


# Not a transition: the fact, recorded once on the delivery's event stream, that the driver
# reached the dropoff circle (the state stays picked_up until the driver reports delivery).
ARRIVED_DROPOFF_EVENT = "arrived_dropoff"

S, E = DeliveryState, DeliveryEvent
TERMINAL_STATES: frozenset[DeliveryState] = frozenset({S.DELIVERED, S.FAILED, S.CANCELLED})

_FORWARD: dict[tuple[DeliveryState, DeliveryEvent], DeliveryState] = {
    (S.PENDING, E.OFFER): S.OFFERED,
    (S.PENDING, E.GIVE_UP): S.UNASSIGNED,
    (S.OFFERED, E.ACCEPT): S.ASSIGNED,
    (S.OFFERED, E.DECLINE): S.PENDING,
    (S.OFFERED, E.OFFER_TIMEOUT): S.PENDING,
    (S.OFFERED, E.GIVE_UP): S.UNASSIGNED,
    (S.ASSIGNED, E.ARRIVE_PICKUP): S.AT_PICKUP,
    (S.AT_PICKUP, E.PICK_UP): S.PICKED_UP,
    (S.PICKED_UP, E.DELIVER): S.DELIVERED,
    (S.UNASSIGNED, E.RETRY): S.PENDING,
}
_ABORTS = {
    (state, event): target
    for state in S
    if state not in TERMINAL_STATES
    for event, target in ((E.FAIL, S.FAILED), (E.CANCEL, S.CANCELLED))
}
TRANSITIONS: Mapping[tuple[DeliveryState, DeliveryEvent], DeliveryState] = MappingProxyType(
    _FORWARD | _ABORTS
)
_ALLOWED: Mapping[DeliveryState, frozenset[DeliveryEvent]] = MappingProxyType(
    {state: frozenset(event for (source, event) in TRANSITIONS if source is state) for state in S}
)

# orders.status to set when a delivery enters a state; None leaves the order as it is
# (before a driver is committed the order is still confirmed/preparing/ready, which the
# vendor side owns). A failure after pick-up may end as 'returned': that is decided when
# the goods are back, not by the delivery state alone.
ORDER_STATUS: Mapping[DeliveryState, str | None] = MappingProxyType(
    {
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
)


class UnknownStateOrEvent(WakalaError, ValueError):
    """A string is not one of the delivery states or events."""


class IllegalTransition(WakalaError):
    """The event is not allowed from the delivery's current state; nothing was changed."""

    def __init__(self, state: DeliveryState, event: DeliveryEvent) -> None:
        self.state = state
        self.event = event
        self.allowed = _ALLOWED[state]
        options = ", ".join(sorted(self.allowed)) or "none (terminal state)"
        super().__init__(
            f"cannot {event.value!r} a delivery that is {state.value!r}; allowed: {options}"
        )


class InvalidFact(WakalaError, ValueError):
    """An event lacks a fact it needs, or was given one it does not take or a bad value."""


_Enum = TypeVar("_Enum", DeliveryState, DeliveryEvent)


def _coerce(kind: type[_Enum], value: _Enum | str, label: str) -> _Enum:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(kind)
        raise UnknownStateOrEvent(f"unknown delivery {label} {value!r}; known: {known}") from None


def next_state(state: DeliveryState | str, event: DeliveryEvent | str) -> DeliveryState:
    """The state ``event`` leads to from ``state``; raises IllegalTransition if none."""
    state = _coerce(DeliveryState, state, "state")
    event = _coerce(DeliveryEvent, event, "event")
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed_events(state: DeliveryState | str) -> frozenset[DeliveryEvent]:
    return _ALLOWED[_coerce(DeliveryState, state, "state")]


def is_terminal(state: DeliveryState | str) -> bool:
    return _coerce(DeliveryState, state, "state") in TERMINAL_STATES


def order_status_for(delivery_state: DeliveryState | str) -> str | None:
    """orders.status implied by entering ``delivery_state``, or None to leave it unchanged."""
    return ORDER_STATUS[_coerce(DeliveryState, delivery_state, "state")]


@dataclass(frozen=True, slots=True)
class DeliverySnapshot:
    """The columns of a ``deliveries`` row that transitions read and write."""

    state: DeliveryState = DeliveryState.PENDING
    driver_id: str | None = None
    offer_attempts: int = 0
    assigned_at: datetime | None = None
    picked_up_at: datetime | None = None
    delivered_at: datetime | None = None
    failure_reason: str | None = None
    estimated_duration_s: int | None = None
    actual_duration_s: int | None = None
    distance_m: int | None = None
    proof_of_delivery: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One applied event, as the caller records it in the delivery's history."""

    from_state: DeliveryState
    to_state: DeliveryState
    event: DeliveryEvent
    at: datetime
    actor: str | None
    reason: str | None


_ROUTE_FACTS = frozenset({"estimated_duration_s", "distance_m"})
# event -> (facts it requires, facts it may take); ``reason`` is a keyword of its own.
_FACTS: Mapping[DeliveryEvent, tuple[frozenset[str], frozenset[str]]] = {
    E.OFFER: (frozenset({"driver_id"}), _ROUTE_FACTS),
    E.ACCEPT: (frozenset(), _ROUTE_FACTS),
    E.DELIVER: (frozenset({"proof_of_delivery"}), frozenset()),
}
_NEEDS_REASON = frozenset({E.FAIL, E.CANCEL, E.GIVE_UP})


def _check_facts(
    event: DeliveryEvent, at: datetime, reason: str | None, facts: dict[str, Any]
) -> None:
    required, optional = _FACTS.get(event, (frozenset(), frozenset()))
    if missing := required - facts.keys():
        raise InvalidFact(f"{event.value!r} needs {', '.join(sorted(missing))}")
    if unexpected := facts.keys() - required - optional:
        raise InvalidFact(f"{event.value!r} does not take {', '.join(sorted(unexpected))}")
    if at.tzinfo is None:
        raise InvalidFact("'at' must be timezone-aware (deliveries store TIMESTAMPTZ)")
    if event in _NEEDS_REASON and not (reason and reason.strip()):
        raise InvalidFact(f"{event.value!r} needs a non-empty reason")
    if "driver_id" in facts and not (isinstance(facts["driver_id"], str) and facts["driver_id"]):
        raise InvalidFact("driver_id must be a non-empty string")
    if "proof_of_delivery" in facts and not (
        isinstance(facts["proof_of_delivery"], dict) and facts["proof_of_delivery"]
    ):
        raise InvalidFact("proof_of_delivery must be a non-empty dict (photo, signature, ...)")
    for name in _ROUTE_FACTS & facts.keys():
        value = facts[name]
        if value is not None and (type(value) is not int or value < 0):
            raise InvalidFact(f"{name} must be a non-negative int or None")


def _seconds_since(start: datetime | None, end: datetime) -> int | None:
    # None rather than an error for a row missing its start: bad history must not block a
    # real delivery; max(0, ...) likewise for a clock that stepped backwards.
    return None if start is None else max(0, round((end - start).total_seconds()))


def apply(
    delivery: DeliverySnapshot,
    event: DeliveryEvent | str,
    *,
    at: datetime,
    actor: str | None = None,
    reason: str | None = None,
    **facts: Any,
) -> tuple[DeliverySnapshot, Transition]:
    """Apply ``event`` to ``delivery``; return the new snapshot and the transition record.

    Pure: ``delivery`` is never mutated, and on any error (illegal event, missing or
    unexpected fact) nothing is returned. Facts by event: ``offer`` needs ``driver_id``;
    ``offer``/``accept`` may carry ``estimated_duration_s`` and ``distance_m``; ``deliver``
    needs ``proof_of_delivery``; ``fail``, ``cancel`` and ``give_up`` need ``reason``.

    ``actual_duration_s`` runs from pick-up to delivery, not from assignment: it then
    covers the same leg as ``distance_m`` and ``estimated_duration_s`` (pickup to
    dropoff), so actual-vs-estimate and speed are like for like, and time spent waiting
    at the vendor is not charged to the trip. Assignment-to-door is still
    ``delivered_at - assigned_at``.
    """
    event = _coerce(DeliveryEvent, event, "event")
    target = next_state(delivery.state, event)
    _check_facts(event, at, reason, facts)

    changes: dict[str, Any] = {"state": target}
    changes.update({name: facts[name] for name in _ROUTE_FACTS & facts.keys()})
    match event:
        case E.OFFER:
            changes.update(driver_id=facts["driver_id"], offer_attempts=delivery.offer_attempts + 1)
        case E.DECLINE | E.OFFER_TIMEOUT | E.RETRY:
            changes.update(driver_id=None, failure_reason=None)
        case E.ACCEPT:
            changes.update(assigned_at=at)
        case E.PICK_UP:
            changes.update(picked_up_at=at)
        case E.DELIVER:
            changes.update(
                delivered_at=at,
                actual_duration_s=_seconds_since(delivery.picked_up_at, at),
                proof_of_delivery=dict(facts["proof_of_delivery"]),
            )
        case E.FAIL | E.CANCEL | E.GIVE_UP:
            changes.update(failure_reason=reason)
            if delivery.assigned_at is None:
                # an offer still open is withdrawn; a driver who accepted stays on record
                changes.update(driver_id=None)
    return replace(delivery, **changes), Transition(
        from_state=delivery.state,
        to_state=target,
        event=event,
        at=at,
        actor=actor,
        reason=reason,
    )
