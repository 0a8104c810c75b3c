"""``dispatch.ops.config``: the services' addresses read from the environment and parsed.
Pure, no service needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.ops.config import ServiceError, ServicesConfig, parse_bootstrap, server_dsn


def test_server_dsn_swaps_database_only() -> None:
    dsn = "postgresql://app:s3cret@db.example:6543/wakala_control?sslmode=disable"
    assert server_dsn(dsn) == "postgresql://app:s3cret@db.example:6543/postgres?sslmode=disable"
    with pytest.raises(ServiceError, match="postgresql://"):
        server_dsn("mysql://root@localhost/x")


def test_config_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "WAKALA_CONTROL_DSN",
        "WAKALA_REDIS_URL",
        "WAKALA_KAFKA_BOOTSTRAP",
        "WAKALA_STATE_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    config = ServicesConfig.from_env()
    assert config.control_dsn == "postgresql://postgres@127.0.0.1:5432/wakala_control"
    assert config.server_dsn == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.kafka_bootstrap == "127.0.0.1:9092"
    assert config.state_dir == tmp_path / ".wakala"


def test_parse_bootstrap() -> None:
    assert parse_bootstrap("a:1, [::1]:2,b") == [("a", 1), ("::1", 2), ("b", 9092)]
    with pytest.raises(ServiceError, match="invalid port"):
        parse_bootstrap("host:notaport")
