"""Made-up bearer tokens in bulk: bounded caches, refusals per address before any lookup."""

import asyncio
import secrets
import uuid

import pytest
import redis.asyncio as aioredis

from dispatch.core.settings import EngineSettings
from dispatch.identity.auth import (
    AuthThrottled,
    DriverAuthenticator,
    TokenRejected,
    expires_in,
    hash_token,
    issue_driver_token,
)
from dispatch.identity.drivers import NewDriver, create_driver
from dispatch.identity.users import UserAuthenticator, create_user, issue_user_token
from dispatch.web.failures import FailureLimiter
from schema.db import TenantDatabase
from schema.tenants import create_tenant

FLOOD = 20_000
BOUND = 100


def secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
async def world(platform, redis_url):
    tenant = await create_tenant(platform, f"Flood {uuid.uuid4().hex[:6]}")
    redis = aioredis.from_url(redis_url)
    async with TenantDatabase(platform) as db:
        driver_id = await create_driver(db, tenant.id, NewDriver(
            "Sipho", "Dlamini", f"+2782{uuid.uuid4().int % 10**7:07d}", "DL-12345", "motorbike", "CA 123-456"))
        driver_token = (await issue_driver_token(db, tenant.id, driver_id, ttl_s=3600)).token
        user = await create_user(db, tenant.id, {"phone": f"+2783{uuid.uuid4().int % 10**7:07d}",
                                                 "name": "Thandi", "role": "customer"})
        user_token = (await issue_user_token(db, tenant.id, user["user_id"], ttl_s=3600)).token
        try:
            yield db, redis, tenant, driver_token, user_token
        finally:
            await redis.aclose()


async def test_twenty_thousand_random_tokens_never_grow_the_caches_past_their_bound(world):
    db, redis, tenant, driver_token, user_token = world
    drivers = DriverAuthenticator(db, redis, cache_max=BOUND, refused_max=BOUND)
    users = UserAuthenticator(db, redis, cache_max=BOUND, refused_max=BOUND)
    assert (await drivers.verify(driver_token)).tenant_id == str(tenant.id)
    assert (await users.verify(user_token)).tenant_id == str(tenant.id)

    def made_up(i: int) -> tuple[UserAuthenticator | DriverAuthenticator, str]:
        # half with the real tenant (a shard lookup each), half with a random one (a control query)
        tenant_hex = tenant.id.hex if i % 2 else uuid.uuid4().hex
        return (drivers, f"wkd_{tenant_hex}_{secret()}") if i % 4 < 2 else (users, f"wku_{tenant_hex}_{secret()}")

    async def refused(auth, token) -> str:
        with pytest.raises(TokenRejected) as exc:
            await auth.verify(token)
        return exc.value.reason

    for start in range(0, FLOOD, 500):
        reasons = await asyncio.gather(*(refused(*made_up(i)) for i in range(start, start + 500)))
        assert set(reasons) == {"unknown_token"}
        for auth in (drivers, users):
            verified, refusals = auth.cached()
            assert verified <= BOUND and refusals <= BOUND
    # the real tokens still verify, wherever the flood left the caches
    assert (await drivers.verify(driver_token)).tenant_id == str(tenant.id)
    assert (await users.verify(user_token)).tenant_id == str(tenant.id)


async def test_one_address_past_its_refusal_budget_gets_429_before_any_lookup(world):
    db, redis, tenant, driver_token, user_token = world
    failures = FailureLimiter(5, 60)
    engine = EngineSettings(auth_failure_limit=5, auth_failure_window_s=60)
    drivers = DriverAuthenticator.from_settings(db, redis, engine, failures)
    users = UserAuthenticator.from_settings(db, redis, engine, failures)
    attacker, driver_at_home = "203.0.113.9", "198.51.100.7"
    for i in range(5):   # refusals of either kind of token count against the one address
        auth, prefix = (drivers, "wkd") if i % 2 else (users, "wku")
        with pytest.raises(TokenRejected) as exc:
            await auth.verify(f"{prefix}_{uuid.uuid4().hex}_{secret()}", client=attacker)
        assert exc.value.status == 401
    # Now refused unasked, even a real token: the database is not consulted (its control pool
    # is held and a lookup would time out instead).
    db.control_acquire_timeout_s = 0.2
    async with db._control.acquire(), db._control.acquire():
        for token, auth in ((f"wkd_{uuid.uuid4().hex}_{secret()}", drivers), (driver_token, drivers),
                            (user_token, users)):
            with pytest.raises(AuthThrottled) as throttled:
                await auth.verify(token, client=attacker)
            assert (throttled.value.status, throttled.value.reason) == (429, "rate_limited")
            assert 1 <= int(throttled.value.headers["Retry-After"]) <= 60
    # another address, and callers that do not say who asks, are unaffected
    assert (await drivers.verify(driver_token, client=driver_at_home)).tenant_id == str(tenant.id)
    assert (await users.verify(user_token)).tenant_id == str(tenant.id)


async def test_user_and_driver_principals_say_when_they_expire(world):
    db, redis, _, driver_token, user_token = world
    for auth, token in ((DriverAuthenticator(db, redis), driver_token), (UserAuthenticator(db, redis), user_token)):
        principal = await auth.verify(token)
        assert 3500 < expires_in(principal) <= 3600
        assert expires_in(principal, now=principal.expires_at + 1) == -1


async def test_expired_tokens_do_not_spend_an_address_budget(world):
    """A driver's app retrying a stale token behind a shared address must not lock out others."""
    db, redis, tenant, driver_token, _ = world
    drivers = DriverAuthenticator(db, redis, failures=FailureLimiter(3, 60))
    async with db.tenant_transaction(tenant.id) as tx:
        await tx.execute("UPDATE auth_tokens SET expires_at = now() - interval '1 s' WHERE token_hash = $1",
                         hash_token(driver_token))
    for _ in range(10):
        with pytest.raises(TokenRejected) as refused:
            await drivers.verify(driver_token, client="192.0.2.50")
        assert (refused.value.status, refused.value.reason) == (401, "expired_token")
