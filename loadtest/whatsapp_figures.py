"""The WhatsApp part of the city replay's report (``--whatsapp``): pure, no I/O.

Two witnesses count the messages, and the report shows both:

* the **database**: the tenants' ``notifications`` rows of the orders this replay placed,
  grouped by template and status (``pending``, ``sending``, ``sent``, ``delivered``, ``read``,
  ``failed``, ``suppressed``): what the engine planned and what became of each message;
* the **fake Graph API** (``loadtest.fake_graph``): what reached "Meta", by template and
  outcome (``accepted``, ``invalid``, ``http_<status>``, ``timeout``) and the status webhooks
  it sent back (``webhook_sent``, ``webhook_delivered``, ``..._failed``).

They must agree: for each template, the messages the fake accepted are the rows that reached
``sent`` or beyond (``delivered``, ``read``: receipts move a row up, never out).
``whatsapp_counts_match`` says whether they do. The fake counts everything the engine sent
while the replay ran; in tenants an earlier run left messages in, that can be more than this
run's orders made (the database side counts this run's orders only).

The raw input (``ReplayMetrics.whatsapp``) is ``{"database": {template: {status: n}},
"fake": <the fake's counters()>, "settled": bool}``; ``None`` when the replay ran without
WhatsApp, and every figure is then ``None`` (the summary's keys do not depend on the flags).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatch.core.console import format_table

__all__ = ["SENT_STATUSES", "STATUSES", "counts_match", "render_whatsapp", "webhooks_done", "whatsapp_figures"]

STATUSES = ("pending", "sending", "sent", "delivered", "read", "failed", "suppressed")
SENT_STATUSES = ("sent", "delivered", "read")          # reached Meta: the fake accepted it
IN_FLIGHT = ("pending", "sending")
FIGURE_NAMES = ("whatsapp_by_template_status", "whatsapp_fake_by_template", "whatsapp_planned",
                "whatsapp_sent", "whatsapp_delivered", "whatsapp_read", "whatsapp_failed",
                "whatsapp_suppressed", "whatsapp_pending", "whatsapp_fake_accepted",
                "whatsapp_webhooks", "whatsapp_counts_match", "whatsapp_settled")


def _total(by_template: Mapping[str, Mapping[str, int]], statuses: tuple[str, ...]) -> int:
    return sum(int(n) for counts in by_template.values() for status, n in counts.items() if status in statuses)


def counts_match(database: Mapping[str, Mapping[str, int]], fake: Mapping[str, Any]) -> bool:
    """Every template's accepted sends at the fake equal its rows sent or beyond."""
    fake_by_template = fake.get("by_template", {})
    templates = set(database) | set(fake_by_template)
    return all(int(fake_by_template.get(t, {}).get("accepted", 0))
               == sum(int(database.get(t, {}).get(s, 0)) for s in SENT_STATUSES) for t in templates)


def webhooks_done(fake: Mapping[str, Any], statuses: tuple[str, ...] = ("sent", "delivered")) -> bool:
    """The fake has sent every status webhook it owes: each accepted message's first status,
    and each next one after the previous went through (a failed webhook ends that chain)."""
    for outcomes in fake.get("by_template", {}).values():
        owed = int(outcomes.get("accepted", 0))
        for status in statuses:
            went = int(outcomes.get(f"webhook_{status}", 0))
            if went + int(outcomes.get(f"webhook_{status}_failed", 0)) < owed:
                return False
            owed = went
    return True


def whatsapp_figures(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The summary's ``whatsapp_*`` figures (all ``None`` without WhatsApp)."""
    if raw is None:
        return dict.fromkeys(FIGURE_NAMES)
    database = {t: {s: int(n) for s, n in sorted(c.items())} for t, c in sorted(raw["database"].items())}
    fake = raw["fake"]
    fake_by_template = {t: {o: int(n) for o, n in sorted(c.items())}
                        for t, c in sorted(fake.get("by_template", {}).items())}
    webhooks: dict[str, int] = {}
    for outcomes in fake_by_template.values():
        for outcome, n in outcomes.items():
            if outcome.startswith("webhook_"):
                webhooks[outcome.removeprefix("webhook_")] = webhooks.get(outcome.removeprefix("webhook_"), 0) + n
    return {
        "whatsapp_by_template_status": database,
        "whatsapp_fake_by_template": fake_by_template,
        "whatsapp_planned": _total(database, STATUSES),
        "whatsapp_sent": _total(database, SENT_STATUSES),
        "whatsapp_delivered": _total(database, ("delivered", "read")),
        "whatsapp_read": _total(database, ("read",)),
        "whatsapp_failed": _total(database, ("failed",)),
        "whatsapp_suppressed": _total(database, ("suppressed",)),
        "whatsapp_pending": _total(database, IN_FLIGHT),
        "whatsapp_fake_accepted": _total(fake_by_template, ("accepted",)),
        "whatsapp_webhooks": dict(sorted(webhooks.items())),
        "whatsapp_counts_match": counts_match(database, fake),
        "whatsapp_settled": bool(raw.get("settled", False)),
    }


def render_whatsapp(summary: Mapping[str, Any]) -> str | None:
    """The messages by template as a table (database statuses, then the fake's view); None
    without WhatsApp."""
    database = summary.get("whatsapp_by_template_status")
    if database is None:
        return None
    fake = summary["whatsapp_fake_by_template"]
    rows = []
    for template in sorted(set(database) | set(fake)):
        counts, seen = database.get(template, {}), fake.get(template, {})
        rows.append((template, f"{sum(counts.values()):,}", f"{sum(counts.get(s, 0) for s in SENT_STATUSES):,}",
                     f"{counts.get('delivered', 0) + counts.get('read', 0):,}", f"{counts.get('failed', 0):,}",
                     f"{counts.get('suppressed', 0):,}", f"{sum(counts.get(s, 0) for s in IN_FLIGHT):,}",
                     f"{seen.get('accepted', 0):,}",
                     f"{sum(n for o, n in seen.items() if o != 'accepted' and not o.startswith('webhook_')):,}"))
    rows.append(("all", f"{summary['whatsapp_planned']:,}", f"{summary['whatsapp_sent']:,}",
                 f"{summary['whatsapp_delivered']:,}", f"{summary['whatsapp_failed']:,}",
                 f"{summary['whatsapp_suppressed']:,}", f"{summary['whatsapp_pending']:,}",
                 f"{summary['whatsapp_fake_accepted']:,}", ""))
    verdict = ("database and fake agree" if summary["whatsapp_counts_match"]
               else "DATABASE AND FAKE DISAGREE")
    settled = "" if summary["whatsapp_settled"] else "; not settled: messages were still under way"
    webhooks = ", ".join(f"{k} {v:,}" for k, v in summary["whatsapp_webhooks"].items()) or "none"
    return (f"WhatsApp messages ({verdict}{settled}; status webhooks: {webhooks})\n"
            + format_table(["template", "planned", "sent", "delivered", "failed", "suppressed", "pending",
                            "fake accepted", "fake refused"], rows))
