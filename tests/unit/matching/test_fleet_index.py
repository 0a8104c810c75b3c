"""The in-process availability index: exact top-k as ``rank`` gives it, freshness, row order."""

from __future__ import annotations

import math
import random
import uuid

import pytest

from dispatch.matching.fleet_index import DriverRow, FleetIndex, TenantIndex
from dispatch.matching.fleet_replica import parse_rows
from dispatch.matching.ranking import AVAILABLE, Candidate, Job, rank
from geo import CIRCUITY, destination

TENANT = str(uuid.uuid4())
OTHER = str(uuid.uuid4())
NOW = 1_700_000_000_000
TTL = 30_000
VEHICLES = ("motorbike", "car", "bakkie")


def job(lat: float, lng: float, *, max_m: float = 5_000 * CIRCUITY, vehicles=None, cold=False,
        tenant: str = TENANT) -> Job:
    return Job(tenant, lat, lng, lat, lng, vehicles, cold, max_m)


def fleet(rng: random.Random, n: int, lat: float, lng: float, spread_deg: float,
          tenant: str = TENANT) -> list[DriverRow]:
    rows = []
    for _ in range(n):
        rows.append(DriverRow(str(uuid.uuid4()), tenant, lat + rng.uniform(-spread_deg, spread_deg),
                              lng + rng.uniform(-spread_deg, spread_deg), rng.choice(VEHICLES),
                              NOW - rng.randrange(0, 2 * TTL), rng.random() < 0.8))
    return rows


def expected(rows: list[DriverRow], j: Job, k: int, *, exclude=frozenset(), cold=frozenset()):
    """What ``rank`` says over every fresh indexed driver of the job's tenant."""
    latest = {r.driver_id: r for r in rows}
    pool = [Candidate(r.driver_id, r.lat, r.lng, r.vehicle_type, r.driver_id in cold, AVAILABLE,
                      j.tenant_id, r.seen_ms)
            for r in latest.values()
            if r.indexed and not r.gone and r.tenant_id == j.tenant_id and r.seen_ms > NOW - TTL]
    return rank(j, pool, k=k, exclude=exclude)


def ask(index: FleetIndex, j: Job, k: int = 10, **kw):
    tenant = index.tenant(j.tenant_id)
    return [] if tenant is None else tenant.nearest(j, k=k, now_ms=NOW, ttl_ms=TTL, **kw)


@pytest.mark.parametrize("seed", range(6))
def test_top_k_is_what_rank_gives_on_random_fleets(seed):
    rng = random.Random(seed)
    centre = (rng.uniform(-60, 60), rng.uniform(-179, 179))
    spread = rng.choice((0.02, 0.1, 0.4))
    rows = fleet(rng, rng.choice((30, 400, 3_000)), *centre, spread)
    rows += fleet(rng, 50, *centre, spread, tenant=OTHER)
    index = FleetIndex()
    index.apply(rows)
    cold = {r.driver_id for r in rows if rng.random() < 0.3}
    answered = 0
    for _ in range(40):
        j = job(centre[0] + rng.uniform(-spread, spread), centre[1] + rng.uniform(-spread, spread),
                max_m=rng.choice((500.0, 3_000.0, 5_000 * CIRCUITY, 60_000.0)),
                vehicles=rng.choice((None, frozenset({"car"}), frozenset({"car", "bakkie"}))),
                cold=rng.random() < 0.3)
        k = rng.choice((1, 3, 10, 25))
        exclude = frozenset(r.driver_id for r in rng.sample(rows, 5))
        got = ask(index, j, k, exclude=exclude, cold_of=cold.__contains__)
        want = expected(rows, j, k, exclude=exclude, cold=cold)
        assert got == want
        answered += bool(want)
    assert answered >= 10   # the comparison is not between empty answers


def test_ties_are_broken_by_driver_id_like_rank():
    point = (-26.2, 28.05)
    ids = sorted(str(uuid.uuid4()) for _ in range(6))
    rows = [DriverRow(d, TENANT, *destination(*point, 90.0, 800.0), "car", NOW, True) for d in ids]
    index = FleetIndex()
    index.apply(reversed(rows))
    got = ask(index, job(*point), k=3)
    assert [r.driver_id for r in got] == ids[:3]
    assert got == expected(rows, job(*point), 3)


def test_drivers_across_the_antimeridian_and_near_a_pole_are_found():
    index = FleetIndex()
    east = DriverRow(str(uuid.uuid4()), TENANT, -17.8, 179.999, "car", NOW, True)
    west = DriverRow(str(uuid.uuid4()), TENANT, -17.8, -179.999, "car", NOW, True)
    polar = [DriverRow(str(uuid.uuid4()), TENANT, 89.99, lng, "car", NOW, True) for lng in (-170.0, 10.0, 95.0)]
    index.apply([east, west, *polar])
    assert {r.driver_id for r in ask(index, job(-17.8, 179.9995))} == {east.driver_id, west.driver_id}
    assert {r.driver_id for r in ask(index, job(89.995, 0.0))} == {d.driver_id for d in polar}


