"""The REST API: tenant admins, vendors, customers, drivers and the payment gateway.

One router module per audience: ``admin``, ``support`` (admins' and support agents' logged
reads of people's data), ``subjects`` (data subject requests), ``consents``, ``vendors``, ``catalogue`` (any user's catalogue
reads), ``customers``, ``drivers`` (shift and delivery events; ping ingest is the gateway's)
and ``payments`` (the signed callback); ``own_orders`` holds what vendors and customers share,
``common`` the request plumbing.

Every request but the payment callback and the driver routes carries a user's bearer token
(``dispatch.identity.users``); the token names the tenant, so every query runs on that
tenant's shard, in its schema, under RLS: another tenant's object is simply not there (404,
the same answer as a missing one). Roles decide the routes (403 otherwise); a vendor acts
only for their vendor, a customer only for themselves (another vendor's or customer's order:
404).

Bodies are read raw (size limit, JSON) and validated by the domain's own parse functions, so
an error names the field: ``{"error": {"status", "reason", "field", "message"}}``. Each caller
has a sliding-window rate limit (the data design document's rate limits;
``dispatch.web.ratelimit``): 429 with ``Retry-After`` beyond it.

``router`` includes the audiences in the order their paths appear in the OpenAPI document
(drivers first, right after the gateway's ``/v1/drivers/locations``); no two audiences share
a path, so the order decides the document, not the routing.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from dispatch.api import (
    admin,
    catalogue,
    consents,
    customers,
    drivers,
    payments,
    subjects,
    support,
    vendors,
)
from dispatch.api.common import install_handlers
from dispatch.api.payments import SIGNATURE_HEADER, sign

__all__ = ["SIGNATURE_HEADER", "install", "router", "sign"]

router = APIRouter()
for _audience in (drivers, admin, support, subjects, consents, vendors, catalogue, customers, payments):
    router.include_router(_audience.router)


def install(app: FastAPI) -> None:
    """Add the routes and the error handlers to the engine's app."""
    app.include_router(router)
    install_handlers(app)
