"""``/v1/trackers/osmand`` against a running engine and the real broker: the request shapes
Traccar Client and OsmAnd trackers send are accepted for the key's driver; revoked, unknown and
malformed keys and hostile values are refused naming the tracker's field, and nothing is
produced for them."""

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from dispatch.identity.auth import issue_driver_token, revoke_token
from dispatch.identity.trackers import issue_tracker_key
from schema.db import TenantDatabase
from tests.integration.engine_helpers import running_app
from tests.integration.gateway.support import SOWETO, make_fleet

PATH = "/v1/trackers/osmand"


@pytest.fixture
async def world(platform, stream_settings):
    fleet = await make_fleet(platform, 1, f"Trackers {uuid.uuid4().hex[:6]}")
    async with TenantDatabase(platform) as db:
        key = await issue_tracker_key(db, fleet.tenant_id, fleet.ids[0])
    async with running_app(platform, stream_settings) as (addr, state):
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as http:
            yield http, state, fleet, key


def osmand(key: str, **extra) -> dict[str, str]:
    params = {"id": key, "timestamp": str(int(time.time())), "lat": str(SOWETO[0]), "lon": str(SOWETO[1]),
              "speed": "12.0", "bearing": "270.0", "altitude": "1600.0", "accuracy": "7.0", "batt": "64.0"}
    params.update(extra)
    return params


def traccar9(key: str, **coords) -> dict:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"location": {"timestamp": stamp, "is_moving": True, "odometer": 5012.3, "event": "motionchange",
                         "coords": {"latitude": SOWETO[0], "longitude": SOWETO[1], "accuracy": 5.0,
                                    "speed": 6.1, "heading": 45.0, "altitude": 1601.0},
                         "battery": {"level": 0.42, "is_charging": False}, "activity": {"type": "in_vehicle"}},
            "device_id": key}
    body["location"]["coords"].update(coords)
    return body


def accepted(state) -> float:
    from dispatch.core.metrics import PINGS_ACCEPTED
    return PINGS_ACCEPTED.labels("osmand")._value.get()


async def test_every_shape_the_clients_send_is_accepted_for_the_keys_driver(world):
    http, state, fleet, key = world
    before = accepted(state)
    # Traccar Client up to 8: POST with the fix in the query and an empty body
    resp = await http.post(PATH, params=osmand(key.token))
    assert resp.status_code == 200 and resp.json() == {"accepted": 1}, resp.text
    # OsmAnd and many trackers: GET; epoch milliseconds and ISO times; extra attributes
    resp = await http.get(PATH, params=osmand(key.token, timestamp=str(int(time.time() * 1000)), ignition="true",
                                              hdop="0.9"))
    assert resp.status_code == 200, resp.text
    resp = await http.get(PATH, params=osmand(key.token, timestamp=datetime.now(UTC).isoformat()))
    assert resp.status_code == 200, resp.text
    # a form body
    resp = await http.post(PATH, data=osmand(key.token))
    assert resp.status_code == 200, resp.text
    # Traccar Client 9: JSON
    resp = await http.post(PATH, json=traccar9(key.token))
    assert resp.status_code == 200 and resp.json() == {"accepted": 1}, resp.text
    assert accepted(state) - before == 5


async def test_a_fix_too_old_to_be_live_is_acknowledged_and_not_stored(world):
    http, state, _, key = world
    before = accepted(state)
    resp = await http.get(PATH, params=osmand(key.token, timestamp=str(int(time.time()) - 3600)))
    assert resp.status_code == 200 and resp.json()["accepted"] == 0 and resp.json()["reason"] == "stale_timestamp"
    assert accepted(state) == before


async def test_keys_that_are_missing_unknown_revoked_or_not_tracker_keys_are_refused(platform, world):
    http, state, fleet, key = world
    async with TenantDatabase(platform) as db:
        other = await issue_tracker_key(db, fleet.tenant_id, fleet.ids[0])
        assert await revoke_token(db, state.redis, fleet.tenant_id, other.token_id, token_type="tracker")
        driver_token = (await issue_driver_token(db, fleet.tenant_id, fleet.ids[0], ttl_s=3600)).token
    made_up = "wkg_" + uuid.UUID(fleet.tenant_id).hex + "_" + "x" * 43
    before = accepted(state)
    for params, reason, field in (
            ({k: v for k, v in osmand(key.token).items() if k != "id"}, "missing_field", "id"),
            (osmand(made_up), "unknown_token", "id"),
            (osmand(other.token), "revoked_token", "id"),
            (osmand(driver_token), "unknown_token", "id"),   # an app token is not a tracker key
            (osmand("' OR 1=1 --"), "unknown_token", "id")):
        resp = await http.get(PATH, params=params)
        assert resp.status_code == 401, resp.text
        assert (resp.json()["error"]["reason"], resp.json()["error"].get("field")) == (reason, field)
    resp = await http.post(PATH, json={**traccar9(made_up)})
    assert resp.status_code == 401 and resp.json()["error"]["field"] == "device_id"
    # and a tracker key is not a driver token
    resp = await http.post("/v1/drivers/shift", json={"action": "start"},
                           headers={"Authorization": f"Bearer {key.token}"})
    assert resp.status_code == 401
    assert accepted(state) == before