def test_a_driver_older_than_the_ttl_is_not_a_candidate_and_is_evicted():
    point = (-26.2, 28.05)
    fresh = DriverRow(str(uuid.uuid4()), TENANT, *destination(*point, 0.0, 900.0), "car", NOW - TTL + 1, True)
    stale = DriverRow(str(uuid.uuid4()), TENANT, *destination(*point, 0.0, 100.0), "car", NOW - TTL, True)
    index = FleetIndex()
    index.apply([fresh, stale])
    assert [r.driver_id for r in ask(index, job(*point))] == [fresh.driver_id]
    assert index.evict(NOW - TTL) == 1
    assert index.seen_of(stale.driver_id) is None and len(index) == 1


def test_an_older_row_never_overwrites_a_newer_one():
    point = (-26.2, 28.05)
    d = str(uuid.uuid4())
    index = FleetIndex()
    index.apply([DriverRow(d, TENANT, *point, "car", NOW, True)])
    moved = destination(*point, 45.0, 2_000.0)
    index.apply([DriverRow(d, TENANT, *moved, "car", NOW - 500, False)])   # a late re-read
    (only,) = ask(index, job(*point))
    assert (only.candidate.lat, only.candidate.lng) == point


def test_a_status_change_at_the_same_seen_ms_is_applied_in_order():
    point = (-26.2, 28.05)
    d = str(uuid.uuid4())
    index = FleetIndex()
    index.apply([DriverRow(d, TENANT, *point, "car", NOW, True)])
    index.apply([DriverRow(d, TENANT, *point, "car", NOW, False)])      # claimed: busy
    assert ask(index, job(*point)) == []
    index.apply([DriverRow(d, TENANT, *point, "car", NOW, True)])       # released
    assert [r.driver_id for r in ask(index, job(*point))] == [d]


def test_a_gone_row_removes_the_candidate_but_a_newer_ping_brings_it_back():
    point = (-26.2, 28.05)
    d = str(uuid.uuid4())
    index = FleetIndex()
    index.apply([DriverRow(d, TENANT, *point, "car", NOW - 10, True)])
    index.apply([DriverRow(d, "", math.nan, math.nan, "", NOW, False, gone=True)])
    assert ask(index, job(*point)) == []
    index.apply([DriverRow(d, TENANT, *point, "car", NOW - 5, True)])    # older than the gone read
    assert ask(index, job(*point)) == []
    index.apply([DriverRow(d, TENANT, *point, "car", NOW + 1, True)])
    assert [r.driver_id for r in ask(index, job(*point))] == [d]


def test_a_driver_that_changes_tenant_leaves_the_old_tenants_index():
    point = (-26.2, 28.05)
    d = str(uuid.uuid4())
    index = FleetIndex()
    index.apply([DriverRow(d, TENANT, *point, "car", NOW, True)])
    index.apply([DriverRow(d, OTHER, *point, "car", NOW + 1, True)])
    assert ask(index, job(*point)) == []
    assert [r.driver_id for r in ask(index, job(*point, tenant=OTHER))] == [d]


def test_moving_keeps_the_driver_in_exactly_one_cell():
    point = (-26.2, 28.05)
    d = str(uuid.uuid4())
    tenant = TenantIndex(TENANT)
    for i in range(20):
        tenant.apply(DriverRow(d, TENANT, *destination(*point, 18.0 * i, 300.0 * i), "car", NOW + i, True))
    assert tenant.candidates == 1 and len(tenant) == 1
    far = destination(*point, 18.0 * 19, 300.0 * 19)
    assert [r.driver_id for r in tenant.nearest(job(*far), now_ms=NOW, ttl_ms=TTL)] == [d]


def test_rows_payload_parses_live_busy_and_gone_drivers():
    a, b, c, t = (str(uuid.uuid4()) for _ in range(4))
    payload = (f"{NOW}\n{a}\t{t}\t-26.1\t28.05\tcar\t{NOW - 3}\t1\n{b}\t{t}\t-26.2\t28.0\tbakkie\t{NOW - 9}\t0\n"
               f"{c}\t\t\t\t\t{NOW}\tg")
    now, rows = parse_rows(payload)
    assert now == NOW
    assert rows[0] == DriverRow(a, t, -26.1, 28.05, "car", NOW - 3, True)
    assert rows[1] == DriverRow(b, t, -26.2, 28.0, "bakkie", NOW - 9, False)
    assert rows[2].gone and rows[2].seen_ms == NOW and not rows[2].indexed
