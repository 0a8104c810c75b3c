"""The replay report's WhatsApp figures: two witnesses (the database, the fake Graph API), the
totals, whether they agree, when the fake is done with its webhooks, and the report around it.

No services: plain dicts shaped as ``count_notifications`` and ``FakeGraph.counters`` return them.
"""

from __future__ import annotations

import json

import pytest

from loadtest.city_report import ReplayMetrics, read_metrics, render, summarize, write_report
from loadtest.whatsapp_figures import (
    FIGURE_NAMES,
    counts_match,
    render_whatsapp,
    webhooks_done,
    whatsapp_figures,
)

DATABASE = {
    "order_confirmed": {"sent": 2, "delivered": 36, "read": 2},
    "vendor_new_order": {"delivered": 40},
    "driver_assigned": {"delivered": 37, "pending": 1},
    "order_delivered": {"delivered": 35, "failed": 1},
    "rate_and_return": {"suppressed": 35},
}
FAKE = {"total": 193, "by_template": {
    "order_confirmed": {"accepted": 40, "webhook_sent": 40, "webhook_delivered": 38},
    "vendor_new_order": {"accepted": 40, "webhook_sent": 40, "webhook_delivered": 40},
    "driver_assigned": {"accepted": 37, "webhook_sent": 37, "webhook_delivered": 37},
    "order_delivered": {"accepted": 35, "invalid": 1, "webhook_sent": 35, "webhook_delivered": 35},
}, "by_status": {}}


def test_without_whatsapp_every_figure_is_there_and_none():
    figures = whatsapp_figures(None)
    assert set(figures) == set(FIGURE_NAMES) and set(figures.values()) == {None}
    assert render_whatsapp(figures) is None


def test_the_totals_come_from_the_database_by_status():
    f = whatsapp_figures({"database": DATABASE, "fake": FAKE, "settled": True})
    assert f["whatsapp_by_template_status"]["order_confirmed"] == {"delivered": 36, "read": 2, "sent": 2}
    assert f["whatsapp_planned"] == 40 + 40 + 38 + 36 + 35
    assert f["whatsapp_sent"] == 40 + 40 + 37 + 35          # sent, delivered and read all reached Meta
    assert f["whatsapp_delivered"] == 36 + 2 + 40 + 37 + 35 and f["whatsapp_read"] == 2
    assert (f["whatsapp_failed"], f["whatsapp_suppressed"], f["whatsapp_pending"]) == (1, 35, 1)
    assert f["whatsapp_fake_accepted"] == 152
    assert f["whatsapp_webhooks"] == {"delivered": 150, "sent": 152}
    assert f["whatsapp_counts_match"] is True and f["whatsapp_settled"] is True
    json.dumps(f, allow_nan=False)   # JSON-plain


def test_a_message_the_fake_accepted_that_the_database_does_not_hold_as_sent_is_a_disagreement():
    assert counts_match(DATABASE, FAKE)
    one_more = {"by_template": {**FAKE["by_template"], "order_confirmed": {"accepted": 41}}}
    assert not counts_match(DATABASE, one_more)
    assert not counts_match({**DATABASE, "driver_arriving": {"sent": 1}}, FAKE)   # never reached the fake
    # suppressed, failed and pending rows never reach the fake: no disagreement
    assert counts_match({"rate_and_return": {"suppressed": 3, "failed": 1, "pending": 2}}, {"by_template": {}})


@pytest.mark.parametrize("outcomes, done", [
    ({"accepted": 3}, False),
    ({"accepted": 3, "webhook_sent": 3}, False),
    ({"accepted": 3, "webhook_sent": 3, "webhook_delivered": 2}, False),
    ({"accepted": 3, "webhook_sent": 3, "webhook_delivered": 3}, True),
    ({"accepted": 3, "webhook_sent": 2, "webhook_sent_failed": 1, "webhook_delivered": 2}, True),
    ({"accepted": 3, "webhook_sent": 2, "webhook_sent_failed": 1, "webhook_delivered": 1,
      "webhook_delivered_failed": 1}, True),
    ({"invalid": 4, "http_500": 2}, True),   # nothing accepted, nothing owed
])
def test_the_fake_is_done_when_it_owes_no_webhook(outcomes, done):
    assert webhooks_done({"by_template": {"order_confirmed": outcomes}}) is done


def test_the_report_shows_the_messages_and_keeps_them_in_report_json(tmp_path):
    metrics = ReplayMetrics(scenario="city.jsonl", seed=1, speed=20.0, started_at=1_760_000_000.0,
                            ended_at=1_760_000_100.0)
    metrics.counters.update({"pings_sent": 90, "pings_ws": 60, "pings_osmand": 30, "pings_refused": 2,
                             "pings_refused_osmand": 2, "osmand_drivers": 3, "refused:stale_timestamp": 2})
    metrics.whatsapp = {"database": DATABASE, "fake": FAKE, "settled": False}
    summary = summarize(metrics)
    assert summary["pings_by_channel"] == {"ws": 60, "osmand": 30} and summary["osmand_drivers"] == 3
    assert summary["pings_refused_by_channel"] == {"ws": 0, "osmand": 2}
    assert summary["refusal_reasons"] == {"stale_timestamp": 2}
    assert summary["whatsapp_sent"] == 152 and summary["whatsapp_settled"] is False
    text = render(summary)
    assert "WhatsApp messages (database and fake agree; not settled" in text
    assert "order_confirmed" in text and "rate_and_return" in text and "over OsmAnd (3 drivers)" in text
    write_report(metrics, tmp_path)
    assert summarize(read_metrics(tmp_path / "report.json")) == summary


def test_a_report_without_whatsapp_has_no_whatsapp_table():
    metrics = ReplayMetrics(scenario="c", seed=1, speed=10.0, started_at=1.0, ended_at=2.0)
    summary = summarize(metrics)
    assert summary["whatsapp_sent"] is None and summary["pings_by_channel"] == {"ws": 0, "osmand": 0}
    assert "WhatsApp" not in render(summary)
