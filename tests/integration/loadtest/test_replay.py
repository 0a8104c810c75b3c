"""The city replay end to end: a small scenario through a real engine, its report, Ctrl-C.

Against the real services (PostgreSQL/PostGIS, Redis, the broker); the replay starts its own
engine (``wakala engine all``) as a user's ``wakala loadtest replay`` would. The end-to-end
run also sends three drivers in ten through the OsmAnd route (``--osmand-share 0.3``) and
turns WhatsApp on against the fake Graph API (``--whatsapp``): one replay proves all three,
as it is the suite's longest test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from dispatch.cli import build_parser, main
from loadtest import city
from loadtest.replay import (
    WHATSAPP_NEEDS_OWN_ENGINE,
    ReplayOptions,
    engine_env,
    parse_speed,
    run_replay,
)
from loadtest.whatsapp_figures import SENT_STATUSES
from schema.db import TenantDatabase
from schema.tenants import list_tenants

SMALL = city.CityConfig(seed=11, start_s=12 * 3600 + 1800, duration_s=600, tenants=2, vendors=4, drivers=10,
                        customers=60, orders_per_day=1.0)


def small_city(orders: float = 10.0) -> city.CityConfig:
    return replace(SMALL, orders_per_day=orders / city.expected_orders(SMALL))


@pytest.mark.parametrize("text", ["", "x", "0x", "-2x", "1e9", "nan", "10xx", "inf"])
def test_hostile_speeds_are_refused(text):
    with pytest.raises(ValueError, match="speed"):
        parse_speed(text)


def test_speeds_read_as_users_write_them():
    assert [parse_speed(t) for t in ("10x", "10", " 2.5X ", "0.5x")] == [10.0, 10.0, 2.5, 0.5]


def test_an_engine_started_by_the_replay_runs_at_the_replays_clock():
    env = engine_env(10.0, 8123, "s3cret", base={"PATH": "/bin"})
    assert env["WAKALA_SIM_TIME_SCALE"] == "10" and env["WAKALA_HTTP_PORT"] == "8123"
    assert env["WAKALA_MAX_SPEED_KMH"] == "2000" and env["WAKALA_OFFER_TIMEOUT_S"] == "2"
    assert env["WAKALA_PAYMENT_WEBHOOK_SECRET"] == "s3cret" and env["PATH"] == "/bin"
    # real time: production limits
    assert engine_env(1.0, 1, "s", base={})["WAKALA_MAX_SPEED_KMH"] == "250"
    assert "WAKALA_CONTROL_DSN" not in env


@pytest.mark.parametrize("argv", [
    ["loadtest", "generate", "--duration", "0m"],
    ["loadtest", "generate", "--duration", "25h"],
    ["loadtest", "generate", "--duration", "soon"],
    ["loadtest", "generate", "--start", "25:00"],
    ["loadtest", "generate", "--start", "noon"],
    ["loadtest", "replay", "x.jsonl", "--speed", "fast"],
    ["loadtest", "replay", "x.jsonl", "--speed", "1000x"],
    ["loadtest", "replay", "x.jsonl", "--osmand-share", "nan"],
    ["loadtest", "replay", "x.jsonl", "--osmand-share", "1.5"],
    ["loadtest", "replay", "x.jsonl", "--osmand-share", "-0.1"],
    ["loadtest", "replay", "x.jsonl", "--osmand-share", "30%"],
])
def test_hostile_command_lines_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "error" in err
    if "--osmand-share" in argv:
        assert "argument --osmand-share: --osmand-share must be a number between 0 and 1" in err


def test_whatsapp_against_an_engine_the_replay_did_not_start_is_refused_saying_why(tmp_path, capsys):
    scenario = tmp_path / "c.jsonl"
    city.write(city.generate(small_city(3)), scenario)
    assert main(["loadtest", "replay", str(scenario), "--engine", "127.0.0.1:1", "--whatsapp"]) == 2
    err = capsys.readouterr().err
    assert WHATSAPP_NEEDS_OWN_ENGINE in err and "WAKALA_WHATSAPP_GRAPH_URL" in err


def test_an_engine_started_by_the_replay_uses_the_replays_streams_and_whatsapp_settings(stream_settings):
    env = engine_env(10.0, 1, "s", base={}, streams=stream_settings,
                     extra={"WAKALA_WHATSAPP_GRAPH_URL": "http://127.0.0.1:9/v21.0"})
    assert env["WAKALA_APP_ID"] == stream_settings.app_id
    assert env["WAKALA_ORDER_EVENTS_TOPIC"] == stream_settings.order_events_topic
    assert env["WAKALA_WHATSAPP_GRAPH_URL"] == "http://127.0.0.1:9/v21.0"


@pytest.mark.parametrize("flag, value", [("--drivers", "-1"), ("--tenants", "0"), ("--vendors", "-3"),
                                         ("--orders-per-day", "nan"), ("--customers", "0")])
def test_a_city_the_generator_cannot_make_is_refused_by_name(flag, value, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    assert main(["loadtest", "generate", flag, value, "-o", str(out)]) == 2
    assert "wakala loadtest" in capsys.readouterr().err and not out.exists()


def test_generate_writes_the_scenario_a_replay_reads(tmp_path, capsys):
    out = tmp_path / "city.jsonl"
    assert main(["loadtest", "generate", "--seed", "5", "--duration", "30m", "--drivers", "20", "--vendors", "6",
                 "--customers", "100", "-o", str(out)]) == 0
    scenario = city.read(out)
    assert scenario.header["seed"] == 5 and scenario.header["duration_s"] == 1800
    assert len(scenario.drivers) == 20 and len(scenario.vendors) == 6
    assert f"wakala loadtest replay {out}" in capsys.readouterr().out


def test_replaying_a_missing_or_corrupt_scenario_says_what_to_do(tmp_path, capsys):
    assert main(["loadtest", "replay", str(tmp_path / "nope.jsonl")]) == 2
    assert "wakala loadtest generate" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "scenario", "version": 99}\n')
    assert main(["loadtest", "replay", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err


async def test_a_small_city_replays_end_to_end_and_writes_its_report(platform, stream_settings, tmp_path, capsys):
    scenario_path = tmp_path / "small.jsonl"
    scenario = city.generate(small_city())
    for vendor in scenario.vendors:   # quick kitchens: the orders end within the drain, not minutes after
        vendor["prep_s"] = min(vendor["prep_s"], 120)
        vendor["accept_delay_s"] = min(vendor["accept_delay_s"], 20)
    city.write(scenario, scenario_path)
    started = time.time()
    report = tmp_path / "report"
    replays = []
    summary = await run_replay(ReplayOptions(scenario=scenario_path, speed=20.0, report_dir=report, drain_s=90,
                                             progress=False, max_wall_s=300, postgres=platform,
                                             streams=stream_settings, osmand_share=0.3, whatsapp=True),
                               observe=replays.append)
    printed = capsys.readouterr().out.strip().splitlines()

    planned = len(scenario.orders)
    assert planned >= 5
    assert summary["orders_planned"] == planned and summary["orders_placed"] == planned
    assert summary["orders_refused"] == 0 and summary["api_errors"] == 0
    assert summary["orders_delivered"] >= 1 and summary["interrupted"] is False
    assert summary["pings_sent"] > 0 and summary["offers"] >= summary["orders_delivered"]
    # three drivers in ten on the OsmAnd route, the others on the websocket; the engine took their fixes
    channels = summary["pings_by_channel"]
    assert summary["osmand_drivers"] == 3 and channels["osmand"] > 0 and channels["ws"] > 0
    assert channels["ws"] + channels["osmand"] == summary["pings_sent"]
    assert summary["pings_refused_by_channel"]["osmand"] <= 0.05 * channels["osmand"], summary["refusal_reasons"]
    assert len(replays[0].city.trackers) == 3
    assert all(key.startswith("wkg_") for key in replays[0].city.trackers.values())
    # what the replay counted is what the shards hold
    slugs = {t["slug"] for t in scenario.tenants}
    delivered, templates_of, stored = 0, {}, {}
    async with TenantDatabase(platform) as db:
        for tenant in (t for t in await list_tenants(platform) if t.slug in slugs):
            async with db.tenant_transaction(tenant.id, readonly=True) as tx:
                orders = [r["order_id"] for r in await tx.fetch(
                    "SELECT order_id FROM deliveries WHERE status = 'delivered' AND delivered_at >= to_timestamp($1)",
                    started)]
                delivered += len(orders)
                for row in await tx.fetch("SELECT order_id, template, status FROM notifications "
                                          "WHERE order_id = ANY($1::uuid[])", orders):
                    templates_of.setdefault(row["order_id"], {})[row["template"]] = row["status"]
                for row in await tx.fetch("SELECT template, status, count(*)::int AS n FROM notifications "
                                          "WHERE created_at >= to_timestamp($1) GROUP BY 1, 2", started):
                    by_status = stored.setdefault(row["template"], {})
                    by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
    assert delivered == summary["orders_delivered"]
    # WhatsApp: each delivered order's customer was told at each step, and the shop of each order
    assert len(templates_of) == delivered
    for order_id, templates in templates_of.items():
        for template in ("order_confirmed", "vendor_new_order", "driver_assigned", "order_delivered"):
            assert templates.get(template) in SENT_STATUSES, (order_id, templates)
    # the report's counts are the database's, and they equal what reached the fake Graph API
    assert summary["whatsapp_by_template_status"] == stored
    assert summary["whatsapp_settled"] is True and summary["whatsapp_counts_match"] is True
    fake = summary["whatsapp_fake_by_template"]
    for template, by_status in stored.items():
        assert fake.get(template, {}).get("accepted", 0) == sum(by_status.get(s, 0) for s in SENT_STATUSES)
    assert summary["whatsapp_sent"] == summary["whatsapp_fake_accepted"] >= 4 * delivered
    assert summary["whatsapp_failed"] == 0 and summary["whatsapp_pending"] == 0
    assert summary["whatsapp_delivered"] >= 1   # the fake's signed receipts reached the engine's webhook
    # the report: files, JSON for machines, and the last printed line is the figures
    names = sorted(p.name for p in report.iterdir())
    assert names == ["eta_error.png", "latency_over_time.png", "orders_over_time.png", "report.json",
                     "supply_demand_map.png"]
    assert all((report / n).stat().st_size > 5_000 for n in names if n.endswith(".png"))
    assert json.loads((report / "report.json").read_text())["summary"] == summary
    assert json.loads(printed[-1]) == summary
    assert any(line.startswith("Vendor order feed of ") and "/vendor#wku_" in line for line in printed)
    assert any(line.startswith("WhatsApp messages (database and fake agree") for line in printed)


def test_ctrl_c_stops_the_replay_cleanly_with_a_partial_report(platform, tmp_path):
    scenario_path = tmp_path / "long.jsonl"
    city.write(city.generate(replace(small_city(40), duration_s=1800)), scenario_path)
    report = tmp_path / "partial"
    proc = subprocess.Popen([sys.executable, "-m", "dispatch.cli", "loadtest", "replay", str(scenario_path),
                             "--speed", "5x", "--no-progress", "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", WAKALA_CONTROL_DSN=platform.control.url(),
                                     WAKALA_SHARD_DATABASES=",".join(platform.shard_databases)))
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Replaying ") or time.monotonic() > deadline:
                break
        time.sleep(8)   # orders under way
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += out.splitlines()
    assert any(line.startswith("Replaying ") for line in lines), "".join(lines[-30:])
    assert "Traceback" not in "".join(lines), "".join(lines[-40:])
    summary = json.loads(lines[-1])
    assert summary["interrupted"] is True and summary["orders_placed"] >= 1
    assert json.loads((report / "report.json").read_text())["summary"]["interrupted"] is True
    assert summary["wall_s"] < 60   # it stopped at Ctrl-C, not at the end of the scenario (360 s)


def test_unique_scenario_identities_never_collide_across_runs():
    from loadtest.provision import unique_phone

    phones = {unique_phone() for _ in range(2000)}
    assert len(phones) == 2000 and all(p.startswith("+276") and len(p) == 12 for p in phones)
