"""`wakala bench mdrp`: run policies on one instance or a folder of them, check, print.

One instance: greedy (the baseline) and the chosen ``--policy`` run on the same instance;
the chosen policy's solution is written with ``-o``. ``--all DIR``: every instance folder of
DIR (one holding ``orders.txt``), all three policies, means over instances per policy and per
family (the instance name without its seed day: ``o50t75s2p125``), and the issue's targets.

Every solution is checked (``evaluate.check``) before any figure is computed from it; one
infeasible solution stops the run with its violations (``InfeasibleSolution``) instead of a
result. Output: a table, then as the last line one JSON object whose names carry their
units; every policy's figures have ``ratio_vs_greedy`` (policy / greedy, same run).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from dispatch.core.console import format_table
from loadtest.mdrp.evaluate import check, measures
from loadtest.mdrp.instance import Instance, read_instance
from loadtest.mdrp.policies import POLICIES, make_policy
from loadtest.mdrp.sim import simulate
from loadtest.mdrp.solution import write_solution
from schema.errors import WakalaError

__all__ = ["InfeasibleSolution", "add_parser", "run_all", "run_instance"]

RATIO_KEYS = ("orders_delivered", "click_to_door_mean_min", "click_to_door_p90_min",
              "click_to_door_overage_mean_min", "ready_to_pickup_mean_min", "orders_per_courier_hour",
              "courier_payment_total", "courier_payment_per_order", "bundle_size_mean_orders")
NAME_RE = re.compile(r"^(\d+)([a-z]\d+)(t\d+)(s\d+)(p\d+)$")
SHOWN = (("orders delivered", "orders_delivered"), ("click-to-door mean, min", "click_to_door_mean_min"),
         ("click-to-door p90, min", "click_to_door_p90_min"),
         ("click-to-door overage mean, min", "click_to_door_overage_mean_min"),
         ("ready-to-pickup mean, min", "ready_to_pickup_mean_min"),
         ("orders per courier-hour", "orders_per_courier_hour"),
         ("courier payment total", "courier_payment_total"),
         ("courier payment per order", "courier_payment_per_order"),
         ("bundle size mean, orders", "bundle_size_mean_orders"))


class InfeasibleSolution(WakalaError):
    """A policy produced a solution the set's rules refuse: no figures are reported for it."""


def family(name: str) -> str:
    m = NAME_RE.match(name)
    return "".join(m.groups()[1:]) if m else name


