"""The sender: due notifications out to the WhatsApp Cloud API, outcomes recorded.

Every engine that dispatches runs one. A pass over a tenant claims up to ``batch`` due rows
(``store.claim_due``: ``FOR UPDATE SKIP LOCKED``, marked ``sending`` and committed before
anything is posted, so two senders never post one row), then for each:

1. no usable phone number: ``suppressed`` (``no_phone``);
2. a marketing template: the person's consent is asked now (``consent_store.may_message``),
   not when the event happened, so a withdrawal in between is honoured: ``suppressed``
   (``no_consent``) without it. Transactional templates always go;
3. a template with a tracking link: a fresh link to the order's delivery is made for the
   customer (``tracking.links.issue_link``) and put in the message as
   ``<public_url>/t/<token>``; a delivery whose tracking already ended is ``suppressed``
   (``tracking_ended``). The token is never stored: ``whatsapp_messages.content`` keeps the
   URL with the token redacted (a link is a bearer secret, shown once). A retry makes another
   link (the one in a message that may have gone stays valid);
4. the POST (``graph_client``), paced to ``send_per_s`` per process, and its outcome:
   ``sent`` (with the ``whatsapp_messages`` row, ``message_id`` = the wamid, in the same
   transaction), a retry (``pending`` again at ``now + max(backoff, Retry-After)``), or
   ``failed`` (a permanent error, or ``max_attempts`` used up).

A 429 also pauses this sender's posts for its Retry-After (or the backoff): the limit is
the phone number's, not the message's.

Where a message can go twice, and why it is allowed there. Meta's send call has no
idempotency key, so a post whose answer never came (a timeout) or whose answer was never
recorded (the process killed between the answer and the commit, a lease that ran out) cannot
be told apart from one that was never received. Both are retried, because for a customer a
lost "your order failed" is worse than a repeated one, and the channel's contract retries
timeouts. The window is kept small: the outcome is one statement right after the answer,
the lease (``lease_s``) is longer than a whole batch can take, and on shutdown the posts in
flight are given ``STOP_GRACE_S`` to finish and be recorded before the task ends. Nothing
else sends twice: a redelivered event plans nothing (dedupe key), and a claimed row belongs
to one sender.

Tenants are passed over as the outbox relay does: a tenant the notifier just planned for is
woken at once (``wake``), a retry wakes its tenant when it comes due, and every ``sweep_s``
all active tenants are passed (rows of a sender that died, other processes' plans). One
tenant's failure is logged and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from dispatch.core.errors import Refusal
from dispatch.core.metrics import WHATSAPP_SENDS
from dispatch.identity.consent_store import may_message
from dispatch.messaging.graph import FAILED, RETRY, SENT, Outcome, backoff, build_template_request
from dispatch.messaging.graph_client import GraphClient
from dispatch.messaging.store import (
    ClaimedNotification,
    claim_due,
    record_failed,
    record_retry,
    record_sent,
    record_suppressed,
)
from dispatch.messaging.templates import (
    MARKETING,
    TEMPLATES,
    TRACKING_URL,
    render_params,
    to_whatsapp_number,
)
from dispatch.tracking.links import issue_link
from schema.db import TenantDatabase
from schema.errors import InvalidTenantId, TenantNotActive, UnknownTenant

__all__ = ["Sender"]

log = logging.getLogger(__name__)

STOP_GRACE_S = 3.0
REDACTED = "[redacted]"


class Sender:
    """Sends due notifications until cancelled (``run``); ``send_tenant`` is one pass."""

    def __init__(self, db: TenantDatabase, client: GraphClient, *, graph_url: str, phone_number_id: str,
                 token: str, public_url: str, link_grace_s: float, send_per_s: float = 20,
                 max_attempts: int = 6, retry_base_s: float = 2.0, timeout_s: float = 10,
                 sweep_s: float = 5.0, batch: int = 50, concurrency: int = 8,
                 rand: Callable[[], float] = random.random) -> None:
        self.db, self.client = db, client
        self.graph_url, self.phone_number_id, self.token = graph_url, phone_number_id, token
        self.public_url = public_url.rstrip("/")
        self.link_grace_s = link_grace_s
        self.interval_s = 1.0 / send_per_s
        self.max_attempts, self.retry_base_s = max_attempts, retry_base_s
        self.sweep_s, self.batch = sweep_s, batch
        # A claimed row is this sender's for the lease: longer than a batch at the pace plus
        # a whole request, so a live sender's row is never taken by another.
        self.lease_s = 2 * timeout_s + batch * self.interval_s + 30
        self.rand = rand
        self._slots = asyncio.Semaphore(concurrency)
        self._next_post = 0.0           # monotonic time the next post may start (pace, 429 pause)
        self._pace_lock = asyncio.Lock()
        self._woken: set[str] = set()
        self._wake = asyncio.Event()
        self._due: dict[str, float] = {}   # tenant -> monotonic time a retry of it comes due
        self._inflight: set[asyncio.Task] = set()
        self.outcomes: dict[str, int] = {}   # outcome -> count (tests, logs)

    # -- scheduling ------------------------------------------------------------------------------

    def wake(self, tenant_id: str) -> None:
        """Pass over this tenant now (the notifier planned for it)."""
        self._woken.add(str(tenant_id))
        self._wake.set()

    def _retry_at(self, tenant_id: str, delay_s: float) -> None:
        at = time.monotonic() + delay_s
        self._due[tenant_id] = min(self._due.get(tenant_id, at), at)

    async def run(self) -> None:
        next_sweep = 0.0
        try:
            while True:
                now = time.monotonic()
                tenants: set[str] = set(self._woken)
                self._woken.clear()
                self._wake.clear()
                for tenant, at in list(self._due.items()):
                    if at <= now:
                        tenants.add(tenant)
                        del self._due[tenant]
                if now >= next_sweep:
                    next_sweep = now + self.sweep_s
                    try:
                        tenants |= {str(t) for t in await self.db.active_tenant_ids()}
                    except Exception as exc:   # noqa: BLE001 - the control plane away: next sweep
                        log.warning("whatsapp sender: cannot list tenants (%s: %s)", exc.__class__.__name__, exc)
                for tenant in tenants:
                    try:
                        while await self.send_tenant(tenant) >= self.batch:
                            pass
                    except Exception as exc:   # noqa: BLE001 - one tenant's fault is not the others'
                        log.error("whatsapp sender: tenant %s failed (%s: %s); the others go on",
                                  tenant, exc.__class__.__name__, exc)
                wait = next_sweep - time.monotonic()
                if self._due:
                    wait = min(wait, min(self._due.values()) - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.01, wait))
        finally:
            await self._finish_inflight()

    async def _finish_inflight(self) -> None:
        """On the way out: give the posts in flight a moment to be answered and recorded."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=STOP_GRACE_S)

    async def send_tenant(self, tenant_id: str) -> int:
        """Claim one batch of the tenant's due notifications and send them; how many were claimed."""
        claimed = await claim_due(self.db, tenant_id, self.batch, self.lease_s)
        if claimed:
            tasks = [asyncio.ensure_future(self._one(tenant_id, n)) for n in claimed]
            self._inflight.update(tasks)
            try:
                # shielded: a cancelled pass still lets its posts be answered and recorded
                await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            finally:
                self._inflight.difference_update(t for t in tasks if t.done())
        return len(claimed)

    # -- one message -------------------------------------------------------------------------------

    def _count(self, template: str, outcome: str) -> None:
        WHATSAPP_SENDS.labels(template, outcome).inc()
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def _one(self, tenant_id: str, n: ClaimedNotification) -> None:
        try:
            await self._send(tenant_id, n)
        except (UnknownTenant, InvalidTenantId, TenantNotActive):
            raise
        except Exception as exc:   # noqa: BLE001 - left 'sending': due again when its lease ends
            log.error("whatsapp sender: notification %s of tenant %s failed (%s: %s); due again in %.0f s",
                      n.id, tenant_id, exc.__class__.__name__, exc, self.lease_s)

    async def _send(self, tenant_id: str, n: ClaimedNotification) -> None:
        template = TEMPLATES.get(n.template)
        if template is None:
            await record_failed(self.db, tenant_id, n, f"unknown template {n.template!r}")
            self._count(n.template, FAILED)
            return
        to = to_whatsapp_number(n.phone)
        if to is None:
            await self._suppress(tenant_id, n, "no_phone")
            return
        if n.kind == MARKETING:
            try:
                allowed = await may_message(self.db, tenant_id, n.recipient_type, n.recipient_id, MARKETING)
            except Refusal:   # the person is gone from the tenant
                allowed = False
            if not allowed:
                await self._suppress(tenant_id, n, "no_consent")
                return
        params = dict(n.params)
        shown = dict(n.params)
        if TRACKING_URL in template.params:
            try:
                link = await issue_link(self.db, tenant_id, n.order_id, grace_s=self.link_grace_s,
                                        customer_id=n.recipient_id)
            except Refusal as exc:
                await self._suppress(tenant_id, n, exc.reason)
                return
            params[TRACKING_URL] = f"{self.public_url}{link.url}"
            shown[TRACKING_URL] = f"{self.public_url}/t/{REDACTED}"
        try:
            values = render_params(template, params)
        except KeyError as exc:
            await record_failed(self.db, tenant_id, n, f"parameter {exc.args[0]} missing")
            self._count(n.template, FAILED)
            return
        request = build_template_request(self.graph_url, self.phone_number_id, self.token, to=to,
                                         template=template.name, language=n.language, params=values,
                                         tenant_id=str(tenant_id))
        await self._pace()
        async with self._slots:
            outcome = await self.client.send(request)
        await self._record(tenant_id, n, outcome, to, render_params(template, shown))

    async def _suppress(self, tenant_id: str, n: ClaimedNotification, reason: str) -> None:
        await record_suppressed(self.db, tenant_id, n, reason)
        self._count(n.template, "suppressed")

    async def _pace(self) -> None:
        """Wait for this post's slot: ``send_per_s`` per process, and none during a 429 pause."""
        async with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_post)
            self._next_post = start + self.interval_s
        if start > now:
            await asyncio.sleep(start - now)

    async def _record(self, tenant_id: str, n: ClaimedNotification, outcome: Outcome, to: str,
                      shown: list[str]) -> None:
        if outcome.kind == SENT:
            assert outcome.wamid is not None
            content = {"template": n.template, "language": n.language, "params": shown}
            await record_sent(self.db, tenant_id, n, wamid=outcome.wamid, from_id=self.phone_number_id,
                              to=to, content=content)
            self._count(n.template, SENT)
            return
        error = outcome.error or "unknown"
        if outcome.kind == RETRY and n.attempts < self.max_attempts:
            delay = backoff(n.attempts, self.retry_base_s, self.rand())
            if outcome.retry_after_s is not None:
                delay = max(delay, outcome.retry_after_s)
            if outcome.status == 429:
                self._next_post = max(self._next_post, time.monotonic() + delay)
            await record_retry(self.db, tenant_id, n, delay, error)
            self._retry_at(str(tenant_id), delay)
            self._count(n.template, RETRY)
            log.info("whatsapp sender: %s attempt %d: %s; again in %.1f s", n.template, n.attempts, error, delay)
            return
        if outcome.kind == RETRY:
            error = f"gave up after {n.attempts} attempts: {error}"
        await record_failed(self.db, tenant_id, n, error[:500])
        self._count(n.template, FAILED)
        log.warning("whatsapp sender: %s to a %s failed: %s", n.template, n.recipient_type, error)
