"""People of a tenant who use the REST API: tenant admins, vendors and customers.

A user authenticates with a bearer token ``wku_<tenant uuid hex>_<secret>`` (the shape of the
drivers' ``wkd_`` tokens, see ``dispatch.identity.auth``): stored as a SHA-256 in ``auth_tokens``
(``token_type = 'access'``), expiring, revocable by id. What a user may do comes from their
roles (``roles`` / ``user_roles``): ``tenant_admin``, ``vendor`` (acts for the vendor whose
``vendors.user_id`` is theirs) and ``customer`` (the ``customers`` row whose ``user_id`` is
theirs). A request for another tenant's objects cannot even be expressed: the token names the
tenant, and every query runs in that tenant's schema under RLS.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from dispatch.commerce.orders.input import PAYMENT_METHODS
from dispatch.core.errors import (
    DUPLICATE,
    INVALID_VALUE,
    MISSING_FIELD,
    UNKNOWN_FIELD,
    UNKNOWN_TOKEN,
    UNKNOWN_USER,
    UNKNOWN_VENDOR,
    WRONG_TYPE,
    Refusal,
)
from dispatch.core.ids import InvalidId, optional_uuid, parse_uuid
from dispatch.identity.auth import (
    IssuedToken,
    TokenAuthenticator,
    TokenRejected,
    hash_token,
    token_pattern,
)
from schema.db import TenantDatabase
from schema.errors import WakalaError

__all__ = ["ROLES", "AuthUser", "InvalidUser", "UserAuthenticator", "create_user", "create_vendor",
           "issue_user_token", "parse_user_token"]

log = logging.getLogger(__name__)

# ``support``: the tenant's support agents: they read orders, customers, drivers and consents
# (each read logged with its purpose, ``dispatch.identity.access``) and change nothing.
ROLES = ("tenant_admin", "support", "vendor", "customer")
USER_TOKEN_RE = token_pattern("wku")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_NAME_MAX = 255

ISSUE_SQL = """
INSERT INTO auth_tokens (user_id, token_hash, token_type, expires_at)
SELECT u.id, $2, 'access', now() + make_interval(secs => $3)
FROM users u WHERE u.id = $1 AND u.status = 'active'
RETURNING id, expires_at
"""
VERIFY_SQL = """
SELECT t.id, t.expires_at, t.revoked_at, u.id AS user_id, u.status,
       coalesce(array_agg(r.name) FILTER (WHERE r.name IS NOT NULL), '{}') AS roles,
       (SELECT v.id FROM vendors v WHERE v.user_id = u.id ORDER BY v.created_at LIMIT 1) AS vendor_id,
       (SELECT c.id FROM customers c WHERE c.user_id = u.id ORDER BY c.created_at LIMIT 1) AS customer_id
