"""WAKALA_* settings: hostile values are refused with the variable's name; nothing half-applies."""

import pytest

from dispatch.core.settings import EngineSettings
from schema.errors import ConfigError
from schema.settings import PostgresSettings
from streams.settings import StreamSettings


@pytest.mark.parametrize("cls, name, value", [
    (EngineSettings, "WAKALA_HTTP_PORT", "80; rm -rf /"),
    (EngineSettings, "WAKALA_HTTP_PORT", "70000"),
    (EngineSettings, "WAKALA_PING_RATE_LIMIT", "0"),
    (EngineSettings, "WAKALA_MAX_BATCH_PINGS", "1.5"),
    (EngineSettings, "WAKALA_SIM_TIME_SCALE", "0"),
    (EngineSettings, "WAKALA_SIM_TIME_SCALE", "nan"),
    (StreamSettings, "WAKALA_LOCATION_TTL_S", "nan"),
    (StreamSettings, "WAKALA_LOCATION_TTL_S", "-5"),
    (StreamSettings, "WAKALA_H3_RESOLUTION", "16"),
    (StreamSettings, "WAKALA_MAX_SPEED_KMH", "inf"),
    (StreamSettings, "WAKALA_GEOFENCE_PICKUP_M", "2"),
    (StreamSettings, "WAKALA_GEOFENCE_DROPOFF_M", "nan"),
    (PostgresSettings, "WAKALA_PG_WRITE_POOL_SIZE", "lots"),
    (PostgresSettings, "WAKALA_APP_ROLE", "postgres; DROP ROLE x"),
    (PostgresSettings, "WAKALA_SHARD_DATABASES", "a,a"),
    (PostgresSettings, "WAKALA_CONTROL_DSN", "mysql://root@localhost/x"),
])
def test_bad_settings_name_the_variable(cls, name, value):
    with pytest.raises(ConfigError, match=name):
        cls.from_env({name: value})


def test_defaults_work_on_the_local_services():
    assert EngineSettings.from_env({}).port == 8080
    assert StreamSettings.from_env({}).location_ttl_s == 30.0
    assert StreamSettings.from_env({"WAKALA_GEOFENCE_PICKUP_M": "120"}).geofence_pickup_m == 120.0
    assert StreamSettings.from_env({}).geofence_dropoff_m == 75.0
    assert PostgresSettings.from_env({}).shard_databases == ("wakala_shard_0", "wakala_shard_1")
