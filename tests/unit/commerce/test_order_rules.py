"""The order rules that need no service: the lifecycle table and what a client may send."""

from __future__ import annotations

import json
import uuid

import pytest

from dispatch.commerce.orders.input import NewOrder, OrderLine, parse_new_order, parse_order_id
from dispatch.commerce.orders.lifecycle import (
    TRANSITIONS,
    IllegalOrderTransition,
    OrderAction,
    OrderNotFound,
    OrderStatus,
    next_status,
)
from dispatch.core.errors import NotFound, Refusal

# -- the lifecycle table ------------------------------------------------------------------------


def test_the_lifecycle_table_allows_exactly_the_documented_moves():
    assert next_status("pending", "pay") is OrderStatus.PAID
    assert next_status("pending", "accept", payment_method="cash") is OrderStatus.ACCEPTED
    with pytest.raises(IllegalOrderTransition, match="only cash-on-delivery"):
        next_status("pending", "accept", payment_method="card")
    for status in ("ready", "dispatched", "picked_up", "delivered", "cancelled", "rejected", "returned"):
        with pytest.raises(IllegalOrderTransition):
            next_status(status, OrderAction.CANCEL)
    assert {s for (s, a) in TRANSITIONS if a is OrderAction.CANCEL} == {
        OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.ACCEPTED}
    with pytest.raises(IllegalOrderTransition) as refused:
        next_status("delivered", "mark_ready")
    assert refused.value.status == 409 and refused.value.allowed == {OrderAction.RETURN}


# -- hostile input ---------------------------------------------------------------------------------

P, V = str(uuid.uuid4()), str(uuid.uuid4())
GOOD = {"vendor_id": V, "lines": [{"product_id": P, "quantity": 2}], "delivery_lat": -26.23,
        "delivery_lng": 27.92, "delivery_address": {"street": "12 Mahalefele Rd"}}


def body(**changes) -> dict:
    out = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is ...:
            out.pop(key)
        else:
            out[key] = value
    return out


def line(**changes) -> dict:
    return body(lines=[{"product_id": P, "quantity": 2, **changes}])


HOSTILE = [
    (line(quantity=-1), "out_of_range", "lines[0].quantity"),
    (line(quantity=0), "out_of_range", "lines[0].quantity"),
    (line(quantity=1001), "out_of_range", "lines[0].quantity"),
    (line(quantity=10**30), "out_of_range", "lines[0].quantity"),
    (line(quantity=True), "wrong_type", "lines[0].quantity"),
    (line(quantity=2.0), "wrong_type", "lines[0].quantity"),
    (line(quantity="2"), "wrong_type", "lines[0].quantity"),
    (line(quantity=None), "wrong_type", "lines[0].quantity"),
    (line(price="0.01"), "client_price", "lines[0].price"),
    (line(unit_price=1), "client_price", "lines[0].unit_price"),
    (body(total="1.00"), "client_price", "total"),
    (body(delivery_address={"street": "x", "Total": 5}), "client_price", "delivery_address.Total"),
    (line(product_id="maize"), "invalid_id", "lines[0].product_id"),
    (line(product_id=12), "wrong_type", "lines[0].product_id"),
    (line(variant_id="v-1"), "invalid_id", "lines[0].variant_id"),
    (line(colour="red"), "unknown_field", "lines[0].colour"),
    (body(vendor_id="'; DROP TABLE orders; --"), "invalid_id", "vendor_id"),
    (body(vendor_id=None), "wrong_type", "vendor_id"),
    (body(customer_id=str(uuid.uuid4())), "unknown_field", "customer_id"),
    (body(status="paid"), "unknown_field", "status"),
    (body(lines=...), "missing_field", "lines"),
    (body(lines=[]), "out_of_range", "lines"),
    (body(lines={"product_id": P}), "wrong_type", "lines"),
    (body(lines=["maize"]), "wrong_type", "lines[0]"),
    (body(lines=[{"product_id": str(uuid.uuid4()), "quantity": 1} for _ in range(101)]), "out_of_range", "lines"),
    (body(lines=[{"product_id": P, "quantity": 1}, {"product_id": P, "quantity": 1}]), "duplicate_line", "lines[1]"),
    (body(delivery_lat=91), "out_of_range", "delivery_lat"),
    (body(delivery_lng=-180.5), "out_of_range", "delivery_lng"),
    (body(delivery_lat="-26.2"), "wrong_type", "delivery_lat"),
    (body(delivery_lat=False), "wrong_type", "delivery_lat"),
    (body(delivery_lat=float("nan")), "not_finite", "delivery_lat"),
    (body(delivery_lat=0, delivery_lng=0), "null_island", "delivery_lat"),
    (body(delivery_address="12 Mahalefele Rd"), "wrong_type", "delivery_address"),
    (body(delivery_address={"street": {"nested": "x"}}), "wrong_type", "delivery_address.street"),
    (body(promo_codes="SAVE10"), "wrong_type", "promo_codes"),
    (body(promo_codes=["SAVE 10"]), "invalid_value", "promo_codes[0]"),
    (body(promo_codes=[f"C{i}" for i in range(6)]), "out_of_range", "promo_codes"),
    (body(payment_method="bitcoin"), "invalid_value", "payment_method"),
    (body(notes="x" * 501), "out_of_range", "notes"),
    ([GOOD], "wrong_type", "body"),
]


@pytest.mark.parametrize(("payload", "reason", "field"), HOSTILE,
                         ids=[f"{i}-{r}" for i, (_, r, _) in enumerate(HOSTILE)])
def test_hostile_bodies_are_refused_naming_the_field(payload, reason, field):
    with pytest.raises(Refusal) as refused:
        parse_new_order(payload, customer_id=str(uuid.uuid4()))
    assert (refused.value.status, refused.value.reason, refused.value.field) == (422, reason, field)


def test_a_good_body_parses_and_the_customer_is_the_callers():
    customer = str(uuid.uuid4())
    order = parse_new_order(body(promo_codes=["save10", "SAVE10", "bogo"], payment_method="card"),
                            customer_id=customer)
    assert order == NewOrder(customer, V, (OrderLine(P, None, 2),), -26.23, 27.92,
                             {"street": "12 Mahalefele Rd"}, ("SAVE10", "BOGO"), "card", None)
    with pytest.raises(Refusal) as refused:
        parse_new_order(GOOD, customer_id="me")
    assert refused.value.field == "customer_id"


# -- refusals ----------------------------------------------------------------------------------------


def test_order_refusals_are_the_one_refusal_type_with_their_own_reasons():
    with pytest.raises(IllegalOrderTransition) as illegal:
        next_status("cancelled", "pay")
    assert isinstance(illegal.value, Refusal)
    assert (illegal.value.status, illegal.value.reason, illegal.value.field) == (409, "illegal_transition", None)
    assert (illegal.value.from_status, illegal.value.action) == (OrderStatus.CANCELLED, OrderAction.PAY)
    missing = OrderNotFound("42")
    assert isinstance(missing, NotFound)
    assert (missing.status, missing.reason, missing.message) == (404, "not_found", "no order 42")
    with pytest.raises(OrderNotFound, match="no order not-an-id"):
        parse_order_id("not-an-id")
    order_id = uuid.uuid4()
    assert parse_order_id(str(order_id).upper()) == order_id
