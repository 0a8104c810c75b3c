"""Which messages an event makes, their dedupe keys and parameters; hostile event records."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.core.errors import Refusal
from dispatch.messaging.templates import (
    TEMPLATES,
    TRACKING_URL,
    Event,
    OrderContext,
    clean_param,
    is_stale,
    parse_event,
    plan,
    preview,
    render_params,
    to_whatsapp_number,
    wanted,
)

TENANT, ORDER_ID, EVENT_ID = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def ctx(**kw) -> OrderContext:
    base = dict(order_number="WK-000042", shop="Mama Thoko Spaza", total="145.00", payment_method="cash",
                customer_id=str(uuid.uuid4()), customer_user_id=str(uuid.uuid4()), vendor_id=str(uuid.uuid4()),
                vendor_user_id=str(uuid.uuid4()))
    return OrderContext(**{**base, **kw})


def event(topic: str, kind: str, **payload) -> Event:
    return Event(EVENT_ID, TENANT, topic, kind, ORDER_ID, NOW, payload)


def names(planned) -> list[tuple[str, str]]:
    return [(p.template.name, p.recipient_type) for p in planned]


def test_a_cash_order_is_confirmed_when_placed_and_the_shop_hears_of_it():
    c = ctx()
    planned = plan(event("order", "place", payment_method="cash"), c)
    assert names(planned) == [("order_confirmed", "customer"), ("vendor_new_order", "vendor")]
    confirmed, new = planned
    assert confirmed.user_id == c.customer_user_id and confirmed.recipient_id == c.customer_id
    assert new.user_id == c.vendor_user_id and new.recipient_id == c.vendor_id
    assert render_params(confirmed.template, confirmed.params) == ["Mama Thoko Spaza", "WK-000042", "145.00"]
    assert render_params(new.template, new.params) == ["WK-000042", "145.00", "cash on delivery"]


def test_a_card_order_is_confirmed_on_payment_not_on_placing():
    c = ctx(payment_method="card")
    assert plan(event("order", "place", payment_method="card"), c) == []
    assert names(plan(event("order", "pay"), c)) == [("order_confirmed", "customer"), ("vendor_new_order", "vendor")]
    # a cash order paid by callback was confirmed when placed: not again
    assert plan(event("order", "pay"), ctx(payment_method="cash")) == []


@pytest.mark.parametrize(("topic", "kind", "expected"), [
    ("delivery", "accept", [("driver_assigned", "customer")]),
    ("delivery", "arrived_dropoff", [("driver_arriving", "customer")]),
    ("delivery", "deliver", [("order_delivered", "customer"), ("rate_and_return", "customer")]),
    ("delivery", "fail", [("delivery_failed", "customer")]),
])
def test_delivery_events_make_the_customer_messages(topic, kind, expected):
    assert names(plan(event(topic, kind), ctx())) == expected


@pytest.mark.parametrize("kind", ["created", "offer", "decline", "offer_timeout", "arrive_pickup", "pick_up",
                                  "cancel", "give_up", "retry"])
def test_other_delivery_events_make_nothing(kind):
    assert wanted("delivery", kind) == () and plan(event("delivery", kind), ctx()) == []


@pytest.mark.parametrize("kind", ["accept", "reject", "cancel", "mark_ready", "dispatch", "pick_up", "deliver",
                                  "fail_delivery", "cancel_delivery", "expire", "fail_payment", "return"])
def test_the_order_side_of_delivery_happenings_makes_nothing(kind):
    """One happening, one message: deliveries speak for themselves on delivery-events."""
    assert plan(event("order", kind, payment_method="cash"), ctx()) == []


def test_only_the_come_back_invitation_is_marketing():
    assert {t.name for t in TEMPLATES.values() if t.kind == "marketing"} == {"rate_and_return"}
    assert all(t.kind in ("transactional", "marketing") for t in TEMPLATES.values())


def test_the_dedupe_key_is_stable_per_event_template_and_recipient():
    c = ctx()
    first, again = plan(event("delivery", "deliver"), c), plan(event("delivery", "deliver"), c)
    assert [p.dedupe_key for p in first] == [p.dedupe_key for p in again]
    assert len({p.dedupe_key for p in first}) == 2
    assert first[0].dedupe_key == f"{EVENT_ID}/order_delivered/customer/{c.customer_id}"
    other = Event(uuid.uuid4(), TENANT, "delivery", "deliver", ORDER_ID, NOW, {})
    assert {p.dedupe_key for p in plan(other, c)}.isdisjoint({p.dedupe_key for p in first})


def test_the_tracking_link_is_left_for_the_sender():
    planned = plan(event("delivery", "accept"), ctx())[0]
    assert TRACKING_URL in planned.template.params and TRACKING_URL not in planned.params
    with pytest.raises(KeyError):
        render_params(planned.template, planned.params)
    values = render_params(planned.template, {**planned.params, TRACKING_URL: "https://x.example/t/wkt_1"})
    assert preview(planned.template, values).endswith("Follow it live: https://x.example/t/wkt_1")


def test_a_customer_without_an_account_is_planned_without_a_user():
    planned = plan(event("delivery", "fail"), ctx(customer_user_id=None))
    assert planned[0].user_id is None


def test_a_language_the_template_lacks_falls_back_to_english():
    assert plan(event("delivery", "fail"), ctx(language="zu"))[0].language == "en"


@pytest.mark.parametrize(("raw", "expected"), [
    ("Mama\nThoko\t Spaza", "Mama Thoko Spaza"),
    ("a     b", "a b"),
    ("\x00\x07shop\x1b[31m", "shop[31m"),
    ("\ud800lone", "?lone"),
    ("zero\u200bwidth", "zerowidth"),
    ("", "-"),
    ("   \n\t ", "-"),
    ("x" * 500, "x" * 199 + "…"),
])
def test_parameters_are_cleaned_for_the_cloud_api(raw, expected):
    cleaned = clean_param(raw)
    assert cleaned == expected
    assert "\n" not in cleaned and "\t" not in cleaned and "    " not in cleaned and len(cleaned) <= 200
    cleaned.encode("utf-8")   # no lone surrogate survives


def test_a_hostile_shop_name_reaches_the_parameters_cleaned():
    planned = plan(event("delivery", "deliver"), ctx(shop="Evil\n\n\tShop    Ltd"))
    assert planned[0].params["shop"] == "Evil Shop Ltd"


@pytest.mark.parametrize(("phone", "expected"), [
    ("+27821234567", "27821234567"), ("+27 82 123-4567", "27821234567"), ("27821234567", "27821234567"),
    ("", None), (None, None), ("+0821234567", None), ("+27abc", None), ("+1234567", None),
    ("+1234567890123456", None), ("+27821234567\n", None),
])
def test_numbers_become_cloud_api_recipients(phone, expected):
    assert to_whatsapp_number(phone) == expected


def test_stale_events_are_recognised():
    e = event("delivery", "accept")
    assert not is_stale(e, NOW + timedelta(minutes=59), 3600)
    assert is_stale(e, NOW + timedelta(minutes=61), 3600)
    assert not is_stale(Event(EVENT_ID, TENANT, "delivery", "accept", ORDER_ID, None, {}), NOW, 0)


def record(**kw) -> bytes:
    base = {"id": str(EVENT_ID), "tenant_id": str(TENANT), "seq": 1, "delivery_id": str(uuid.uuid4()),
            "type": "accept", "created_at": NOW.isoformat(), "payload": {"order_id": str(ORDER_ID)}}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_a_record_of_the_outbox_parses():
    e = parse_event(record(), "delivery")
    assert (e.id, e.tenant_id, e.order_id, e.type, e.created_at) == (EVENT_ID, TENANT, ORDER_ID, "accept", NOW)
    o = parse_event(json.dumps({"id": str(EVENT_ID), "tenant_id": str(TENANT), "order_id": str(ORDER_ID),
                                "type": "place", "created_at": NOW.isoformat(), "payload": {}}), "order")
    assert o.order_id == ORDER_ID and o.topic == "order"


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b"not json", "value", "bad_json"),
    (b"\xff\xfe", "value", "bad_json"),
    (b"[1, 2]", "value", "wrong_type"),
    (record(payload=...), "payload", "missing_field"),
    (record(payload="x"), "payload", "wrong_type"),
    (record(type=...), "type", "missing_field"),
    (record(type=7), "type", "wrong_type"),
    (record(type="x" * 65), "type", "wrong_type"),
    (record(id=...), "id", "missing_field"),
    (record(id="nope"), "id", "invalid_value"),
    (record(id=12), "id", "wrong_type"),
    (record(tenant_id="'; DROP TABLE x; --"), "tenant_id", "invalid_value"),
    (record(payload={}), "payload.order_id", "missing_field"),
    (record(payload={"order_id": ["x"]}), "payload.order_id", "wrong_type"),
    (record(created_at="yesterday"), "created_at", "invalid_value"),
    (record(created_at="2026-03-02T12:00:00"), "created_at", "invalid_value"),
    (record(created_at=12), "created_at", "invalid_value"),
])
def test_hostile_records_are_refused_naming_the_field(raw, field, reason):
    with pytest.raises(Refusal) as caught:
        parse_event(raw, "delivery")
    assert (caught.value.field, caught.value.reason) == (field, reason)
