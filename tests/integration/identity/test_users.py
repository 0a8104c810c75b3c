"""REST API users: creation with roles, hashed bearer tokens, verification, revocation."""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from dispatch.identity.auth import TokenRejected, hash_token, revoke_token
from dispatch.identity.users import (
    InvalidUser,
    UserAuthenticator,
    create_user,
    create_vendor,
    issue_user_token,
)
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.shared_platform import shared_platform  # noqa: F401 - one platform for the module

VENDOR = {"business_name": "Mama Thoko Spaza", "address": {"street": "1 Vilakazi St"}, "lat": -26.236,
          "lng": 27.909, "delivery_radius_m": 6000, "minimum_order_value": "30.00"}


def phone() -> str:
    return f"+2782{uuid.uuid4().int % 10**7:07d}"


@pytest.fixture
async def world(platform, redis_url):
    tenant = await create_tenant(platform, f"Users {uuid.uuid4().hex[:6]}")
    redis = aioredis.from_url(redis_url)
    async with TenantDatabase(platform) as db:
        auth = UserAuthenticator(db, redis, cache_ttl_s=60)
        await auth.start()
        try:
            yield db, redis, auth, tenant
        finally:
            await auth.stop()
            await redis.aclose()


async def test_each_role_gets_its_identity_from_the_token(world):
    db, _, auth, tenant = world
    vendor = await create_vendor(db, tenant.id, VENDOR)
    admin = await create_user(db, tenant.id, {"phone": phone(), "name": "Admin", "role": "tenant_admin"})
    seller = await create_user(db, tenant.id, {"phone": phone(), "name": "Thoko", "role": "vendor",
                                               "vendor_id": vendor}, granted_by=admin["user_id"])
    buyer = await create_user(db, tenant.id, {"phone": phone(), "name": "Thandi", "role": "customer"})
    for created, roles, vendor_id, customer_id in (
            (admin, {"tenant_admin"}, None, None), (seller, {"vendor"}, vendor, None),
            (buyer, {"customer"}, None, buyer["customer_id"])):
        issued = await issue_user_token(db, tenant.id, created["user_id"], ttl_s=3600)
        assert issued.token.startswith(f"wku_{tenant.id.hex}_")
        user = await auth.verify(issued.token)
        assert (user.user_id, user.roles, user.vendor_id, user.customer_id, user.tenant_id) == (
            created["user_id"], frozenset(roles), vendor_id, customer_id, str(tenant.id))
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        stored = await tx.fetchval("SELECT count(*) FROM auth_tokens WHERE token_hash = $1", hash_token(issued.token))
        plain = await tx.fetchval("SELECT count(*) FROM auth_tokens WHERE token_hash = $1", issued.token)
    assert (stored, plain) == (1, 0)   # only the hash is kept


async def test_wrong_foreign_revoked_and_expired_tokens_are_refused(world, platform):
    db, redis, auth, tenant = world
    user = await create_user(db, tenant.id, {"phone": phone(), "name": "Thandi", "role": "customer"})
    issued = await issue_user_token(db, tenant.id, user["user_id"], ttl_s=3600)
    other = await create_tenant(platform, f"Other {uuid.uuid4().hex[:6]}")
    forged = f"wku_{other.id.hex}_{issued.token.split('_', 2)[2]}"   # right secret, other tenant
    for token in (None, "", "Bearer x", "wkd_" + issued.token[4:], issued.token[:-1] + ("B" if issued.token.endswith("A") else "A"), forged,
                  f"wku_{uuid.uuid4().hex}_{'a' * 43}", "wku_" + "0" * 32 + "_" + "'; DROP TABLE users;--"[:43],
                  issued.token + " ", issued.token * 50):
        with pytest.raises(TokenRejected) as refused:
            await auth.verify(token)
        assert refused.value.reason == "unknown_token"
    assert (await auth.verify(issued.token)).user_id == user["user_id"]
    assert await revoke_token(db, redis, tenant.id, issued.token_id, token_type="access")

    async def revoked():
        try:
            await auth.verify(issued.token)
        except TokenRejected as exc:
            return exc.reason == "revoked_token"
        return False

    for _ in range(100):   # the revocation is pushed to every process, cache or not
        if await revoked():
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("revoked token still accepted")
    short = await issue_user_token(db, tenant.id, user["user_id"], ttl_s=60)
    async with db.tenant_transaction(tenant.id) as tx:
        await tx.execute("UPDATE auth_tokens SET expires_at = now() - interval '1 s' WHERE id = $1", short.token_id)
    with pytest.raises(TokenRejected) as expired:
        await auth.verify(short.token)
    assert expired.value.reason == "expired_token"


