"""The tenant's own payment-callback secret, kept in its schema (``payment_settings``, tenant
migration 0015; the signature rules are ``payment_signatures``).

An HMAC needs the key itself, so it is stored as is, readable by the application role only
and under RLS like every tenant row. It is write-only through the API (the admin route and
the CLI set it; nothing answers it back) except when the engine generates it, when it is
shown once.
"""

from __future__ import annotations

import secrets

import asyncpg

from dispatch.core.errors import INVALID_VALUE, Refusal
from schema.db import TenantDatabase
from schema.tenants import parse_tenant_id

__all__ = ["check_secret", "get_webhook_secret", "new_secret", "read_webhook_secret", "set_webhook_secret"]

MIN_SECRET, MAX_SECRET = 32, 256
GET_SQL = "SELECT webhook_secret FROM payment_settings"
SET_SQL = """
INSERT INTO payment_settings (webhook_secret) VALUES ($1)
ON CONFLICT (tenant_id) DO UPDATE SET webhook_secret = EXCLUDED.webhook_secret, updated_at = now()
RETURNING updated_at
"""


def new_secret() -> str:
    """A fresh secret: 64 hex characters (256 bits)."""
    return secrets.token_hex(32)


def check_secret(value: object, field: str = "secret") -> str:
    """32-256 printable ASCII characters, no spaces; 422 naming ``field`` otherwise."""
    if not isinstance(value, str) or not MIN_SECRET <= len(value) <= MAX_SECRET \
            or not all("!" <= c <= "~" for c in value):
        raise Refusal(422, INVALID_VALUE, f"{field} must be {MIN_SECRET}-{MAX_SECRET} printable ASCII "
                      "characters without spaces", field)
    return value


async def get_webhook_secret(db: TenantDatabase, tenant_id: object) -> str | None:
    """The tenant's own secret, or None (the platform secret signs for it meanwhile)."""
    async with db.tenant_transaction(str(parse_tenant_id(tenant_id)), readonly=True) as tx:
        return await read_webhook_secret(tx)


async def read_webhook_secret(tx: asyncpg.Connection) -> str | None:
    """``get_webhook_secret`` in the caller's tenant transaction."""
    return await tx.fetchval(GET_SQL)


async def set_webhook_secret(db: TenantDatabase, tenant_id: object, secret: str) -> str:
    """Set (or rotate) the tenant's secret; returns when, as ISO 8601. From now on only the
    timestamped signature with this secret is accepted for the tenant."""
    secret = check_secret(secret)
    async with db.tenant_transaction(str(parse_tenant_id(tenant_id))) as tx:
        return (await tx.fetchval(SET_SQL, secret)).isoformat()
