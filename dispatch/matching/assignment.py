"""Assigning pending jobs to available drivers: optimal batch vs greedy nearest-first. Pure.

Both modes work on the same jobs × drivers matrix of pickup ETAs (``cost_matrix``), with the
eligibility rules of ``dispatch.ranking.feasibility``; ineligible pairs cost ``infeasible``.
The engine passes its learned ETA model (``model``), so the solve weighs each pair by the
pickup ETA its offer will carry (vehicle, hour, cell and area corrections included); the
older per-cell ``calibration`` remains for the simulations that compare estimators.

* ``assign_batch`` solves the rectangular assignment problem
  (``scipy.optimize.linear_sum_assignment``): it first maximises how many jobs get a
  driver, then minimises the total pickup ETA of those pairs.
* ``assign_greedy`` takes jobs in arrival order and gives each the feasible free driver
  with the smallest pickup ETA — what per-order dispatch does today, and the baseline the
  batch mode is measured against.

The two solves are also public over a cost matrix the caller built (``solve_batch``,
``solve_greedy``): a simulation with its own travel-time model (``loadtest.mdrp``) injects
its pickup times there and keeps the engine's decision rules unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from dispatch.matching.ranking import Candidate, Job, feasibility
from geo.eta import CIRCUITY, PARKING_OVERHEAD_S, EtaCalibration, etas_seconds
from geo.eta_model import EtaModel

__all__ = [
    "INFEASIBLE_S",
    "Assignment",
    "assign_batch",
    "assign_greedy",
    "cost_matrix",
    "solve_batch",
    "solve_greedy",
]

# Cost of an ineligible pair: ~32 years, far above any real pickup ETA, finite so the
# solver accepts it. assign_batch checks it dominates the feasible costs it is given.
INFEASIBLE_S = 1e9


class Assignment(NamedTuple):
    """Job ``job_index`` (position in the jobs list) goes to ``driver_id``; pickup ETA ``cost_s``."""

    job_index: int
    driver_id: str
    cost_s: float


def cost_matrix(jobs: Sequence[Job], candidates: Sequence[Candidate], *, at: datetime,
                circuity: float = CIRCUITY, infeasible: float = INFEASIBLE_S,
                calibration: EtaCalibration | None = None,
                excludes: Sequence[Collection[str]] | None = None,
                overhead_s: float = PARKING_OVERHEAD_S, model: EtaModel | None = None) -> NDArray[np.float64]:
    """Jobs × candidates pickup ETAs in seconds; ineligible pairs are ``infeasible``.

    ETA = great-circle distance × circuity ÷ the driver's vehicle speed at ``at`` (see
    ``geo.eta``), times the calibration factor of the job's pickup cell when
    ``calibration`` is given. With ``model`` (the engine's learned ``geo.eta_model``) it is
    instead the model's arrival time at the pickup, the pickup ETA the offers carry; the two
    are exclusive. ``excludes``: per job, drivers who declined it.
    """
    return _costs(jobs, candidates, at=at, circuity=circuity, infeasible=infeasible,
                  calibration=calibration, excludes=excludes, overhead_s=overhead_s, model=model)[0]


def _costs(jobs: Sequence[Job], candidates: Sequence[Candidate], *, at: datetime,
           circuity: float, infeasible: float, calibration: EtaCalibration | None,
           excludes: Sequence[Collection[str]] | None,
           overhead_s: float, model: EtaModel | None = None) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    if not (infeasible > 0 and math.isfinite(infeasible)):
        raise ValueError(f"infeasible must be a positive finite number, got {infeasible}")
    if model is not None and calibration is not None:
        raise ValueError("give calibration or model, not both")
    f = feasibility(jobs, candidates, circuity=circuity, excludes=excludes)
    if model is not None:
        etas = model.travel_matrix(f.great_circle_m, [c.vehicle_type for c in candidates], at,
                                   [(jb.pickup_lat, jb.pickup_lng) for jb in jobs])
        return np.where(f.feasible, np.maximum(etas, 0.0), infeasible), f.feasible
    factor: float | NDArray[np.float64] = 1.0
    if calibration is not None:
        factor = calibration.factors(EtaCalibration.cell_for(jb.pickup_lat, jb.pickup_lng)
                                     for jb in jobs)[:, None]
    etas = etas_seconds(f.great_circle_m, [c.vehicle_type for c in candidates], at,
                        circuity=circuity, calibration=factor, overhead_s=overhead_s)
    return np.where(f.feasible, etas, infeasible), f.feasible


def assign_batch(jobs: Sequence[Job], candidates: Sequence[Candidate], *, at: datetime,
                 circuity: float = CIRCUITY, infeasible: float = INFEASIBLE_S,
                 calibration: EtaCalibration | None = None,
                 excludes: Sequence[Collection[str]] | None = None,
                 overhead_s: float = PARKING_OVERHEAD_S,
                 waited_s: Sequence[float] | None = None,
                 wait_weight: float = 1.0, model: EtaModel | None = None) -> list[Assignment]:
    """Optimal assignment: the most jobs matched, then the least total pickup ETA.

    Each driver gets at most one job and each job at most one driver; jobs with no eligible
    driver left are absent from the result, which is ordered by job index.

    ``waited_s`` (per job, seconds since it became pending) makes the solver weigh age when
    there are more jobs than drivers: a job's costs are lowered by ``wait_weight × waited``,
    so with the default weight of 1 the solve minimises the customers' total time to pickup
    (waiting so far + pickup ETA) instead of pickup ETAs alone, and a far order that keeps
    losing to near new ones gets older until it wins. ``cost_s`` stays the pickup ETA.
    """
    costs, feasible = _costs(jobs, candidates, at=at, circuity=circuity,
                             infeasible=infeasible, calibration=calibration,
                             excludes=excludes, overhead_s=overhead_s, model=model)
    return solve_batch(costs, feasible, [c.driver_id for c in candidates], infeasible=infeasible,
                       waited_s=waited_s, wait_weight=wait_weight)


def solve_batch(costs: NDArray[np.float64], feasible: NDArray[np.bool_], driver_ids: Sequence[str], *,
                infeasible: float = INFEASIBLE_S, waited_s: Sequence[float] | None = None,
                wait_weight: float = 1.0) -> list[Assignment]:
    """``assign_batch``'s solve over a jobs × drivers cost matrix the caller built.

    ``costs[i, j]`` is driver j's pickup cost for job i in any one unit (``waited_s`` in the
    same unit), ``feasible`` the eligibility mask, ``driver_ids`` one id per column.
    """
    if costs.shape != feasible.shape or costs.shape[1:] != (len(driver_ids),):
        raise ValueError(f"costs {costs.shape}, feasible {feasible.shape} and {len(driver_ids)} "
                         "driver ids do not match")
    if not feasible.any():
        return []
    solve_costs = costs
    if waited_s is not None:
        waited = np.asarray(waited_s, dtype=np.float64)
        if waited.shape != (costs.shape[0],) or not np.all(waited >= 0) or not np.all(np.isfinite(waited)):
            raise ValueError("waited_s must hold one non-negative finite number per job")
        if not (wait_weight >= 0 and math.isfinite(wait_weight)):
            raise ValueError(f"wait_weight must be a non-negative finite number, got {wait_weight}")
        # + weight × (oldest - waited) rather than - weight × waited: the same optimum (a
        # constant per solve), and costs stay non-negative for the infeasible bound below.
        age_credit = wait_weight * (waited.max(initial=0.0) - waited)
        solve_costs = np.where(feasible, costs + age_credit[:, None], infeasible)
    # With `infeasible` above any possible total of feasible costs, trading one infeasible
    # pair for feasible ones always pays, so the solver maximises the matches first.
    worst_total = float(solve_costs[feasible].max()) * min(costs.shape)
    if infeasible <= worst_total:
        raise ValueError(f"infeasible={infeasible:g} must exceed {worst_total:g} (largest "
                         "feasible cost × min(jobs, drivers)) for matches to come first")
    rows, cols = linear_sum_assignment(solve_costs)
    return [Assignment(r, driver_ids[c], float(costs[r, c]))
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True) if feasible[r, c]]


def assign_greedy(jobs: Sequence[Job], candidates: Sequence[Candidate], *, at: datetime,
                  circuity: float = CIRCUITY, calibration: EtaCalibration | None = None,
                  excludes: Sequence[Collection[str]] | None = None,
                  overhead_s: float = PARKING_OVERHEAD_S) -> list[Assignment]:
    """Nearest-first: jobs in the given (arrival) order each take the free eligible driver
    with the smallest pickup ETA; ties go to the smaller driver_id. Ordered by job index.
    """
    if not jobs or not candidates:
        return []
    costs, feasible = _costs(jobs, candidates, at=at, circuity=circuity,
                             infeasible=INFEASIBLE_S, calibration=calibration,
                             excludes=excludes, overhead_s=overhead_s)
    return solve_greedy(costs, feasible, [c.driver_id for c in candidates])


def solve_greedy(costs: NDArray[np.float64], feasible: NDArray[np.bool_],
                 driver_ids: Sequence[str]) -> list[Assignment]:
    """``assign_greedy``'s rule over a jobs × drivers cost matrix the caller built (rows in
    arrival order, ``driver_ids`` one id per column)."""
    if costs.shape != feasible.shape or costs.shape[1:] != (len(driver_ids),):
        raise ValueError(f"costs {costs.shape}, feasible {feasible.shape} and {len(driver_ids)} "
                         "driver ids do not match")
    # Columns in driver_id order, so argmin's first-minimum rule is the driver_id tie-break.
    by_id = sorted(range(len(driver_ids)), key=lambda j: driver_ids[j])
    open_costs = np.where(feasible, costs, np.inf)[:, by_id]
    out: list[Assignment] = []
    for i in range(costs.shape[0]):
        j = int(np.argmin(open_costs[i]))
        if open_costs[i, j] == np.inf:
            continue
        open_costs[:, j] = np.inf  # the driver is taken
        driver = by_id[j]
        out.append(Assignment(i, driver_ids[driver], float(costs[i, driver])))
    return out
