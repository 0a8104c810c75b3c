"""The order lifecycle: plain data in, plain data out, no I/O.

::

                    pay                 accept               mark_ready
    (placed) pending ----> paid ----------------> accepted -----------> ready
                |  \\                    ^                                 |
                |   +-- accept (cash) --+                                  | delivery side
                |                                                          v
                |                                           dispatched -> picked_up -> delivered
                |                                                                          |
                |                                                                    return v
                |                                                                      returned
    cancel    : pending, paid, accepted --> cancelled (customer or vendor, before ready)
    reject    : pending, paid           --> rejected  (vendor)
    fail_payment, expire : pending      --> cancelled (a failed payment; a reservation that ran out)
    fail_delivery / cancel_delivery : ready, dispatched, picked_up --> failed / cancelled

Cash-on-delivery orders (``payment_method == 'cash'``) may be accepted while ``pending``;
every other order is accepted only once ``paid``. The transitions from ``ready`` on are the
delivery side's (``dispatch.deliveries.store.transition`` writes them through
``dispatch.deliveries.state.order_status_for``); they are listed here so the table is the
whole story.

``TRANSITIONS`` is the single source of truth. The two order-specific refusals live here
too, as subclasses of ``dispatch.core.errors``' one refusal type so that every shell renders
them like any other: ``OrderNotFound`` (404) and ``IllegalOrderTransition`` (409, with what
was tried and what is allowed). Every other refusal about an order is a plain ``Refusal``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from dispatch.core.errors import ILLEGAL_TRANSITION, INVALID_VALUE, NotFound, Refusal

__all__ = [
    "CASH",
    "DELIVERY_ACTIONS",
    "RELEASING_STATUSES",
    "TRANSITIONS",
    "IllegalOrderTransition",
    "OrderAction",
    "OrderNotFound",
    "OrderStatus",
    "allowed_actions",
    "next_status",
]

CASH = "cash"


class OrderStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    READY = "ready"
    DISPATCHED = "dispatched"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETURNED = "returned"


class OrderAction(StrEnum):
    PAY = "pay"
    FAIL_PAYMENT = "fail_payment"
    EXPIRE = "expire"
    ACCEPT = "accept"
    REJECT = "reject"
    MARK_READY = "mark_ready"
    CANCEL = "cancel"
    DISPATCH = "dispatch"
    PICK_UP = "pick_up"
    DELIVER = "deliver"
    FAIL_DELIVERY = "fail_delivery"
    CANCEL_DELIVERY = "cancel_delivery"
    RETURN = "return"


S, A = OrderStatus, OrderAction

_TABLE: dict[tuple[OrderStatus, OrderAction], OrderStatus] = {
    (S.PENDING, A.PAY): S.PAID,
    (S.PENDING, A.FAIL_PAYMENT): S.CANCELLED,
    (S.PENDING, A.EXPIRE): S.CANCELLED,
    (S.PENDING, A.ACCEPT): S.ACCEPTED,   # cash on delivery only, see next_status
    (S.PAID, A.ACCEPT): S.ACCEPTED,
    (S.PENDING, A.REJECT): S.REJECTED,
    (S.PAID, A.REJECT): S.REJECTED,
    (S.ACCEPTED, A.MARK_READY): S.READY,
    (S.PENDING, A.CANCEL): S.CANCELLED,
    (S.PAID, A.CANCEL): S.CANCELLED,
    (S.ACCEPTED, A.CANCEL): S.CANCELLED,
    # the delivery side's
    (S.READY, A.DISPATCH): S.DISPATCHED,
    (S.DISPATCHED, A.PICK_UP): S.PICKED_UP,
    (S.PICKED_UP, A.DELIVER): S.DELIVERED,
    **{(s, A.FAIL_DELIVERY): S.FAILED for s in (S.READY, S.DISPATCHED, S.PICKED_UP)},
    **{(s, A.CANCEL_DELIVERY): S.CANCELLED for s in (S.READY, S.DISPATCHED, S.PICKED_UP)},
    (S.DELIVERED, A.RETURN): S.RETURNED,
}
TRANSITIONS: Mapping[tuple[OrderStatus, OrderAction], OrderStatus] = MappingProxyType(_TABLE)
_ALLOWED: Mapping[OrderStatus, frozenset[OrderAction]] = MappingProxyType(
    {status: frozenset(a for (s, a) in TRANSITIONS if s is status) for status in S}
)
# Entering these gives back what the order held: its reserved stock and its promotion uses.
RELEASING_STATUSES: frozenset[OrderStatus] = frozenset({S.CANCELLED, S.REJECTED})
# The order status the delivery side writes -> the action it stands for (order-events type).
DELIVERY_ACTIONS: Mapping[str, OrderAction] = MappingProxyType({
    S.DISPATCHED.value: A.DISPATCH,
    S.PICKED_UP.value: A.PICK_UP,
    S.DELIVERED.value: A.DELIVER,
    S.FAILED.value: A.FAIL_DELIVERY,
    S.CANCELLED.value: A.CANCEL_DELIVERY,
})


class OrderNotFound(NotFound):
    """No such order for this caller: absent, another tenant's, or another customer's or
    vendor's (the same answer, so a caller learns nothing of orders that are not theirs)."""

    def __init__(self, order_id: object) -> None:
        super().__init__(f"no order {order_id}")


class IllegalOrderTransition(Refusal):
    """The action is not allowed from the order's current status (409 ``illegal_transition``);
    nothing was changed. ``from_status``, ``action`` and ``allowed`` say what was tried and
    what the order could do instead."""

    def __init__(self, status: OrderStatus, action: OrderAction, why: str | None = None) -> None:
        self.from_status = status
        self.action = action
        self.allowed = _ALLOWED[status]
        options = ", ".join(sorted(self.allowed)) or "none"
        super().__init__(409, ILLEGAL_TRANSITION, why or (
            f"cannot {action.value!r} an order that is {status.value!r}; allowed: {options}"))


def _status(value: OrderStatus | str) -> OrderStatus:
    try:
        return OrderStatus(value)
    except ValueError:
        raise Refusal(
            422, INVALID_VALUE, f"unknown order status {value!r}; known: {', '.join(S)}", "status"
        ) from None


def next_status(
    status: OrderStatus | str, action: OrderAction | str, *, payment_method: str | None = None
) -> OrderStatus:
    """The status ``action`` leads to from ``status``; IllegalOrderTransition if none."""
    status, action = _status(status), OrderAction(action)
    target = TRANSITIONS.get((status, action))
    if target is None:
        raise IllegalOrderTransition(status, action)
    if (status, action) == (S.PENDING, A.ACCEPT) and payment_method != CASH:
        raise IllegalOrderTransition(
            status, action,
            f"an order paid by {payment_method or 'an unknown method'} is accepted once it is paid; "
            "only cash-on-delivery orders can be accepted while pending",
        )
    return target


def allowed_actions(status: OrderStatus | str) -> frozenset[OrderAction]:
    return _ALLOWED[_status(status)]
