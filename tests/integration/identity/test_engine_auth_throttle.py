"""The engine turns away an address that keeps presenting made-up tokens, before any lookup.

Needs the call sites to pass the client address (``verify(token, client=...)``) and the app to
build its authenticators with ``from_settings`` sharing one ``FailureLimiter``.
"""

import secrets
import uuid

import httpx

from tests.integration.engine_helpers import running_app


async def test_an_address_past_its_budget_of_made_up_tokens_gets_429_on_every_route(platform, stream_settings):
    async with running_app(platform, stream_settings, auth_failure_limit=5, auth_failure_window_s=60) as (addr, state), \
            httpx.AsyncClient(base_url=f"http://{addr}") as http:
        def made_up(prefix: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {prefix}_{uuid.uuid4().hex}_{secrets.token_urlsafe(32)}"}

        for i in range(5):
            if i % 2:
                resp = await http.post("/v1/drivers/locations", json={"pings": []}, headers=made_up("wkd"))
            else:
                resp = await http.get("/v1/catalogue/products", headers=made_up("wku"))
            assert resp.status_code == 401, resp.text
        cached = state.users.cached(), state.ingest.auth.cached()
        for _ in range(50):
            for resp in (await http.get("/v1/catalogue/products", headers=made_up("wku")),
                         await http.post("/v1/drivers/locations", json={"pings": []}, headers=made_up("wkd"))):
                assert resp.status_code == 429, resp.text
                assert resp.json()["error"]["reason"] == "rate_limited"
                assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert (state.users.cached(), state.ingest.auth.cached()) == cached   # nothing looked up or kept