async def test_hostile_values_are_refused_naming_the_trackers_field(world):
    http, state, _, key = world
    before = accepted(state)
    future = str(int(time.time()) + 3600)
    cases = [
        (http.get(PATH, params=osmand(key.token, lat="NaN")), 422, "not_finite", "lat"),
        (http.get(PATH, params=osmand(key.token, lon="181")), 422, "out_of_range", "lon"),
        (http.get(PATH, params=osmand(key.token, lat="0", lon="0")), 422, "null_island", "lat"),
        (http.get(PATH, params=osmand(key.token, bearing="-5")), 422, "out_of_range", "bearing"),
        (http.get(PATH, params=osmand(key.token, speed="1e6")), 422, "out_of_range", "speed"),
        (http.get(PATH, params=osmand(key.token, batt="250")), 422, "out_of_range", "batt"),
        (http.get(PATH, params=osmand(key.token, timestamp=future)), 422, "future_timestamp", "timestamp"),
        (http.get(PATH, params=osmand(key.token, timestamp="soon")), 422, "wrong_type", "timestamp"),
        (http.post(PATH, json=traccar9(key.token, latitude=-91)), 422, "out_of_range", "location.coords.latitude"),
        (http.post(PATH, json=traccar9(key.token, longitude="east")), 422, "wrong_type",
         "location.coords.longitude"),
        (http.post(PATH, content=b'{"device_id": "x", "location": ', headers={"Content-Type": "application/json"}),
         400, "bad_json", None),   # as on every gateway route
        (http.post(PATH, content=b"x" * (256 * 1024 + 1), headers={"Content-Type": "application/json"}), 413, "too_large",
         None),
        (http.get(PATH, params=[("id", key.token)] + [(f"a{i}", "1") for i in range(70)]), 413, "too_many", None),
        (http.post(PATH, content=b"id=%ff%fe&lat=1", headers={"Content-Type": "application/x-www-form-urlencoded"}),
         400, "bad_json", "body"),
    ]
    for made, status, reason, field in cases:
        resp = await made
        assert resp.status_code == status, (reason, resp.text)
        error = resp.json()["error"]
        assert (error["reason"], error.get("field")) == (reason, field), resp.text
    assert accepted(state) == before


async def test_a_driver_who_withdrew_tracking_consent_is_refused_on_the_tracker_route_too(world):
    http, state, fleet, key = world
    resp = await http.put("/v1/drivers/consents/location_tracking", json={"given": False, "channel": "app"},
                          headers={"Authorization": f"Bearer {fleet.tokens[0]}"})
    assert resp.status_code == 200, resp.text
    resp = await http.get(PATH, params=osmand(key.token))
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "consent_withdrawn"


async def test_the_cli_issues_and_revokes_a_tracker_key(platform, stream_settings, world):
    import os
    import subprocess
    import sys

    http, state, fleet, _ = world
    env = dict(os.environ, WAKALA_CONTROL_DSN=platform.control.url(),
               WAKALA_SHARD_DATABASES=",".join(platform.shard_databases), WAKALA_REDIS_URL=stream_settings.redis_url)

    def wakala(*args):
        return subprocess.run([sys.executable, "-m", "dispatch.cli", "driver", "token", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    issued = wakala("issue", "--tenant", fleet.tenant_id, "--driver", fleet.ids[0], "--tracker")
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip().splitlines()[-1]
    key_id = issued.stdout.split("tracker key id ")[1].split(",")[0]
    assert key.startswith("wkg_") and "/v1/trackers/osmand" in issued.stdout
    assert (await http.get(PATH, params=osmand(key))).status_code == 200
    # an app token's revoke does not touch a tracker key, the tracker revoke does
    assert wakala("revoke", "--tenant", fleet.tenant_id, key_id).returncode == 1
    revoked = wakala("revoke", "--tenant", fleet.tenant_id, "--tracker", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout

    async def refused():
        return (await http.get(PATH, params=osmand(key))).status_code == 401
    for _ in range(100):
        if await refused():
            break
        await asyncio.sleep(0.05)
    assert await refused()
    bad = wakala("issue", "--tenant", fleet.tenant_id, "--driver", "not-a-driver", "--tracker")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
