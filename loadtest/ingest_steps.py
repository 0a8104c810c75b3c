"""The pure parts of `wakala bench ingest`'s load steps: the plan, each step's verdict, the summary.

The bench offers a rising load in steps (pings/s), each one a number of drivers sending
``hz`` fixes per second, uploaded together every ``upload_every_s`` seconds. A step is
*sustained* when the engine kept up with it and a phone would not have noticed trouble:

- achieved end-to-end pings/s >= ``MIN_ACHIEVED_SHARE`` of offered;
- p99 latency gateway accept -> Redis <= ``MAX_P99_MS``;
- no client failures while measuring (a failed connection attempt, a dropped session, an ack
  that never came, a load-client process that died), every driver of the step connected.
  Failures during the connection ramp are reported apart (``ramp_failures``): the drivers
  retried and connected, and the step's question is the steady load, not the connect storm.

``max_sustained_pings_per_s`` is the achieved pings/s of the highest sustained step. Stepping
stops after a step that fails *clearly* (``clearly_failed``): far below the offered load, a
p99 several times the limit, drivers that never connected or a dead client. A step that misses
only narrowly lets the next one run, because one noisy window on a shared machine should not
hide a higher step that passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MIN_ACHIEVED_SHARE = 0.95
MAX_P99_MS = 1_000.0
CLEAR_FAIL_SHARE = 0.80       # below this share of offered, a higher step cannot pass
CLEAR_FAIL_P99_MS = 5_000.0
SUSTAINED_RULE = (f"achieved >= {MIN_ACHIEVED_SHARE:.0%} of offered, p99 <= {MAX_P99_MS:,.0f} ms, "
                  "0 client failures while measuring, all drivers connected")


@dataclass(frozen=True)
class Step:
    """One load step: ``drivers`` drivers at ``hz`` fixes/s offer ``offered_pings_per_s``."""

    offered_pings_per_s: float
    drivers: int


@dataclass
class StepResult:
    """What one step measured (the figures the verdict and the report read)."""

    step: Step
    pings_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    latency_samples: int
    drivers_connected: int
    client_failures: int
    client_errors: int
    dead_clients: int = 0
    ramp_failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    cpu_cores_used: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    ramp_s: float = 0.0
    settle_s: float = 0.0
    client_acked_pings_per_s: float = 0.0
    client_sent_pings_per_s: float = 0.0


def parse_steps(text: str) -> list[float]:
    """``"10000,20000,40k"`` -> ``[10000.0, 20000.0, 40000.0]``: positive and rising."""
    loads = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = 1000.0 if part.endswith("k") else 1.0
        try:
            loads.append(float(part.rstrip("k")) * scale)
        except ValueError:
            raise ValueError(f"--steps takes pings/s separated by commas (e.g. 10000,20000), not {part!r}") from None
    if not loads or any(x <= 0 for x in loads):
        raise ValueError("--steps needs at least one positive load in pings/s")
    if any(b <= a for a, b in zip(loads, loads[1:], strict=False)):
        raise ValueError(f"--steps must rise (the bench stops at the first clear failure): {loads}")
    return loads


def plan_steps(loads: Sequence[float], hz: float) -> list[Step]:
    """One step per load: ``drivers = load / hz`` (rounded), the offered load recomputed from it."""
    if hz <= 0:
        raise ValueError(f"--hz must be positive, got {hz}")
    steps = []
    for load in loads:
        drivers = max(1, round(load / hz))
        steps.append(Step(offered_pings_per_s=drivers * hz, drivers=drivers))
    return steps


def sockets_fit(drivers: int, processes: int, fd_limit: int, spare: int = 1_000) -> bool:
    """Whether ``drivers`` websockets spread evenly over ``processes`` fit each one's open-file limit
    (less ``spare`` descriptors for its own listeners, logs, Redis and broker connections)."""
    return -(-drivers // max(1, processes)) <= fd_limit - spare


def why_not_sustained(r: StepResult) -> list[str]:
    """The rules this step broke (empty: sustained)."""
    reasons = []
    offered = r.step.offered_pings_per_s
    if r.pings_per_s < MIN_ACHIEVED_SHARE * offered:
        reasons.append(f"achieved {r.pings_per_s / offered:.1%} of offered")
    if r.p99_ms is None:
        reasons.append("no latency samples")
    elif r.p99_ms > MAX_P99_MS:
        reasons.append(f"p99 {r.p99_ms:,.0f} ms")
    if r.client_failures:
        reasons.append(f"{r.client_failures} client failures")
    if r.drivers_connected < r.step.drivers:
        reasons.append(f"connected {r.drivers_connected}/{r.step.drivers}")
    if r.dead_clients:
        reasons.append(f"{r.dead_clients} load-client process(es) died")
    return reasons


def sustained(r: StepResult) -> bool:
    return not why_not_sustained(r)


def clearly_failed(r: StepResult) -> bool:
    """A failure no higher step will turn around: stop stepping (see the module docstring)."""
    return (r.pings_per_s < CLEAR_FAIL_SHARE * r.step.offered_pings_per_s
            or (r.p99_ms is not None and r.p99_ms > CLEAR_FAIL_P99_MS)
            or r.drivers_connected < r.step.drivers or r.dead_clients > 0)


def step_figures(r: StepResult) -> dict[str, object]:
    """One entry of the last line's ``steps`` list."""
    return {
        "offered_pings_per_s": round(r.step.offered_pings_per_s, 1), "drivers": r.step.drivers,
        "drivers_connected": r.drivers_connected, "pings_per_s": round(r.pings_per_s, 1),
        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "latency_samples": r.latency_samples,
        "client_failures": r.client_failures, "ramp_failures": r.ramp_failures, "client_errors": r.client_errors,
        "dead_client_processes": r.dead_clients, "failure_kinds": dict(sorted(r.failure_kinds.items())),
        "client_sent_pings_per_s": round(r.client_sent_pings_per_s, 1),
        "client_acked_pings_per_s": round(r.client_acked_pings_per_s, 1),
        "cpu_cores_used": r.cpu_cores_used, "window_s": round(r.window_s, 1), "ramp_s": round(r.ramp_s, 1),
        "settle_s": round(r.settle_s, 1),
        "connects_per_s": round(r.drivers_connected / r.ramp_s, 1) if r.ramp_s else None,
        "sustained": sustained(r), "why_not_sustained": why_not_sustained(r),
    }