@pytest.mark.parametrize("body, field", [
    ("not an object", "body"),
    ({"phone": "0821234567", "name": "X", "role": "customer"}, "phone"),
    ({"phone": "+27821234567", "name": "", "role": "customer"}, "name"),
    ({"phone": "+27821234567", "name": "X" * 300, "role": "customer"}, "name"),
    ({"phone": "+27821234567", "name": "X", "role": "root"}, "role"),
    ({"phone": "+27821234567", "name": "X", "role": "vendor"}, "vendor_id"),
    ({"phone": "+27821234567", "name": "X", "role": "vendor", "vendor_id": str(uuid.uuid4())}, "vendor_id"),
    ({"phone": "+27821234567", "name": "X", "role": "customer", "vendor_id": str(uuid.uuid4())}, "vendor_id"),
    ({"phone": "+27821234567", "name": "X", "role": "customer", "is_admin": True}, "is_admin"),
    ({"phone": ["+27821234567"], "name": "X", "role": "customer"}, "phone"),
])
async def test_hostile_user_bodies_are_refused_and_write_nothing(world, body, field):
    db, _, _, tenant = world

    async def counts():
        async with db.tenant_transaction(tenant.id, readonly=True) as tx:
            return [await tx.fetchval(f"SELECT count(*) FROM {t}") for t in ("users", "user_roles", "customers")]  # noqa: S608

    before = await counts()
    with pytest.raises(InvalidUser) as refused:
        await create_user(db, tenant.id, body)
    assert refused.value.field == field
    assert await counts() == before


@pytest.mark.parametrize("change, field", [
    ({"lat": 91}, "lat"), ({"lng": float("nan")}, "lng"), ({"lat": True}, "lat"), ({"business_name": ""}, "business_name"),
    ({"delivery_radius_m": -5}, "delivery_radius_m"), ({"minimum_order_value": "NaN"}, "minimum_order_value"),
    ({"minimum_order_value": "-1"}, "minimum_order_value"), ({"address": "street"}, "address"), ({"owner": 1}, "owner"),
])
async def test_hostile_vendor_bodies_are_refused(world, change, field):
    db, _, _, tenant = world
    with pytest.raises(InvalidUser) as refused:
        await create_vendor(db, tenant.id, {**VENDOR, **change})
    assert refused.value.field == field


async def test_users_created_at_once_in_a_new_tenant_all_get_their_role(world):
    # The first users of a role race to create it (the city replay found this: one of them
    # got no role id and a 500).
    db, _, _, tenant = world
    made = await asyncio.gather(*(create_user(db, tenant.id, {"phone": phone(), "name": f"C{i}", "role": role})
                                  for i in range(12) for role in ("customer", "tenant_admin")))
    async with db.tenant_transaction(tenant.id, readonly=True) as tx:
        granted = await tx.fetchval("SELECT count(*) FROM user_roles ur JOIN roles r ON r.id = ur.role_id "
                                    "WHERE ur.user_id = ANY($1::uuid[])", [uuid.UUID(m["user_id"]) for m in made])
        roles = await tx.fetchval("SELECT count(*) FROM roles WHERE name IN ('customer', 'tenant_admin')")
    assert (granted, roles) == (24, 2)


async def test_a_duplicate_phone_is_a_conflict(world):
    db, _, _, tenant = world
    number = phone()
    await create_user(db, tenant.id, {"phone": number, "name": "A", "role": "customer"})
    with pytest.raises(InvalidUser) as refused:
        await create_user(db, tenant.id, {"phone": number, "name": "B", "role": "customer"})
    assert refused.value.status == 409
