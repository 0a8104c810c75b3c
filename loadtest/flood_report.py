"""What `wakala bench flood` reports: its figures (the JSON line) and the table before it.

Targets are the issue's and are checked, never assumed: RSS growth over the token flood at
most 50 MB (judged only when at least 100,000 tokens were sent; fewer say nothing about it),
and the legitimate API p99 during the flood within 2x of the baseline measured first in the
same run.
"""

from __future__ import annotations

import os
from collections import Counter

from loadtest.flood_clients import REFUSAL_KINDS
from loadtest.report import emit, percentiles_ms

__all__ = ["FLOOD_PHASES", "P99_RATIO_TARGET", "RSS_GROWTH_TARGET_MB", "figures_of", "print_figures"]

RSS_GROWTH_TARGET_MB = 50.0
RSS_TARGET_TOKENS = 100_000
P99_RATIO_TARGET = 2.0
FLOOD_PHASES = ("tokens", "bodies", "headers", "slow")


def _p99(samples: list[float]) -> float | None:
    return percentiles_ms(samples)["p99_ms"]


def figures_of(bench, legit, rss_peaks: dict[str, float], counts: dict[str, Counter[str]], marks: dict[str, float],
               token_sent: int, token_s: float, poured: int, bodies_s: float, slow: dict) -> dict:
    """The JSON line: every figure of the run, units in the names."""
    flood_api = [ms for p in FLOOD_PHASES for ms in legit.api_ms[p]]
    flood_ws = [ms for p in FLOOD_PHASES for ms in legit.ws_ms[p]]
    base_p99, flood_p99 = _p99(legit.api_ms["baseline"]), _p99(flood_api)
    ratio = round(flood_p99 / base_p99, 2) if base_p99 and flood_p99 is not None else None
    growth = round(marks["rss_after_tokens"] - marks["rss_before_tokens"], 1)
    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c)
    not_refused = ("accepted", "held_open")
    refusals = {k: total.get(k, 0) for k in REFUSAL_KINDS} | {
        k: v for k, v in total.items() if k not in REFUSAL_KINDS and k not in not_refused}
    return {
        "bench": "flood", "tokens": bench.tokens, "tokens_sent": token_sent, "concurrency": bench.concurrency,
        "source_ips": min(bench.source_ips, 250), "workers": bench.workers,
        "auth_failure_limit": bench.auth_failure_limit, "body_mb": bench.body_mb,
        "token_flood_s": round(token_s, 1),
        "flood_requests_per_s": round(token_sent / token_s, 1) if token_s else None,
        "token_flood_cpu_cores": {"engine": round(marks["engine_cores"], 2),
                                  "load_generator": round(marks["generator_cores"], 2)},
        "bodies_mb_written": round(poured / 1024 / 1024, 1), "bodies_s": round(bodies_s, 1),
        "bodies_count": sum(counts["bodies"].values()),
        "rss_before_mb": marks["rss_before_tokens"], "rss_after_token_flood_mb": marks["rss_after_tokens"],
        "rss_growth_mb": growth, "rss_end_mb": marks["rss_end"],
        "rss_peak_mb": max([marks["rss_hwm"], *rss_peaks.values()]),
        "rss_peak_by_phase_mb": {p: rss_peaks.get(p) for p in ("baseline", *FLOOD_PHASES)},
        "rss_growth_target_mb": RSS_GROWTH_TARGET_MB,
        "rss_target_met": growth <= RSS_GROWTH_TARGET_MB if token_sent >= RSS_TARGET_TOKENS else None,
        "api_p99_baseline_ms": base_p99, "api_p99_flood_ms": flood_p99,
        "api_p99_by_phase_ms": {p: _p99(legit.api_ms[p]) for p in FLOOD_PHASES},
        "api_p99_by_call_ms": {call: {"baseline": _p99(legit.call_ms["baseline", call]),
                                      "flood": _p99([ms for p in FLOOD_PHASES for ms in legit.call_ms[p, call]])}
                               for call in sorted({c for _, c in legit.call_ms})},
        "api_calls_baseline": len(legit.api_ms["baseline"]), "api_calls_flood": len(flood_api),
        "ratio_p99_flood_vs_baseline": ratio, "ratio_target": P99_RATIO_TARGET,
        "p99_target_met": ratio <= P99_RATIO_TARGET if ratio is not None else None,
        "ws_ack_p99_baseline_ms": _p99(legit.ws_ms["baseline"]), "ws_ack_p99_flood_ms": _p99(flood_ws),
        "legit_errors": dict(legit.errors), "cpus": os.cpu_count(),
        "loadavg_1m_start_end": [marks["loadavg_start"], marks["loadavg_end"]],
        "refusals": refusals, "accepted": total.get("accepted", 0), "held_open_at_end": total.get("held_open", 0),
        "outcomes_by_phase": {p: dict(c) for p, c in counts.items()},
        **slow,
    }