def summary(results: Sequence[StepResult], baseline_pings_per_s: float) -> dict[str, object]:
    """The headline figures over all steps run.

    ``pings_per_s`` is the best achieved rate of any step (sustained or not);
    ``max_sustained_pings_per_s`` the achieved rate of the highest sustained step (None if none);
    ``ratio_vs_baseline`` = ``pings_per_s`` / baseline and ``sustained_ratio_vs_baseline`` =
    ``max_sustained_pings_per_s`` / baseline (the in-process Redis-script rate).
    """
    best = max((r.pings_per_s for r in results), default=0.0)
    kept = [r for r in results if sustained(r)]
    top = max(kept, key=lambda r: r.step.offered_pings_per_s) if kept else None

    def ratio(x: float | None) -> float | None:
        return round(x / baseline_pings_per_s, 3) if x is not None and baseline_pings_per_s else None

    max_sustained = round(top.pings_per_s, 1) if top else None
    return {
        "pings_per_s": round(best, 1), "max_sustained_pings_per_s": max_sustained,
        "max_sustained_offered_pings_per_s": round(top.step.offered_pings_per_s, 1) if top else None,
        "p99_ms": top.p99_ms if top else None, "p50_ms": top.p50_ms if top else None,
        "baseline_pings_per_s": round(baseline_pings_per_s, 1),
        "ratio_vs_baseline": ratio(best), "sustained_ratio_vs_baseline": ratio(max_sustained),
        "sustained_rule": SUSTAINED_RULE, "steps": [step_figures(r) for r in results],
    }
