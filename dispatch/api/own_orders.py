"""A party's own orders: the reads, the cancel and the tracking links (make one, revoke them)
that vendors and customers share.

The same handler serves both audiences; the role decides whose orders are in reach (a
vendor's: ``vendor_id``, a customer's: ``customer_id``) and the domain query filters on it,
so another vendor's or customer's order answers 404, exactly like one that does not exist.
The cancel and the revoke take an ``Idempotency-Key`` (``dispatch.api.idempotency.once``); a
tracking link is a secret shown once, so its key is only validated.

Revoking ends every tracking link of the order, whoever made it (``dispatch.tracking.links.
revoke_order_links``): the customer or the vendor who sent a link to the wrong number makes a
new one afterwards. It is idempotent by nature (a second revoke answers ``revoked: 0``), and
each revoke is logged with the user, the order and the count: links carry no audit column, and
the order's own history is about the order, not about who watches it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request

from dispatch.api.common import (
    actor,
    body,
    call,
    caller,
    check_limit,
    customer_of,
    path_id,
    reason_of,
    vendor_of,
)
from dispatch.api.idempotency import key_of, once
from dispatch.commerce.orders import reads as order_reads
from dispatch.commerce.orders import transitions as order_transitions
from dispatch.identity.users import AuthUser
from dispatch.tracking import links as tracking_links

__all__ = ["party_cancel", "party_order", "party_orders", "revoke_tracking_links", "tracking_link_for"]

log = logging.getLogger(__name__)


def _party(user: AuthUser, role: str) -> dict[str, str]:
    return {"vendor_id": vendor_of(user)} if role == "vendor" else {"customer_id": customer_of(user)}


async def party_orders(request: Request, role: str, status: str | None, limit: int) -> dict:
    """The caller's orders, newest first: a vendor's, or a customer's own."""
    user = await caller(request, role)
    check_limit(limit)
    party = _party(user, role)
    return {"orders": await call(order_reads.list_orders(request.app.state.db, user.tenant_id, status=status,
                                                     limit=limit, **party))}


async def party_order(request: Request, role: str, order_id: str) -> dict:
    """One order of the caller (404 for anyone else's)."""
    user = await caller(request, role)
    state = request.app.state
    party = _party(user, role)
    return await call(order_reads.get_order(state.db, user.tenant_id, path_id(order_id, "order_id"),
                                       cache=state.cache, **party))


async def party_cancel(request: Request, role: str, order_id: str) -> Any:
    """Cancel one of the caller's orders (a vendor's, or a customer's own)."""
    user = await caller(request, role)
    state = request.app.state
    party = _party(user, role)

    async def act() -> dict:
        return await call(order_transitions.cancel_order(
            state.db, user.tenant_id, path_id(order_id, "order_id"), actor=actor(user),
            reason=reason_of(await body(request)), cache=state.cache, **party))

    return await once(request, user.tenant_id, user.user_id, act)


async def tracking_link_for(request: Request, user: AuthUser, order_id: str, **owner: str) -> dict:
    """A new tracking link to the order's delivery, for its ``customer_id`` or ``vendor_id``."""
    key_of(request)   # validated only: the link is a secret shown once, never stored
    state = request.app.state
    issued = await call(tracking_links.issue_link(state.db, user.tenant_id, path_id(order_id, "order_id"),
                                                  grace_s=state.engine.tracking_link_grace_s, **owner))
    return {"token": issued.token, "url": issued.url, "delivery_id": issued.delivery_id}


async def revoke_tracking_links(request: Request, role: str, order_id: str) -> Any:
    """Revoke every tracking link of one of the caller's orders (a vendor's, or a customer's
    own); their open tracking pages are closed at once. 404 for anyone else's order."""
    user = await caller(request, role)
    state = request.app.state
    party = _party(user, role)

    async def act() -> dict:
        oid = path_id(order_id, "order_id")
        revoked = await call(tracking_links.revoke_order_links(state.db, state.redis, user.tenant_id, oid, **party))
        log.info("tracking links of order %s revoked by %s user %s: %d live", oid, role, actor(user), revoked)
        return {"order_id": oid, "revoked": revoked}

    return await once(request, user.tenant_id, user.user_id, act)