def _ratio(value: float | int | None, base: float | int | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return round(value / base, 4)


def run_instance(instance: Instance, policies: tuple[str, ...],
                 outputs: dict[str, Path] | None = None) -> dict[str, dict]:
    """Simulate, check and measure each policy; greedy must be among them (the baseline).
    ``outputs``: where to write which policy's solution (only once it is found feasible)."""
    results: dict[str, dict] = {}
    for name in policies:
        outcome = simulate(instance, make_policy(name, instance))
        violations = check(instance, outcome.solution)
        if violations:
            shown = "\n  ".join(str(v) for v in violations[:10])
            raise InfeasibleSolution(f"{name} on {instance.name}: {len(violations)} violation(s) of the set's "
                                     f"rules, not reported:\n  {shown}")
        if outputs and name in outputs:
            write_solution(instance, outcome.solution, outputs[name])
        figures = measures(instance, outcome.solution)
        figures["feasible"] = True
        figures["sim_s"] = round(outcome.seconds, 3)
        figures["delivered_ids"] = {r.order for r in outcome.solution.orders if r.dropoff_at is not None}
        results[name] = figures
    base = results["greedy"]
    for figures in results.values():
        figures["ratio_vs_greedy"] = {k: _ratio(figures[k], base[k]) for k in RATIO_KEYS}
    return results


def _public(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k != "delivered_ids"}


def _table(rows_by_policy: dict[str, dict]) -> str:
    names = list(rows_by_policy)
    rows = [[label] + [rows_by_policy[n].get(key) for n in names] for label, key in SHOWN]
    rows += [[f"{label} / greedy"] + [rows_by_policy[n]["ratio_vs_greedy"].get(key) for n in names]
             for label, key in SHOWN[1:2] + SHOWN[6:8]]
    return format_table(["measure"] + names, rows)


def run_one(path: str, policy: str, out: str | None) -> dict:
    instance = read_instance(path)
    policies = ("greedy",) if policy == "greedy" else ("greedy", policy)
    results = run_instance(instance, policies, {policy: Path(out)} if out else None)
    print(f"wakala bench mdrp {instance.name}: {len(instance.orders)} orders, {len(instance.couriers)} couriers"
          + (f"; {policy} solution written to {out}" if out else ""))
    print(_table(results))
    figures = {"bench": "mdrp", "instance": instance.name, "policy": policy, "baseline": "greedy",
               "policies": {n: _public(r) for n, r in results.items()}}
    print(json.dumps(figures, sort_keys=True))
    return figures


def _means(rows: list[dict]) -> dict:
    out: dict = {"instances": len(rows)}
    for key in (*RATIO_KEYS, "orders_total", "orders_over_max_click_to_door", "couriers_on_guarantee_share", "sim_s"):
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = round(sum(values) / len(values), 4) if values else None
    return out


def _improvement_pct(base: float | None, value: float | None) -> float | None:
    return None if not base or value is None else round((base - value) / base * 100.0, 2)


def run_all(folder: str, out: str | None) -> dict:
    root = Path(folder)
    paths = sorted(p for p in root.iterdir() if (p / "orders.txt").is_file())
    if not paths:
        raise InfeasibleSolution(f"no instance folders (with orders.txt) in {root}")
    per_policy: dict[str, list[dict]] = defaultdict(list)
    per_family: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    covers = 0
    short: list[str] = []
    misses: dict[str, list[str]] = {}
    for p in paths:
        instance = read_instance(p)
        results = run_instance(instance, POLICIES,
                               {n: Path(out) / instance.name / n for n in POLICIES} if out else None)
        # Per instance: the orders greedy or batch delivered that bundle did not.
        others = set().union(*(results[n]["delivered_ids"] for n in POLICIES if n != "bundle"))
        missed = others - results["bundle"]["delivered_ids"]
        if not missed:
            covers += 1
        else:
            short.append(instance.name)
            misses[instance.name] = sorted(missed)
        for name in POLICIES:
            per_policy[name].append(results[name])
            per_family[family(instance.name)][name].append(results[name])
        print(f"{instance.name}: " + ", ".join(
            f"{n} {results[n]['orders_delivered']}/{results[n]['orders_total']} ctd {results[n]['click_to_door_mean_min']} "
            f"pay/order {results[n]['courier_payment_per_order']}" for n in POLICIES), flush=True)
    means = {n: _means(rows) for n, rows in per_policy.items()}
    for m in means.values():
        m["ratio_vs_greedy"] = {k: _ratio(m[k], means["greedy"][k]) for k in RATIO_KEYS}
    families = {f: {n: _means(rows) for n, rows in by.items()} for f, by in sorted(per_family.items())}
    g, b = means["greedy"], means["bundle"]
    targets = {
        "bundle_delivers_all_others_deliver_instances": covers,
        "bundle_delivers_fewer_instances": short,
        "bundle_misses_orders": misses,
        "bundle_click_to_door_mean_improvement_pct": _improvement_pct(g["click_to_door_mean_min"],
                                                                      b["click_to_door_mean_min"]),
        "bundle_payment_per_order_improvement_pct": _improvement_pct(g["courier_payment_per_order"],
                                                                     b["courier_payment_per_order"]),
        "feasible_instances": len(paths),
    }
    targets["met"] = (covers == len(paths) and (targets["bundle_click_to_door_mean_improvement_pct"] or 0) >= 15
                      and (targets["bundle_payment_per_order_improvement_pct"] or 0) >= 15)
    print(f"wakala bench mdrp --all {root}: {len(paths)} instances, every solution feasible, means over instances")
    print(_table(means))
    print(format_table(["family", "policy", "ctd mean", "ctd p90", "pay/order", "bundle size", "delivered"],
                       [(f, n, m["click_to_door_mean_min"], m["click_to_door_p90_min"],
                         m["courier_payment_per_order"], m["bundle_size_mean_orders"], m["orders_delivered"])
                        for f, by in families.items() for n, m in by.items()]))
    print(format_table(["target", "value"], list(targets.items())))
    figures = {"bench": "mdrp", "folder": str(root), "instances": len(paths), "baseline": "greedy",
               "policies": means, "families": families, "targets": targets}
    print(json.dumps(figures, sort_keys=True))
    return figures


def _handler(args: argparse.Namespace) -> int:
    if args.all:
        figures = run_all(args.all, args.output)
        return 0 if figures["targets"]["met"] else 1
    if not args.instance:
        raise InfeasibleSolution("give an INSTANCE_DIR or --all DIR")
    run_one(args.instance, args.policy, args.output)
    return 0


def add_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `wakala bench mdrp` under the bench subcommands."""
    p = bsub.add_parser("mdrp", help="greedy vs batch vs bundle dispatch on Grubhub MDRP instances, simulated")
    p.add_argument("instance", nargs="?", metavar="INSTANCE_DIR", help="one instance folder")
    p.add_argument("--policy", choices=POLICIES, default="bundle", help="policy to run against greedy and write")
    p.add_argument("-o", "--output", metavar="SOLUTION_DIR", help="write the solution files here "
                   "(with --all: SOLUTION_DIR/<instance>/<policy>/)")
    p.add_argument("--all", metavar="DIR", help="every instance folder in DIR, all policies, means")
    p.set_defaults(handler=_handler, sync=True)
    return p
