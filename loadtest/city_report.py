"""The city replay's report: what happened, as tables in the terminal and files in a folder.

The replay (``loadtest/replay.py``) fills one :class:`ReplayMetrics` while it runs: counters
and plain lists of tuples, appended on the hot path and nothing else. Everything here runs
once, at the end (or on Ctrl-C, for a partial report):

- :func:`summarize` turns the metrics into figures (a JSON-plain dict, names carry units:
  ``_s``, ``_ms``, ``_messages``, ``_per_s``; ``_rate`` and ``_share`` are ratios in 0..1;
  ``None`` where there were no samples);
- :func:`render` lays the figures out as tables for the terminal;
- :func:`write_report` writes ``report.json`` (the figures and the raw series, column by
  column, so a machine can redo the plots: :func:`read_metrics`) and four PNG plots;
- :func:`print_report` does all three and prints the figures as the last line, one JSON
  object, like every ``wakala bench`` command.

Times: ``t_s`` is wall seconds since the replay started; durations of the simulated city
(time to assign, ETAs) are sim seconds; ``speed`` is sim seconds per wall second.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import h3
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from dispatch.core.console import format_table
from loadtest.report import percentiles_ms
from loadtest.whatsapp_figures import render_whatsapp, whatsapp_figures

ORDER_EVENTS = ("placed", "assigned", "picked_up", "delivered", "failed", "cancelled", "refused")
ETA_TOLERANCE_S = 120.0  # "within 2 min": what a customer still calls on time
REPORT_FILES = {
    "report": "report.json",
    "orders_over_time": "orders_over_time.png",
    "latency_over_time": "latency_over_time.png",
    "supply_demand_map": "supply_demand_map.png",
    "eta_error": "eta_error.png",
}
_COUNTER_FIGURES = (
    "orders_planned", "orders_placed", "orders_refused", "orders_accepted_by_vendor",
    "orders_ready", "orders_delivered", "orders_failed", "orders_failed_at_door", "orders_cancelled",
    "offers", "offers_accepted", "offers_declined", "offers_ignored",
    "pings_sent", "pings_refused", "pings_dropped_out", "osmand_drivers",
    "watchers", "tracking_frames", "tracking_positions", "api_errors",
    # how the apps rode out an engine that went away (loadtest.reconnect)
    "api_retries", "driver_reconnects", "watcher_reconnects",
)
# Column names of each series in report.json, in tuple order.
_SERIES_COLUMNS: dict[str, tuple[str, ...]] = {
    "orders": ("t_s", "order_key", "event"),
    "api_latency": ("t_s", "route", "ms"),
    "tracking_latency": ("t_s", "ms"),
    "time_to_assign": ("t_s", "sim_s"),
    "pickup_eta": ("t_s", "estimated_sim_s", "actual_sim_s"),
    "dropoff_eta": ("t_s", "estimated_sim_s", "actual_sim_s"),
    "broker_lag": ("t_s", "label", "messages"),
}
_DPI = 100


@dataclass
class ReplayMetrics:
    """Everything the replay measures; appended to while it runs, read once at the end."""

    scenario: str
    seed: int
    speed: float
    started_at: float
    ended_at: float | None = None
    interrupted: bool = False
    counters: Counter[str] = field(default_factory=Counter)
    orders: list[tuple[float, str, str]] = field(default_factory=list)
    api_latency: list[tuple[float, str, float]] = field(default_factory=list)
    tracking_latency: list[tuple[float, float]] = field(default_factory=list)
    time_to_assign: list[tuple[float, float]] = field(default_factory=list)
    pickup_eta: list[tuple[float, float, float]] = field(default_factory=list)
    dropoff_eta: list[tuple[float, float, float]] = field(default_factory=list)
    broker_lag: list[tuple[float, str, int]] = field(default_factory=list)
    demand_cells: Counter[str] = field(default_factory=Counter)
    supply_cells: Counter[str] = field(default_factory=Counter)
    # --whatsapp: {"database": {template: {status: n}}, "fake": counters, "settled"} (whatsapp_figures)
    whatsapp: dict[str, Any] | None = None

    def t(self) -> float:
        """Wall seconds since the replay started."""
        return time.time() - self.started_at

    def record_api(self, route: str, ms: float) -> None:
        self.api_latency.append((self.t(), route, ms))

    def record_order(self, order_key: str, event: str) -> None:
        """One order event (one of ``ORDER_EVENTS``) now."""
        self.orders.append((self.t(), order_key, event))

    def record_tracking(self, ms: float) -> None:
        self.tracking_latency.append((self.t(), ms))

    def record_time_to_assign(self, sim_s: float) -> None:
        self.time_to_assign.append((self.t(), sim_s))

    def record_pickup_eta(self, estimated_sim_s: float, actual_sim_s: float) -> None:
        self.pickup_eta.append((self.t(), estimated_sim_s, actual_sim_s))

    def record_dropoff_eta(self, estimated_sim_s: float, actual_sim_s: float) -> None:
        self.dropoff_eta.append((self.t(), estimated_sim_s, actual_sim_s))

    def record_broker_lag(self, label: str, messages: int) -> None:
        self.broker_lag.append((self.t(), label, messages))

    def finish(self, *, interrupted: bool = False) -> None:
        """Stamp the end of the replay (once); ``interrupted`` marks a partial report."""
        if self.ended_at is None:
            self.ended_at = time.time()
        self.interrupted = self.interrupted or interrupted

    def wall_s(self) -> float:
        """Wall seconds the replay ran (until now if it has not finished)."""
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at)


# --- figures -------------------------------------------------------------------------------

def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.fromiter(values, dtype=float)
    return arr[np.isfinite(arr)]


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator > 0 else None


def _percentiles(arr: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    if arr.size == 0:
        return [None] * len(qs)
    return [round(float(v), 2) for v in np.percentile(arr, qs)]


def _eta_figures(prefix: str, samples: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    errors = _finite(actual - estimated for _, estimated, actual in samples)
    if errors.size == 0:
        mae = bias = within = None
    else:
        mae = _round(np.abs(errors).mean())
        bias = _round(errors.mean())
        within = round(float((np.abs(errors) <= ETA_TOLERANCE_S).mean()), 4)
    return {f"{prefix}_eta_samples": int(errors.size),
            f"{prefix}_eta_mae_s": mae,
            # actual - estimated: positive means later than promised
            f"{prefix}_eta_bias_s": bias,
            f"{prefix}_eta_within_2min_share": within}


def summarize(metrics: ReplayMetrics) -> dict[str, Any]:
    """The replay's figures: JSON-plain, names with units, ``None`` where nothing was sampled."""
    c = metrics.counters
    figures: dict[str, Any] = {
        "scenario": metrics.scenario,
        "seed": metrics.seed,
        "speed": metrics.speed,
        "interrupted": metrics.interrupted,
    }
    wall_s = metrics.wall_s()
    figures["wall_s"] = round(wall_s, 2)
    figures["sim_s"] = round(wall_s * metrics.speed, 2)
    for name in _COUNTER_FIGURES:
        figures[name] = int(c[name])
    figures["refusal_reasons"] = {
        key.split(":", 1)[1]: int(n) for key, n in sorted(c.items()) if key.startswith("refused:")
    }
    # the driver app's websocket, or the OsmAnd route (--osmand-share)
    figures["pings_by_channel"] = {channel: int(c[f"pings_{channel}"]) for channel in ("ws", "osmand")}
    figures["pings_refused_by_channel"] = {channel: int(c[f"pings_refused_{channel}"])
                                           for channel in ("ws", "osmand")}
    figures.update(whatsapp_figures(metrics.whatsapp))

    assigned = len({key for _, key, event in metrics.orders if event == "assigned"})
    figures["orders_assigned"] = assigned
    ended = c["orders_delivered"] + c["orders_failed"] + c["orders_cancelled"]
    figures["orders_open"] = max(0, c["orders_placed"] - ended)
    figures["assignment_rate"] = _ratio(assigned, c["orders_ready"])
    figures["delivered_rate"] = _ratio(c["orders_delivered"], c["orders_placed"])
    figures["offer_accept_rate"] = _ratio(c["offers_accepted"], c["offers"])

    tta = _finite(s for _, s in metrics.time_to_assign)
    figures["time_to_assign_samples"] = int(tta.size)
    (figures["time_to_assign_p50_s"], figures["time_to_assign_p90_s"],
     figures["time_to_assign_p99_s"]) = _percentiles(tta, (50, 90, 99))
    figures["time_to_assign_max_s"] = _round(tta.max()) if tta.size else None

    figures.update(_eta_figures("pickup", metrics.pickup_eta))
    figures.update(_eta_figures("dropoff", metrics.dropoff_eta))

    figures["pings_per_s"] = round(c["pings_sent"] / wall_s, 2) if wall_s > 0 else None

    api = _finite(ms for _, _, ms in metrics.api_latency)
    figures["api_requests"] = int(api.size)
    for name, value in percentiles_ms(api).items():
        figures[f"api_{name}"] = value
    by_route: dict[str, list[float]] = {}
    for _, route, ms in metrics.api_latency:
        by_route.setdefault(route, []).append(ms)
    routes: dict[str, dict[str, Any]] = {}
    for route in sorted(by_route):
        samples = _finite(by_route[route])
        routes[route] = {"count": len(by_route[route]), **percentiles_ms(samples)}
    figures["api_routes"] = routes

    tracking = _finite(ms for _, ms in metrics.tracking_latency)
    figures["tracking_samples"] = int(tracking.size)
    for name, value in percentiles_ms(tracking).items():
        figures[f"tracking_{name}"] = value

    lag = _finite(n for _, _, n in metrics.broker_lag)
    figures["broker_lag_max_messages"] = int(lag.max()) if lag.size else None
    figures["broker_lag_p99_messages"] = _percentiles(lag, (99,))[0]
    lag_by_label: dict[str, int] = {}
    for _, label, n in metrics.broker_lag:
        if math.isfinite(n):
            lag_by_label[label] = max(lag_by_label.get(label, 0), int(n))
    figures["broker_lag_max_by_label_messages"] = dict(sorted(lag_by_label.items()))

    figures["cells_with_demand"] = len(metrics.demand_cells)
    figures["cells_with_supply"] = len(metrics.supply_cells)
    return figures


