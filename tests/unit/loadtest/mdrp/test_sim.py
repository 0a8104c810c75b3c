"""loadtest/mdrp sim + policies + report: feasible days, no peeking, the engine's rules, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dispatch.cli import main
from loadtest.mdrp import report
from loadtest.mdrp.evaluate import check, measures
from loadtest.mdrp.instance import read_instance
from loadtest.mdrp.policies import POLICIES, make_policy
from loadtest.mdrp.sim import PolicyError, simulate
from loadtest.mdrp.solution import ASSIGNMENTS, COURIERS, ORDERS, OrderRow
from tests.unit.loadtest.mdrp.conftest import write_instance

DATA = Path("/work/shared/data/mdrp/0o50t100s1p100")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="the shared MDRP data set is not on this machine")


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_delivers_the_tiny_day_feasibly(tiny_dir: Path, policy: str):
    instance = read_instance(tiny_dir)
    solution = simulate(instance, make_policy(policy, instance)).solution
    assert check(instance, solution) == []
    assert measures(instance, solution)["orders_delivered"] == 3


@pytest.mark.parametrize("policy", ["greedy", "batch"])
def test_the_engine_policies_open_a_job_at_ready_time_one_order_per_courier(tiny_dir: Path, policy: str):
    instance = read_instance(tiny_dir)
    solution = simulate(instance, make_policy(policy, instance)).solution
    for trip in solution.trips:
        assert len(trip.orders) == 1
        assert trip.assigned_at >= instance.order(trip.orders[0]).ready_at


def test_greedy_gives_the_first_job_the_nearest_courier(tiny_dir: Path):
    # o1 opens at 10 at r1: c1 is 3 min away, c2 15; o1 comes first, so it takes c1.
    instance = read_instance(tiny_dir)
    solution = simulate(instance, make_policy("greedy", instance)).solution
    assert [(t.assigned_at, t.courier, t.orders) for t in solution.trips][0] == (10, "c1", ("o1",))


def test_the_bundle_policy_bundles_same_direction_orders_and_sends_just_in_time(tmp_path: Path):
    # One courier, two orders of r1 a few hundred metres east, both ready at 20.
    instance = read_instance(write_instance(tmp_path / "b", {
        "orders.txt": ("order\tx\ty\tplacement_time\trestaurant\tready_time\n"
                       "o1\t400\t0\t0\tr1\t20\no2\t500\t0\t1\tr1\t20\no3\t1000\t500\t5\tr2\t21\n"),
        "couriers.txt": "courier\tx\ty\ton_time\toff_time\nc1\t0\t300\t0\t90\nc2\t1000\t1000\t0\t90\n"}))
    solution = simulate(instance, make_policy("bundle", instance)).solution
    assert check(instance, solution) == []
    bundled = [t for t in solution.trips if len(t.orders) == 2]
    assert len(bundled) == 1 and bundled[0].orders == ("o1", "o2")          # nearer drop first
    # sent when leaving then reaches the counter as the food is ready (3 min + 2 min service)
    assert bundled[0].assigned_at == 20 - 5 and bundled[0].pickup_at == 20


@needs_data
@pytest.mark.parametrize("policy", POLICIES)
def test_decisions_before_a_minute_never_depend_on_later_orders(policy: str):
    full = read_instance(DATA)
    cut = 400
    early = replace(full, orders=tuple(o for o in full.orders if o.placed_at <= cut))
    a = simulate(full, make_policy(policy, full)).solution
    b = simulate(early, make_policy(policy, early)).solution
    assert [t for t in a.trips if t.assigned_at <= cut] == [t for t in b.trips if t.assigned_at <= cut]
    assert check(full, a) == [] and check(early, b) == []


def test_a_policy_that_asks_is_shown_the_couriers_still_to_come(tiny_dir: Path):
    # c1 leaves for o1 at 0 (r1, 3 min away; ready 10) and is free at o1 at 10 + 2 + 5 + 2 +
    # 2 = 21 (service 4 = 2 + 2); c2, never sent, stays free. A courier on shift later would
    # appear from its on_time at its start.
    instance = read_instance(tiny_dir)
    seen: dict[int, list[tuple[str, int, float, float]]] = {}

    class Watch:
        name = "watch"
        sees_coming = True

        def decide(self, now, orders, couriers, coming):
            seen[now] = [(c.courier.id, c.free_at, c.x, c.y) for c in coming]
            if now == 0:
                return [("c1", ("o1",))]
            return []

    simulate(instance, Watch())
    assert seen[0] == []
    assert seen[2] == [("c1", 21, 500.0, 0.0)]   # o2 is placed at 2: the next decision
    assert all(c != "c2" for row in seen.values() for c, *_ in row)


def test_a_policy_that_breaks_the_rules_is_stopped(tiny_dir: Path):
    instance = read_instance(tiny_dir)

    class Cheat:
        name = "cheat"

        def decide(self, now, orders, couriers):
            return [(couriers[0].courier.id, ("o3",))]   # o3 is placed at 5: not visible at 0

    with pytest.raises(PolicyError, match="not all waiting"):
        simulate(instance, Cheat())


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["bench", "mdrp", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_one_instance_prints_a_table_then_json_and_writes_the_solution(tiny_dir: Path, tmp_path: Path, capsys):
    code, out, _ = run_cli([str(tiny_dir), "--policy", "bundle", "-o", str(tmp_path / "sol")], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert "courier payment per order" in out
    figures = json.loads(lines[-1])
    assert figures["bench"] == "mdrp" and figures["baseline"] == "greedy"
    bundle = figures["policies"]["bundle"]
    assert bundle["feasible"] is True and bundle["orders_delivered"] == 3
    assert bundle["ratio_vs_greedy"]["click_to_door_mean_min"] == pytest.approx(
        bundle["click_to_door_mean_min"] / figures["policies"]["greedy"]["click_to_door_mean_min"], abs=1e-3)
    for name in (ASSIGNMENTS, ORDERS, COURIERS):
        assert (tmp_path / "sol" / name).is_file()


def test_cli_refuses_a_hostile_instance_naming_the_field_and_writes_nothing(tmp_path: Path, capsys):
    bad = write_instance(tmp_path / "bad", {"orders.txt": "order\tx\ty\tplacement_time\trestaurant\tready_time\n"
                                                          "o1\t1\t1\t5\tr1\tsoon\n"})
    code, out, err = run_cli([str(bad), "-o", str(tmp_path / "sol")], capsys)
    assert code == 2
    assert "orders.txt:2:ready_time" in err
    assert not (tmp_path / "sol").exists()


def test_cli_all_reports_means_per_policy_and_family(tiny_dir: Path, tmp_path: Path, capsys):
    write_instance(tmp_path / "set" / "0o50t100s1p100")
    write_instance(tmp_path / "set" / "1o50t100s1p100")
    (tmp_path / "set" / "README.md").write_text("not an instance")
    code, out, _ = run_cli(["--all", str(tmp_path / "set")], capsys)
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["instances"] == 2
    assert set(figures["policies"]) == set(POLICIES)
    assert figures["families"]["o50t100s1p100"]["greedy"]["instances"] == 2
    assert figures["targets"]["feasible_instances"] == 2
    assert code == (0 if figures["targets"]["met"] else 1)


def test_an_infeasible_solution_is_refused_not_reported(tiny_dir: Path, monkeypatch):
    real = report.simulate

    def broken(instance, policy):
        outcome = real(instance, policy)
        rows = tuple(OrderRow(r.order, r.pickup_at, (r.dropoff_at or 0) - 5, r.courier) if r.order == "o1" else r
                     for r in outcome.solution.orders)
        outcome.solution = replace(outcome.solution, orders=rows)
        return outcome

    monkeypatch.setattr(report, "simulate", broken)
    with pytest.raises(report.InfeasibleSolution, match="violation"):
        report.run_instance(read_instance(tiny_dir), ("greedy",))