FROM auth_tokens t
JOIN users u ON u.id = t.user_id
LEFT JOIN user_roles ur ON ur.user_id = u.id
LEFT JOIN roles r ON r.id = ur.role_id
WHERE t.token_hash = $1 AND t.token_type = 'access'
GROUP BY t.id, u.id
"""
ROLE_SQL = """
WITH made AS (
    INSERT INTO roles (name, description, is_system) VALUES ($1, $2, true)
    ON CONFLICT (name) DO NOTHING RETURNING id
)
SELECT id FROM made UNION ALL SELECT id FROM roles WHERE name = $1 LIMIT 1
"""
ROLE_ID_SQL = "SELECT id FROM roles WHERE name = $1"
GRANT_SQL = """
INSERT INTO user_roles (user_id, role_id, granted_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
"""
CREATE_USER_SQL = "INSERT INTO users (phone_number, name, role) VALUES ($1, $2, $3) RETURNING id"
# The control plane's directory of who belongs to which tenant (inbound WhatsApp is routed by it).
DIRECTORY_SQL = """
INSERT INTO tenant_users (tenant_id, user_id, phone_number, role) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET phone_number = EXCLUDED.phone_number, role = EXCLUDED.role
"""
CREATE_CUSTOMER_SQL = "INSERT INTO customers (user_id, first_name) VALUES ($1, $2) RETURNING id"
LINK_VENDOR_SQL = "UPDATE vendors SET user_id = $2, updated_at = now() WHERE id = $1 AND user_id IS NULL RETURNING id"
CREATE_VENDOR_SQL = """
INSERT INTO vendors (business_name, business_type, address, location, delivery_radius, minimum_order_value,
                     payment_methods)
VALUES ($1, $2, $3::jsonb, ST_SetSRID(ST_MakePoint($5, $4), 4326)::geography, $6, $7, $8::jsonb)
RETURNING id
"""

_ROLE_TEXT = {"tenant_admin": "administers the tenant: users, vendors, all orders",
              "support": "reads orders, customers, drivers and consents to help people (each read logged); changes nothing",
              "vendor": "manages one vendor's catalogue, stock and orders",
              "customer": "browses, orders, pays and tracks"}


class InvalidUser(Refusal):
    """A user or vendor body refused (422 unless said otherwise); nothing was written.

    A ``Refusal`` whose text names the field (``phone: must be an E.164 number ...``), as
    the CLI prints it; the API carries ``field`` and ``message`` apart."""

    def __init__(self, field: str, message: str, status: int = 422, reason: str = INVALID_VALUE) -> None:
        super().__init__(status, reason, message, field)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class AuthUser:
    tenant_id: str
    user_id: str
    roles: frozenset[str]
    vendor_id: str | None
    customer_id: str | None
    token_id: str
    token_hash: str
    expires_at: float


def parse_user_token(token: object) -> uuid.UUID:
    if not isinstance(token, str) or not (match := USER_TOKEN_RE.match(token)):
        raise TokenRejected(UNKNOWN_TOKEN, "the token is not a Wakala user token")
    return uuid.UUID(match.group(1))


class UserAuthenticator(TokenAuthenticator[AuthUser]):
    """User tokens (``wku_...``) of the REST API."""

    verify_sql = VERIFY_SQL
    status_column = "status"

    def parse(self, token: object) -> uuid.UUID:
        return parse_user_token(token)

    def principal(self, tenant_id: uuid.UUID, token_hash: str, row) -> AuthUser:
        return AuthUser(
            str(tenant_id), str(row["user_id"]), frozenset(row["roles"]),
            None if row["vendor_id"] is None else str(row["vendor_id"]),
            None if row["customer_id"] is None else str(row["customer_id"]),
            str(row["id"]), token_hash, row["expires_at"].timestamp())


def _text(body: dict[str, Any], field: str, *, required: bool = True, max_len: int = _NAME_MAX) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise InvalidUser(field, "is required", reason=MISSING_FIELD)
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidUser(field, f"must be a non-empty string of at most {max_len} characters", reason=WRONG_TYPE)
    return value.strip()


def _number(body: dict[str, Any], field: str, default: float, lo: float, hi: float) -> float:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidUser(field, f"must be a number from {lo:g} to {hi:g}")
    return float(value)


def _only(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidUser("body", "must be a JSON object", reason=WRONG_TYPE)
    if unknown := sorted(set(body) - allowed):
        raise InvalidUser(unknown[0], "is not a field of this request", reason=UNKNOWN_FIELD)
    return body


async def _grant(tx: asyncpg.Connection, user_id: uuid.UUID, role: str, granted_by: str | None) -> None:
    role_id = await tx.fetchval(ROLE_SQL, role, _ROLE_TEXT[role])
    if role_id is None:
        # Another transaction created the role meanwhile: our INSERT waited for it and did
        # nothing, and our SELECT's snapshot predates its commit. A new statement sees it.
        role_id = await tx.fetchval(ROLE_ID_SQL, role)
    await tx.execute(GRANT_SQL, user_id, role_id, optional_uuid(granted_by, "granted_by"))


async def create_vendor(db: TenantDatabase, tenant_id: object, body: Any) -> str:
    """A vendor (shop) from an API body: business_name, address (object), lat, lng,
    optional business_type, delivery_radius_m (default 5000), minimum_order_value and
    payment_methods (default ["cash"])."""
    body = _only(body, {"business_name", "business_type", "address", "lat", "lng", "delivery_radius_m",
                        "minimum_order_value", "payment_methods"})
    methods = body.get("payment_methods", ["cash"])
    if (not isinstance(methods, list) or not methods
            or any(not isinstance(m, str) or m not in PAYMENT_METHODS for m in methods)):
        raise InvalidUser("payment_methods", f"must be a non-empty list of {', '.join(PAYMENT_METHODS)}")
    name = _text(body, "business_name")
    kind = _text(body, "business_type", required=False, max_len=100)
    address = body.get("address", {})
    if not isinstance(address, dict):
        raise InvalidUser("address", "must be an object", reason=WRONG_TYPE)
    lat = _number(body, "lat", float("nan"), -90, 90)
    lng = _number(body, "lng", float("nan"), -180, 180)
    radius = int(_number(body, "delivery_radius_m", 5000, 100, 100_000))
    try:
        minimum = Decimal(str(body.get("minimum_order_value", "0")))
        if isinstance(body.get("minimum_order_value"), bool) or not minimum.is_finite() or not 0 <= minimum < 100_000:
            raise InvalidOperation
    except InvalidOperation:
        raise InvalidUser("minimum_order_value", "must be an amount from 0 to 99999.99") from None
    async with db.tenant_transaction(tenant_id) as tx:
        vendor = await tx.fetchval(CREATE_VENDOR_SQL, name, kind, json.dumps(address), lat, lng, radius,
                                   minimum.quantize(Decimal("0.01")), json.dumps(sorted(set(methods))))
    return str(vendor)


async def create_user(db: TenantDatabase, tenant_id: object, body: Any, *, granted_by: str | None = None) -> dict:
    """A user from an API body: phone (E.164), name, role (tenant_admin | support | vendor | customer),
    and for a vendor the vendor_id it acts for (a vendor without a user yet)."""
    body = _only(body, {"phone", "name", "role", "vendor_id"})
    phone = _text(body, "phone", max_len=20)
    if not _PHONE.match(phone or ""):
        raise InvalidUser("phone", "must be an E.164 number like +27821234567")
    name = _text(body, "name")
    role = body.get("role")
    if role not in ROLES:
        raise InvalidUser("role", f"must be one of {', '.join(ROLES)}")
    vendor_id = None
    if role == "vendor":
        try:
            vendor_id = parse_uuid(str(body.get("vendor_id")), "vendor_id")
        except InvalidId:
            raise InvalidUser("vendor_id", "a vendor user needs the vendor_id (a UUID) it acts for") from None
    elif "vendor_id" in body:
        raise InvalidUser("vendor_id", "only a vendor user acts for a vendor", reason=UNKNOWN_FIELD)
    async with db.tenant_transaction(tenant_id) as tx:
        try:
            user_id = await tx.fetchval(CREATE_USER_SQL, phone, name, role)
        except asyncpg.UniqueViolationError:
            raise InvalidUser("phone", "a user with this phone number exists", status=409,
                              reason=DUPLICATE) from None
        await _grant(tx, user_id, role, granted_by)
        out: dict[str, Any] = {"user_id": str(user_id), "role": role}
        if role == "customer":
            out["customer_id"] = str(await tx.fetchval(CREATE_CUSTOMER_SQL, user_id, name))
        elif role == "vendor":
            if await tx.fetchval(LINK_VENDOR_SQL, vendor_id, user_id) is None:
                raise InvalidUser("vendor_id", "no vendor without a user has this id", status=404,
                                  reason=UNKNOWN_VENDOR)
            out["vendor_id"] = str(vendor_id)
    # After the commit, in the control database (no transaction spans both): a directory row
    # missing because the control plane was away costs only the routing of that person's
    # WhatsApp replies, so the user still stands and the failure is logged.
    try:
        await db.control_fetch(DIRECTORY_SQL, parse_uuid(str(tenant_id), "tenant_id"), user_id, phone, role)
    except Exception as exc:  # noqa: BLE001 - the user is committed; see above
        log.warning("user %s of tenant %s is not in the tenant_users directory (%s: %s)", user_id, tenant_id,
                    exc.__class__.__name__, exc)
    return out


async def issue_user_token(db: TenantDatabase, tenant_id: object, user_id: object,
                           ttl_s: float = 30 * 86400) -> IssuedToken:
    if not 60 <= ttl_s <= 366 * 86400:
        raise WakalaError(f"token lifetime must be between 60 s and 366 days, got {ttl_s:g} s")
    try:
        uid = parse_uuid(str(user_id), "user_id")
    except InvalidId:
        raise InvalidUser("user_id", "is not a UUID") from None
    placement = await db.placement(tenant_id)
    token = f"wku_{placement.tenant_id.hex}_{secrets.token_urlsafe(32)}"
    async with db.tenant_transaction(placement.tenant_id) as tx:
        row = await tx.fetchrow(ISSUE_SQL, uid, hash_token(token), float(ttl_s))
    if row is None:
        raise InvalidUser("user_id", f"no active user {uid} in tenant {placement.tenant_id}", status=404,
                          reason=UNKNOWN_USER)
    return IssuedToken(token, row["id"], row["expires_at"])
