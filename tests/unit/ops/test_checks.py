"""``dispatch.ops.checks``: the status table ``wakala services status`` prints.
Pure, no service needed (the checks themselves are in tests/integration/ops)."""

from __future__ import annotations

from dispatch.ops.checks import ServiceStatus, format_statuses


def test_format_statuses_shows_state_and_hint() -> None:
    table = format_statuses(
        [
            ServiceStatus("postgres", True, "PostgreSQL 15", None),
            ServiceStatus("redis", False, "refused", "redis-server --daemonize yes"),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["SERVICE", "STATE", "DETAIL"]
    assert lines[1].split()[:2] == ["postgres", "up"]
    assert lines[2].split()[:2] == ["redis", "DOWN"]
    assert "hint: redis-server --daemonize yes" in lines[3]