# --- terminal ------------------------------------------------------------------------------

def _show(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.4f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:,.2f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _pair(a: object, b: object, unit: str) -> str:
    return f"{_show(a)} / {_show(b)} {unit}".rstrip()


def render(summary: dict[str, Any]) -> str:
    """The figures of :func:`summarize` as tables a person reads in a terminal or a CI log."""
    s = summary
    title = (f"City replay: {s['scenario']} (seed {s['seed']}, speed {s['speed']:g}x): "
             f"{_show(s['wall_s'], 's')} wall, {_show(s['sim_s'], 's')} simulated")
    if s["interrupted"]:
        title += "\nINTERRUPTED: partial report of what happened until Ctrl-C"

    refusals = ", ".join(f"{reason} {n}" for reason, n in s["refusal_reasons"].items())
    orders = [
        ("planned", _show(s["orders_planned"])),
        ("placed", _show(s["orders_placed"])),
        ("refused", _show(s["orders_refused"]) + (f" ({refusals})" if refusals else "")),
        ("accepted by vendor", _show(s["orders_accepted_by_vendor"])),
        ("ready", _show(s["orders_ready"])),
        ("assigned (assignment rate of ready)",
         f"{_show(s['orders_assigned'])} ({_share(s['assignment_rate'])})"),
        ("delivered (of placed)",
         f"{_show(s['orders_delivered'])} ({_share(s['delivered_rate'])})"),
        ("failed", _show(s["orders_failed"])),
        ("cancelled", _show(s["orders_cancelled"])),
        ("still open", _show(s["orders_open"])),
        ("time to assign p50 / p90 / p99 (sim)",
         f"{_show(s['time_to_assign_p50_s'])} / {_show(s['time_to_assign_p90_s'])} / "
         f"{_show(s['time_to_assign_p99_s'])} s"),
    ]
    eta = [
        (f"{leg} ETA", _show(s[f"{leg}_eta_samples"]), _show(s[f"{leg}_eta_mae_s"], "s"),
         _show(s[f"{leg}_eta_bias_s"], "s"), _share(s[f"{leg}_eta_within_2min_share"]))
        for leg in ("pickup", "dropoff")
    ]
    drivers = [
        ("offers", _show(s["offers"])),
        ("accepted / declined / ignored",
         f"{_show(s['offers_accepted'])} / {_show(s['offers_declined'])} / "
         f"{_show(s['offers_ignored'])} (accept rate {_share(s['offer_accept_rate'])})"),
        ("pings sent (per wall s)", f"{_show(s['pings_sent'])} ({_show(s['pings_per_s'])}/s)"),
        ("pings sent / refused over websocket",
         _pair(s["pings_by_channel"]["ws"], s["pings_refused_by_channel"]["ws"], "")),
        (f"pings sent / refused over OsmAnd ({_show(s['osmand_drivers'])} drivers)",
         _pair(s["pings_by_channel"]["osmand"], s["pings_refused_by_channel"]["osmand"], "")),
        ("pings refused / not sent (dropout)",
         _pair(s["pings_refused"], s["pings_dropped_out"], "")),
        ("watchers / tracking frames / positions",
         f"{_show(s['watchers'])} / {_show(s['tracking_frames'])} / "
         f"{_show(s['tracking_positions'])}"),
        ("H3 cells with demand / supply", _pair(s["cells_with_demand"], s["cells_with_supply"], "")),
    ]
    latency = [
        ("API (all routes)", _show(s["api_requests"]), _show(s["api_p50_ms"]),
         _show(s["api_p90_ms"]), _show(s["api_p99_ms"]), _show(s["api_max_ms"])),
        *((f"  {route}", _show(r["count"]), _show(r["p50_ms"]), _show(r["p90_ms"]),
           _show(r["p99_ms"]), _show(r["max_ms"])) for route, r in s["api_routes"].items()),
        ("ping accepted -> watcher frame", _show(s["tracking_samples"]),
         _show(s["tracking_p50_ms"]), _show(s["tracking_p90_ms"]), _show(s["tracking_p99_ms"]),
         _show(s["tracking_max_ms"])),
    ]
    lag = [("all", _show(s["broker_lag_p99_messages"]), _show(s["broker_lag_max_messages"])),
           *((f"  {label}", "", _show(n))
             for label, n in s["broker_lag_max_by_label_messages"].items())]
    whatsapp = render_whatsapp(s)
    return "\n\n".join([
        title,
        "Orders\n" + format_table(["measure", "value"], orders),
        "ETA error (actual - estimated, sim s)\n" + format_table(
            ["leg", "samples", "mean abs error", "bias", "within 2 min"], eta),
        "Drivers, offers, tracking\n" + format_table(["measure", "value"], drivers),
        "Latency (ms)\n" + format_table(["what", "count", "p50", "p90", "p99", "max"], latency),
        "Broker lag (messages behind)\n" + format_table(["topic / consumer", "p99", "max"], lag),
        *([whatsapp] if whatsapp else []),
        f"API errors: {_show(s['api_errors'])}; retries: {_show(s['api_retries'])}; reconnects: "
        f"drivers {_show(s['driver_reconnects'])}, watchers {_show(s['watcher_reconnects'])}",
    ])


# --- files ---------------------------------------------------------------------------------

def _columns(name: str, rows: Sequence[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """A series as one JSON list per column; floats rounded and non-finite ones as null."""
    names = _SERIES_COLUMNS[name]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    out: dict[str, list[Any]] = {}
    for column, values in zip(names, columns, strict=True):
        if column in ("order_key", "event", "route", "label"):
            out[column] = [str(v) for v in values]
        elif column == "messages":
            out[column] = [int(v) if math.isfinite(v) else None for v in values]
        else:
            digits = 3 if column == "t_s" else 2
            arr = np.round(np.asarray(values, dtype=float), digits)
            out[column] = [v if math.isfinite(v) else None for v in arr.tolist()]
    return out


def _report_document(metrics: ReplayMetrics, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "run": {"scenario": metrics.scenario, "seed": metrics.seed, "speed": metrics.speed,
                "started_at": metrics.started_at, "ended_at": metrics.ended_at,
                "interrupted": metrics.interrupted},
        "counters": dict(sorted(metrics.counters.items())),
        "series": {name: _columns(name, getattr(metrics, name)) for name in _SERIES_COLUMNS},
        "demand_cells": dict(metrics.demand_cells.most_common()),
        "supply_cells": dict(metrics.supply_cells.most_common()),
        "whatsapp": metrics.whatsapp,
    }


def read_metrics(path: str | Path) -> ReplayMetrics:
    """The metrics back from a ``report.json``, e.g. to redo or restyle the plots."""
    document = json.loads(Path(path).read_text())
    run = document["run"]
    metrics = ReplayMetrics(scenario=run["scenario"], seed=run["seed"], speed=run["speed"],
                            started_at=run["started_at"], ended_at=run["ended_at"],
                            interrupted=run["interrupted"],
                            counters=Counter(document["counters"]),
                            demand_cells=Counter(document["demand_cells"]),
                            supply_cells=Counter(document["supply_cells"]),
                            whatsapp=document.get("whatsapp"))
    for name, columns in _SERIES_COLUMNS.items():
        series = document["series"][name]
        rows = zip(*(series[column] for column in columns), strict=True)
        getattr(metrics, name).extend(
            tuple(math.nan if v is None else v for v in row) for row in rows)
    return metrics


def write_report(metrics: ReplayMetrics, folder: str | Path) -> dict[str, Path]:
    """Write report.json and the PNG plots into ``folder`` (created); returns {name: path}."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / filename for name, filename in REPORT_FILES.items()}
    document = _report_document(metrics, summarize(metrics))
    paths["report"].write_text(json.dumps(document, allow_nan=False, separators=(",", ":")))
    _save(_orders_figure(metrics), paths["orders_over_time"])
    _save(_latency_figure(metrics), paths["latency_over_time"])
    _save(_map_figure(metrics), paths["supply_demand_map"])
    _save(_eta_figure(metrics), paths["eta_error"])
    return paths


def print_report(metrics: ReplayMetrics, folder: str | Path, out: TextIO | None = None,
                 ) -> dict[str, Any]:
    """Write the folder, print the tables, the files, and last the figures as one JSON line."""
    stream = out if out is not None else sys.stdout
    summary = summarize(metrics)
    paths = write_report(metrics, folder)
    print(render(summary), file=stream)
    print(f"\nReport written to {Path(folder)}/: "
          + ", ".join(p.name for p in paths.values()), file=stream)
    print(json.dumps(summary, sort_keys=True), file=stream)
    return summary


# --- plots ---------------------------------------------------------------------------------
# Figure + FigureCanvasAgg directly, not pyplot: no global backend or figure registry to
# leak, no display needed, and nothing to close.

def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=_DPI)


def _no_data(ax: Axes, what: str = "no data") -> None:
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center",
            color="0.45", fontsize=14)
    ax.set_xticks([])
    ax.set_yticks([])


def _sim_minutes_axis(ax: Axes, speed: float) -> None:
    if speed > 0:
        top = ax.secondary_xaxis("top", functions=(lambda t: t * speed / 60.0,
                                                   lambda m: m * 60.0 / speed))
        top.set_xlabel("sim minutes")


def _orders_figure(metrics: ReplayMetrics) -> Figure:
    fig = _figure(10, 5)
    ax = fig.add_subplot()
    ax.set_title(f"Orders over time ({metrics.scenario}, {metrics.speed:g}x)")
    # Orders that reached each state, at the first time they did (a re-offer is one order).
    first: dict[tuple[str, str], float] = {}
    for t_s, key, event in metrics.orders:
        if math.isfinite(t_s) and t_s < first.get((event, key), math.inf):
            first[(event, key)] = t_s
    times: dict[str, list[float]] = {}
    for (event, _), t_s in first.items():
        times.setdefault(event, []).append(t_s)
    shown = [e for e in ("placed", "assigned", "delivered", "failed", "cancelled", "refused")
             if times.get(e)]
    if not shown:
        _no_data(ax)
        return fig
    end_s = max(metrics.wall_s(), max(first.values()))
    for event in shown:
        t = np.sort(np.asarray(times[event], dtype=float))
        ax.step(np.concatenate(([0.0], t, [end_s])),
                np.concatenate(([0], np.arange(1, t.size + 1), [t.size])), where="post",
                label=f"{event} ({t.size:,})")
    ax.set_xlabel("wall seconds")
    ax.set_ylabel("orders (cumulative)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _sim_minutes_axis(ax, metrics.speed)
    return fig


def _bucket_seconds(span_s: float, max_buckets: int = 60) -> float:
    for bucket in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span_s / bucket <= max_buckets:
            return float(bucket)
    return math.ceil(span_s / max_buckets)


def _bucketed_percentiles(t: np.ndarray, values: np.ndarray, bucket_s: float,
                          qs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Bucket centres (wall s) and the percentiles ``qs`` of each non-empty bucket."""
    index = np.floor(t / bucket_s).astype(np.int64)
    order = np.argsort(index, kind="stable")
    index, values = index[order], values[order]
    buckets, starts = np.unique(index, return_index=True)
    groups = np.split(values, starts[1:])
    return (buckets + 0.5) * bucket_s, np.array([np.percentile(g, qs) for g in groups])


def _series_arrays(rows: Iterable[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.array(list(rows), dtype=float).reshape(-1, 2)
    arr = arr[np.isfinite(arr).all(axis=1)]
    return arr[:, 0], arr[:, 1]


def _latency_panel(ax: Axes, title: str, t: np.ndarray, ms: np.ndarray, bucket_s: float) -> None:
    ax.set_title(title)
    if t.size == 0:
        _no_data(ax)
        return
    centres, pct = _bucketed_percentiles(t, ms, bucket_s, (50, 99))
    ax.plot(centres, pct[:, 0], marker=".", label="p50")
    ax.plot(centres, pct[:, 1], marker=".", label="p99")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")


def _latency_figure(metrics: ReplayMetrics) -> Figure:
    api_t, api_ms = _series_arrays((t, ms) for t, _, ms in metrics.api_latency)
    trk_t, trk_ms = _series_arrays(metrics.tracking_latency)
    lag_t = _finite(t for t, _, _ in metrics.broker_lag)
    span = float(max([metrics.wall_s(), *(a.max() for a in (api_t, trk_t, lag_t) if a.size)]))
    bucket_s = _bucket_seconds(max(span, 1.0))
    fig = _figure(10, 9)
    # Not sharex: a "no data" panel drops its ticks, which would drop the others' too.
    api_ax, trk_ax, lag_ax = fig.subplots(3, 1)
    _latency_panel(api_ax, f"API latency per {bucket_s:g} s (all routes)", api_t, api_ms,
                   bucket_s)
    _latency_panel(trk_ax, f"Tracking latency per {bucket_s:g} s (ping accepted -> watcher)",
                   trk_t, trk_ms, bucket_s)
    lag_ax.set_title("Broker lag")
    by_label: dict[str, list[tuple[float, float]]] = {}
    for t, label, n in metrics.broker_lag:
        by_label.setdefault(label, []).append((t, n))
    if by_label:
        # The eight worst labels only: a legend of every partition says nothing.
        worst = sorted(by_label, key=lambda k: -max(n for _, n in by_label[k]))[:8]
        for label in sorted(worst):
            t, n = _series_arrays(sorted(by_label[label]))
            lag_ax.plot(t, n, label=label)
        lag_ax.set_ylabel("messages behind")
        lag_ax.set_ylim(bottom=0)
        lag_ax.grid(alpha=0.3)
        lag_ax.legend(loc="upper left", fontsize="small")
    else:
        _no_data(lag_ax)
    for ax, has_data in ((api_ax, api_t.size), (trk_ax, trk_t.size), (lag_ax, by_label)):
        if has_data:
            ax.set_xlim(0, span)
            ax.set_xlabel("wall seconds")
    if api_t.size:
        _sim_minutes_axis(api_ax, metrics.speed)
    return fig


def _hexagons(cells: Counter[str]) -> tuple[list[list[tuple[float, float]]], list[int]]:
    """(lng, lat) rings of the valid cells and their counts."""
    polygons, counts = [], []
    for cell, n in cells.items():
        if n > 0 and h3.is_valid_cell(cell):
            polygons.append([(lng, lat) for lat, lng in h3.cell_to_boundary(cell)])
            counts.append(int(n))
    return polygons, counts


def _map_figure(metrics: ReplayMetrics) -> Figure:
    fig = _figure(13, 6)
    panels = fig.subplots(1, 2)
    layers = [
        (panels[0], "Demand: orders by dropoff cell (H3 res 8)", metrics.demand_cells,
         "orders", "OrRd"),
        (panels[1], "Supply: driver pings by cell (H3 res 8)", metrics.supply_cells,
         "driver pings", "Blues"),
    ]
    drawn = [(ax, title, *_hexagons(cells), label, cmap) for ax, title, cells, label, cmap in layers]
    vertices = np.array([v for _, _, polys, *_ in drawn for poly in polys for v in poly])
    for ax, title, polygons, counts, label, cmap in drawn:
        ax.set_title(title)
        if not polygons:
            _no_data(ax)
            continue
        hexes = PolyCollection(polygons, array=np.asarray(counts, dtype=float), cmap=cmap,
                               norm=Normalize(vmin=0, vmax=max(counts)),
                               edgecolors="0.35", linewidths=0.3)
        ax.add_collection(hexes)
        fig.colorbar(hexes, ax=ax, label=label, shrink=0.85)
        # One extent for both panels, so the same cell is at the same place in each.
        (lng_min, lat_min), (lng_max, lat_max) = vertices.min(axis=0), vertices.max(axis=0)
        pad_lng, pad_lat = 0.03 * (lng_max - lng_min) + 1e-3, 0.03 * (lat_max - lat_min) + 1e-3
        ax.set_xlim(lng_min - pad_lng, lng_max + pad_lng)
        ax.set_ylim(lat_min - pad_lat, lat_max + pad_lat)
        # Equal metres per degree on both axes at this latitude.
        ax.set_aspect(1.0 / max(math.cos(math.radians((lat_min + lat_max) / 2)), 0.05))
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    return fig


def _eta_figure(metrics: ReplayMetrics) -> Figure:
    fig = _figure(12, 5)
    for ax, leg, samples in zip(fig.subplots(1, 2), ("Pickup", "Dropoff"),
                                (metrics.pickup_eta, metrics.dropoff_eta), strict=True):
        errors = _finite(actual - estimated for _, estimated, actual in samples)
        ax.set_title(f"{leg} ETA error ({errors.size:,} legs)")
        if errors.size == 0:
            _no_data(ax)
            continue
        ax.hist(errors, bins=min(60, max(10, errors.size // 20)), color="tab:blue", alpha=0.8)
        for x in (-ETA_TOLERANCE_S, ETA_TOLERANCE_S):
            ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
        within = float((np.abs(errors) <= ETA_TOLERANCE_S).mean())
        ax.text(0.98, 0.95, f"mean abs {np.abs(errors).mean():.0f} s\n"
                f"within 2 min {within * 100:.0f}%", transform=ax.transAxes, ha="right",
                va="top")
        ax.set_xlabel("actual - estimated (sim s; > 0 is late)")
        ax.set_ylabel("legs")
    return fig
