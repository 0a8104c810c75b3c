"""The message that begins a tenant's transaction: values quoted whatever they hold."""

import uuid

import asyncpg
import pytest

from schema.db import _begun, begin_tenant_sql


def test_hostile_schema_names_and_ids_are_quoted():
    sql = begin_tenant_sql("evil'; DROP TABLE users; --\"", uuid.UUID(int=1))
    assert sql.count("'") % 2 == 0
    assert "'\"evil''; DROP TABLE users; --\"\"\", public'" in sql
    with pytest.raises(ValueError, match="NUL"):
        begin_tenant_sql("a\0b", uuid.UUID(int=1))


def test_read_only_transactions_say_so():
    assert begin_tenant_sql("tenant_ab", uuid.UUID(int=1), readonly=True).startswith("BEGIN READ ONLY;")
    assert begin_tenant_sql("tenant_ab", uuid.UUID(int=1)).startswith("BEGIN;")


class _Conn:
    def __init__(self, fails_with: BaseException | None) -> None:
        self.fails_with, self.sent, self.terminated = fails_with, [], False

    async def execute(self, sql: str) -> None:
        self.sent.append(sql)
        if self.fails_with is not None:
            raise self.fails_with

    def terminate(self) -> None:
        self.terminated = True


class _Pool:
    def __init__(self, *conns: _Conn) -> None:
        self.idle, self.released = list(conns), []

    async def acquire(self) -> _Conn:
        return self.idle.pop(0)

    async def release(self, conn: _Conn) -> None:
        self.released.append(conn)


async def test_a_connection_that_lost_its_session_while_idle_is_dropped_and_another_begins() -> None:
    stale = _Conn(asyncpg.exceptions._base.InternalClientError("cannot switch to state 15"))
    fresh = _Conn(None)
    pool = _Pool(stale, fresh)
    assert await _begun(pool, "BEGIN") is fresh
    assert stale.terminated and pool.released == [stale] and fresh.sent == ["BEGIN"]


async def test_a_second_failure_at_begin_and_any_other_error_reach_the_caller() -> None:
    gone = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    pool = _Pool(_Conn(gone), _Conn(gone))
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await _begun(pool, "BEGIN")
    assert len(pool.released) == 2 and all(c.terminated for c in pool.released)
    wrong = _Pool(_Conn(asyncpg.exceptions.SyntaxOrAccessError("syntax error")), _Conn(None))
    with pytest.raises(asyncpg.exceptions.SyntaxOrAccessError):
        await _begun(wrong, "BEGIN")
    assert len(wrong.released) == 1 and len(wrong.idle) == 1   # not retried
