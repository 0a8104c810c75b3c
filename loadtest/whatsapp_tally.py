"""``wakala loadtest replay --whatsapp``: the fake Graph API beside the engine, and the count.

The replay starts the fake (``loadtest.fake_graph.FakeGraph``) in its own event loop before
the engine, and gives the engine it starts the fake's address and credentials
(:func:`whatsapp_env`): a bearer token and phone-number id the fake insists on, so a message
the engine sent wrongly is refused and counted, not silently accepted. With ``receipts`` the
fake signs status webhooks (``sent``, ``delivered``) back to the engine's
``/v1/whatsapp/webhook`` with the app secret the engine is given, so the notifications move
on to ``delivered`` as they would with Meta.

An engine the replay did not start (``--engine``) cannot be pointed at the fake from here:
the replay refuses ``--whatsapp`` with it (start that engine with ``WAKALA_WHATSAPP_GRAPH_URL``
at ``python -m loadtest.fake_graph`` and read the fake's ``/_fake/counters`` instead).

At the end (:func:`settle`), the last events are still being planned and sent: the count
waits until no message of the replay's orders is pending or being sent, the fake owes no
status webhook, and both counts have held still for ``quiet_s`` (at most ``within_s``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from loadtest.fake_graph import FakeGraph
from loadtest.whatsapp_figures import IN_FLIGHT, webhooks_done
from schema.db import TenantDatabase

__all__ = ["COUNT_SQL", "WHATSAPP_NEEDS_OWN_ENGINE", "FakeRig", "count_notifications", "settle", "start_fake", "whatsapp_env"]

WEBHOOK_PATH = "/v1/whatsapp/webhook"
WHATSAPP_NEEDS_OWN_ENGINE = (
    "--whatsapp needs the engine the replay starts (it points that engine at its fake Graph API); "
    "with --engine, start the engine with WAKALA_WHATSAPP_GRAPH_URL at `python -m loadtest.fake_graph` "
    "and read the fake's /_fake/counters, or drop --engine")
COUNT_SQL = """
SELECT coalesce(template, type) AS template, status, count(*)::int AS n
FROM notifications WHERE order_id = ANY($1::uuid[]) GROUP BY 1, 2
"""


class FakeRig:
    """The fake and the secrets the engine is given to use it."""

    def __init__(self, fake: FakeGraph, token: str, phone_number_id: str, app_secret: str,
                 verify_token: str) -> None:
        self.fake, self.token, self.phone_number_id = fake, token, phone_number_id
        self.app_secret, self.verify_token = app_secret, verify_token


async def start_fake(engine_addr: str, *, receipts: bool = True) -> FakeRig:
    """A fake Graph API on a free local port; with ``receipts``, its status webhooks go to the
    engine at ``engine_addr`` (which need not be up yet: the first webhook comes after the
    first message)."""
    token, phone_id = secrets.token_urlsafe(24), str(100_000_000_000_000 + secrets.randbelow(10**14))
    app_secret, verify_token = secrets.token_hex(16), secrets.token_urlsafe(16)
    fake = FakeGraph(token=token, phone_number_id=phone_id,
                     callback_url=f"http://{engine_addr}{WEBHOOK_PATH}" if receipts else None,
                     app_secret=app_secret if receipts else None)
    await fake.start()
    return FakeRig(fake, token, phone_id, app_secret, verify_token)


def whatsapp_env(rig: FakeRig) -> dict[str, str]:
    """The engine's ``WAKALA_WHATSAPP_*`` settings that point it at the fake."""
    return {"WAKALA_WHATSAPP_GRAPH_URL": rig.fake.url, "WAKALA_WHATSAPP_PHONE_NUMBER_ID": rig.phone_number_id,
            "WAKALA_WHATSAPP_TOKEN": rig.token, "WAKALA_WHATSAPP_APP_SECRET": rig.app_secret,
            "WAKALA_WHATSAPP_VERIFY_TOKEN": rig.verify_token}


async def count_notifications(db: TenantDatabase, orders: Mapping[str, Collection[str]],
                              ) -> dict[str, dict[str, int]]:
    """{template: {status: n}} over the notifications of ``orders`` ({tenant id: order ids})."""
    counts: dict[str, dict[str, int]] = {}
    for tenant_id, order_ids in orders.items():
        if not order_ids:
            continue
        async with db.tenant_transaction(tenant_id, readonly=True) as tx:
            rows = await tx.fetch(COUNT_SQL, [uuid.UUID(str(o)) for o in order_ids])
        for row in rows:
            by_status = counts.setdefault(row["template"], {})
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
    return counts


async def settle(db: TenantDatabase, orders: Mapping[str, Collection[str]], fake: FakeGraph, *,
                 within_s: float = 30.0, quiet_s: float = 1.5, poll_s: float = 0.5,
                 stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Wait for the messages to settle (module doc); the raw counts for the report, with
    ``settled`` False if ``within_s`` ran out or ``stop`` was set first."""
    deadline = time.monotonic() + within_s
    last: tuple[Any, Any] | None = None
    still_since = time.monotonic()
    while True:
        database, counters = await count_notifications(db, orders), fake.counters()
        now = time.monotonic()
        if (database, counters) != last:
            last, still_since = (database, counters), now
        in_flight = any(by_status.get(s, 0) for by_status in database.values() for s in IN_FLIGHT)
        settled = not in_flight and webhooks_done(counters) and now - still_since >= quiet_s
        if settled or now >= deadline or (stop is not None and stop.is_set()):
            return {"database": database, "fake": counters, "settled": settled}
        await asyncio.sleep(poll_s)
