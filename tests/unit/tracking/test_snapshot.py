"""The grid a tracking snapshot draws (``geo.covering_grid`` at the snapshot's cap of
``dispatch.tracking.snapshot.MAX_GRID_CELLS``). Pure, no service needed."""

from __future__ import annotations

from geo import covering_grid, destination

SHOP_AT = (-26.236, 27.909)   # the test shop of tests/integration/api/test_api.py (Vilakazi St)


def test_the_grid_covers_the_points_and_stays_under_the_cap():
    dropoff = destination(*SHOP_AT, 90.0, 1500)
    res, cells = covering_grid([SHOP_AT, dropoff])
    assert res == 9 and 2 <= len(cells) <= 400
    assert all(len(c) >= 5 and all(len(p) == 2 for p in c) for c in cells)
    res, cells = covering_grid([SHOP_AT, destination(*SHOP_AT, 45.0, 30_000)])
    assert res < 9 and len(cells) <= 400


def test_the_snapshot_of_a_bundled_delivery_names_its_stop():
    from dispatch.tracking.snapshot import snapshot_frame

    row = {"status": "assigned", "order_number": "ORD-1", "business_name": "Spaza", "pickup_lat": SHOP_AT[0],
           "pickup_lng": SHOP_AT[1], "dropoff_lat": -26.23, "dropoff_lng": 27.92, "events": [],
           "bundle_seq": 2, "bundle_size": 2}
    frame = snapshot_frame("d", row, None, 1.0).frame
    assert (frame["stop"], frame["stops"]) == (2, 2)
    alone = snapshot_frame("d", {**row, "bundle_seq": None, "bundle_size": None}, None, 1.0).frame
    assert "stop" not in alone and "stops" not in alone
