"""The revocation listener outlives Redis: a dropped connection and a restarted server.

The Redis here is a private ``redis-server`` on a spare port, killed and restarted by the test.
A revocation made while the listener is away (committed, its message lost) still reaches the
``on_revoked`` callbacks once it is back, and so do the ones published afterwards.
"""

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from dispatch.identity.auth import TokenRejected, revoke_token
from dispatch.identity.users import UserAuthenticator, create_user, issue_user_token
from schema.db import TenantDatabase
from schema.tenants import create_tenant
from tests.integration.private_services import private_redis

WAIT_S = 30   # a bound for awaited events, never a sleep


async def test_revocations_reach_the_callback_after_a_dropped_connection_and_a_redis_restart(platform):
    tenant = await create_tenant(platform, f"Revoke {uuid.uuid4().hex[:6]}")
    async with private_redis() as server, TenantDatabase(platform) as db:
        redis = aioredis.from_url(f"redis://127.0.0.1:{server.port}/0")
        auth = UserAuthenticator(db, redis, cache_ttl_s=600)
        revoked: asyncio.Queue[str] = asyncio.Queue()
        auth.on_revoked(revoked.put_nowait)
        await auth.start()
        try:
            user = await create_user(db, tenant.id, {"phone": f"+2782{uuid.uuid4().int % 10**7:07d}",
                                                     "name": "Thandi", "role": "customer"})
            issued = [await issue_user_token(db, tenant.id, user["user_id"], ttl_s=3600) for _ in range(4)]
            principals = [await auth.verify(token.token) for token in issued]

            async def revoke(i: int, publish: bool) -> None:
                assert await revoke_token(db, redis if publish else None, tenant.id, issued[i].token_id,
                                          token_type="access")

            # 1. A revocation whose message is lost, then the server drops the subscriber.
            await revoke(0, publish=False)
            admin = aioredis.from_url(f"redis://127.0.0.1:{server.port}/0")
            assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
            await admin.aclose()
            await asyncio.wait_for(auth.wait_subscribed(2), WAIT_S)
            assert await asyncio.wait_for(revoked.get(), WAIT_S) == principals[0].token_hash
            await revoke(1, publish=True)
            assert await asyncio.wait_for(revoked.get(), WAIT_S) == principals[1].token_hash

            # 2. Redis dies; a token is revoked meanwhile; Redis comes back empty on the same port.
            server.kill()
            await revoke(2, publish=False)
            await server.start()
            await asyncio.wait_for(auth.wait_subscribed(3), WAIT_S)
            assert await asyncio.wait_for(revoked.get(), WAIT_S) == principals[2].token_hash
            with pytest.raises(TokenRejected) as refused:
                await auth.verify(issued[2].token)
            assert refused.value.reason == "revoked_token"
            assert (await auth.verify(issued[3].token)).user_id == user["user_id"]
            await revoke(3, publish=True)
            assert await asyncio.wait_for(revoked.get(), WAIT_S) == principals[3].token_hash
            assert revoked.empty()
        finally:
            await auth.stop()
            await redis.aclose()
