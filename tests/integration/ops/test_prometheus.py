"""The alerting rules and the dashboard in deploy/, checked by Prometheus's own tools, and a real
Prometheus scraping a running engine's operator port with the rules loaded.

``make test`` installs Debian's ``prometheus`` package (``promtool`` and the server); without
it these tests fail and say so rather than pass unchecked."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from loadtest.processes import free_port
from tests.integration.engine_helpers import running_engine

pytestmark = pytest.mark.timeout(120)
DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
PROMETHEUS_HINT = "install Debian's prometheus package (`make test` does: apt-get install prometheus)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed; {PROMETHEUS_HINT}"
    return path


def test_the_rules_load_and_each_alert_fires_on_its_own_series() -> None:
    promtool = _tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=DEPLOY / "prometheus",
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _defined_metrics() -> set[str]:
    """Every metric name the engine and the location worker define (string literals in their
    source), with the series names Prometheus derives from a histogram."""
    root = DEPLOY.parent
    names: set[str] = set()
    for package in ("dispatch", "streams"):
        for path in (root / package).rglob("*.py"):
            names |= set(re.findall(r'"(wakala_[a-z0-9_]+)"', path.read_text()))
    return names | {f"{n}_{suffix}" for n in names for suffix in ("bucket", "count", "sum")}


def _queried(expr: str) -> set[str]:
    return set(re.findall(r"\b(wakala_[a-z0-9_]+)", expr))


def test_the_dashboard_queries_only_metrics_the_engine_exposes() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "wakala-engine.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    known = ("wakala_pings_accepted_total", "wakala_pings_rejected_total", "wakala_gateway_produce_seconds",
             "wakala_api_request_seconds", "wakala_orders_placed_total", "wakala_payments_total",
             "wakala_delivery_transitions_total", "wakala_matching_seconds", "wakala_matching_candidates",
             "wakala_db_pool_connections", "wakala_location_lag_messages", "wakala_worker_lag_messages",
             "wakala_worker_redis_write_seconds", "wakala_worker_batch_pings", "wakala_worker_pings_total",
             "wakala_hub_clients", "wakala_hub_frames_sent_total", "wakala_hub_positions_coalesced_total",
             "wakala_hub_closed_total", "wakala_outbox_unpublished", "wakala_outbox_oldest_unpublished_seconds",
             "wakala_outbox_failures_total", "wakala_view_refresh_age_seconds", "wakala_backup_age_seconds",
             "wakala_backup_stale_tenants")
    assert exprs and all(any(name in e for name in known) for e in exprs)
    defined = _defined_metrics()
    unknown = {(e, name) for e in exprs for name in _queried(e) if name not in defined}
    assert not unknown, unknown
    assert {"wakala_location_lag_messages", "wakala_outbox_unpublished", "wakala_hub_frames_sent_total",
            "wakala_view_refresh_age_seconds", "wakala_backup_age_seconds"} <= defined


def test_the_alerts_query_only_metrics_the_engine_and_worker_define() -> None:
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
    exprs = re.findall(r"expr: (.*(?:\n {10,}.*)*)", rules)
    defined = _defined_metrics()
    assert len(exprs) >= 12
    assert not {name for e in exprs for name in _queried(e)} - defined
    for alert in ("WakalaLocationWorkerLagging", "WakalaLocationWorkerDown", "WakalaBackupStale",
                  "WakalaOutboxStuck", "WakalaViewsStale"):
        assert f"alert: {alert}\n" in rules


def _start(server: str, workdir: Path, port: int) -> subprocess.Popen:
    with open(workdir / "prometheus.log", "w") as log:
        return subprocess.Popen([server, f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=log)


async def test_a_real_prometheus_scrapes_the_engine_with_the_rules_loaded(platform, stream_settings, tmp_path) -> None:
    server = _tool("prometheus")
    metrics_port, web_port = free_port(), free_port()
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("127.0.0.1:9464",
                                                                                   f"127.0.0.1:{metrics_port}")
    (tmp_path / "prometheus.yml").write_text(config)
    async with running_engine(platform, stream_settings, metrics_port=metrics_port):
        proc = _start(server, tmp_path, web_port)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web_port}", timeout=5) as http:
                deadline = time.monotonic() + 60
                up = series = None   # series: any engine metric (the order counter exists from the start)
                while time.monotonic() < deadline:
                    try:
                        up = (await http.get("/api/v1/query", params={"query": 'up{job="wakala"}'})).json()
                        series = (await http.get("/api/v1/query", params={"query": "wakala_orders_placed_total"})).json()
                    except (httpx.TransportError, ValueError):   # not listening yet, or a plain-text 503 while it starts
                        pass
                    if up and up["data"]["result"] and up["data"]["result"][0]["value"][1] == "1" \
                            and series and series["data"]["result"]:
                        break
                    await asyncio.sleep(0.5)
                assert up and up["data"]["result"] and up["data"]["result"][0]["value"][1] == "1", \
                    (up, (tmp_path / "prometheus.log").read_text()[-2000:])
                assert series and series["data"]["result"], series
                rules = (await http.get("/api/v1/rules")).json()["data"]["groups"]
                loaded = {r["name"]: r["health"] for g in rules for r in g["rules"]}
                assert "WakalaDatabasePoolSaturated" in loaded and set(loaded.values()) <= {"ok", "unknown"}, loaded
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