def _met(flag: bool | None) -> str:
    return "n/a (fewer tokens than the target's 100,000)" if flag is None else ("met" if flag else "NOT met")


def print_figures(bench, f: dict, by_route: dict[str, Counter[str]], profile: tuple[int, list, list],
                 note: str) -> None:
    rows = [
        ("token flood", f"{f['tokens_sent']:,} tokens in {f['token_flood_s']} s = {f['flood_requests_per_s']:,} req/s "
                        f"({f['concurrency']} connections from {f['source_ips']} addresses)"),
        ("CPU cores used during the token flood", f"engine {f['token_flood_cpu_cores']['engine']}, this load "
                                                  f"generator (with the legit workload) "
                                                  f"{f['token_flood_cpu_cores']['load_generator']}"),
        ("engine RSS before / after token flood", f"{f['rss_before_mb']} / {f['rss_after_token_flood_mb']} MB"),
        ("RSS growth over the token flood", f"{f['rss_growth_mb']} MB (target <= {RSS_GROWTH_TARGET_MB:g} MB over "
                                            f"100,000 tokens: {_met(f['rss_target_met'])})"),
        ("engine RSS peak (any phase) / at the end", f"{f['rss_peak_mb']} / {f['rss_end_mb']} MB"),
        *((f"  RSS peak during {p}", f"{v} MB") for p, v in f["rss_peak_by_phase_mb"].items()),
        ("oversized bodies", f"{f['bodies_count']} requests in {f['bodies_s']} s; {f['bodies_mb_written']} MB written "
                              "before the refusals (most into kernel socket buffers)"),
        ("legit API p99: baseline / during the flood",
         f"{f['api_p99_baseline_ms']} / {f['api_p99_flood_ms']} ms ({f['api_calls_baseline']} / "
         f"{f['api_calls_flood']} calls)"),
        ("ratio flood / baseline", f"{f['ratio_p99_flood_vs_baseline']} (target <= {P99_RATIO_TARGET:g}: "
                                   f"{_met(f['p99_target_met'])})"),
        *((f"  legit API p99 during {p}", f"{v} ms") for p, v in f["api_p99_by_phase_ms"].items()),
        *((f"  legit {call} p99: baseline / flood", f"{v['baseline']} / {v['flood']} ms")
          for call, v in f["api_p99_by_call_ms"].items()),
        ("legit driver ping -> ack p99: baseline / flood",
         f"{f['ws_ack_p99_baseline_ms']} / {f['ws_ack_p99_flood_ms']} ms"),
        ("legit errors", f["legit_errors"] or "none"),
        ("machine load average (1 min) at the start / end", f"{f['loadavg_1m_start_end'][0]} / "
                                                            f"{f['loadavg_1m_start_end'][1]} on {f['cpus']} cores"),
        ("refusals by kind (all phases)", f["refusals"]),
        ("flood requests accepted / slow clients still open at the end", f"{f['accepted']} / {f['held_open_at_end']}"),
        ("slowloris / silent websocket: median s to close",
         f"{f['slowloris_median_s_to_close']} / {f['silent_ws_median_s_to_close']} (None: none closed in "
         f"{bench.slow_s:g} s)"),
        ("never-reading drivers: frames each got in (50/s offered)", f["stuck_driver_frames_sent"]),
        ("engine open descriptors, peak by phase", f.get("engine_open_fds_peak_by_phase")),
        *((f"  {route}", dict(c)) for route, c in by_route.items()),
    ]
    if bench.profile:
        rows.append(("engine profile during the token flood", f"{profile[0]} samples (self % / total %) {note}"))
        rows += [(f"  {frame[:90]}", f"{own} / {total}") for frame, own, total in profile[1]]
        rows.append(("  the engine's own code (deepest project frame of each sample)", "share % / total %"))
        rows += [(f"  {frame[:90]}", f"{own} / {total}") for frame, own, total in profile[2]]
    emit(f"wakala bench flood: {bench.tokens:,} random tokens, {bench.body_mb:g} MB bodies, "
         f"{bench.slow_clients} slow clients, against one engine while customers and drivers go on", rows, f)
