"""A bundle offer as the driver sees it and the reply that answers it. Pure."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from dispatch.matching.terms import BundleOffer, BundleStop, InvalidOfferReply, parse_offer_reply

B, D1, D2 = (str(uuid.uuid4()) for _ in range(3))


def test_a_bundle_offer_keeps_the_single_offer_fields_and_lists_the_stops_in_order():
    offer = BundleOffer(B, "t", (-26.2, 27.9), (
        BundleStop(D1, 1, (-26.21, 27.92), Decimal("25.00"), 300),
        BundleStop(D2, 2, (-26.22, 27.93), Decimal("18.50"), 560)), 120, 1.5)
    frame = json.loads(json.dumps(offer.frame()))
    assert frame["type"] == "offer" and frame["delivery_id"] == D1 and frame["bundle_id"] == B
    assert frame["pay"] == "43.50" and frame["pickup_eta_s"] == 120 and frame["expires_at"] == 1.5
    assert frame["dropoff"] == {"lat": -26.22, "lng": 27.93} and frame["dropoff_eta_s"] == 560
    assert [(s["delivery_id"], s["stop"], s["pay"], s["dropoff_eta_s"]) for s in frame["deliveries"]] == [
        (D1, 1, "25.00", 300), (D2, 2, "18.50", 560)]


def test_a_reply_may_name_the_bundle_or_a_delivery():
    assert parse_offer_reply({"bundle_id": B.upper(), "accept": True}) == \
        parse_offer_reply({"bundle_id": B, "accept": True})
    reply = parse_offer_reply({"bundle_id": B, "delivery_id": D1, "accept": False})
    assert (reply.bundle_id, reply.delivery_id, reply.accept) == (B, D1, False)
    assert parse_offer_reply({"delivery_id": D1, "accept": True}).bundle_id is None


@pytest.mark.parametrize("payload, reason, field", [
    ({"accept": True}, "missing_field", "delivery_id"),
    ({"bundle_id": B}, "missing_field", "accept"),
    ({"bundle_id": None, "accept": True}, "wrong_type", "bundle_id"),
    ({"bundle_id": 7, "accept": True}, "wrong_type", "bundle_id"),
    ({"bundle_id": ["x"], "accept": True}, "wrong_type", "bundle_id"),
    ({"bundle_id": "b" * 10_000, "accept": True}, "wrong_type", "bundle_id"),
    ({"bundle_id": "'; DROP TABLE deliveries; --", "accept": True}, "wrong_type", "bundle_id"),
    ({"bundle_id": B, "delivery_id": "nope", "accept": True}, "wrong_type", "delivery_id"),
    ({"bundle_id": B, "accept": "yes"}, "wrong_type", "accept"),
])
def test_hostile_bundle_replies_are_refused_by_reason_and_field(payload, reason, field):
    with pytest.raises(InvalidOfferReply) as refused:
        parse_offer_reply(payload)
    assert (refused.value.reason, refused.value.field) == (reason, field)
