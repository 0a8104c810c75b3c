"""Errors raised by the control plane, the migration runner and tenant transactions.

Every message names what went wrong and what to do about it; none carries tenant data.
"""


class WakalaError(Exception):
    """Base class for errors a user can act on (the CLI prints them without a traceback)."""


class ConfigError(WakalaError):
    """A WAKALA_* setting is malformed."""


class DatabaseUnavailable(WakalaError):
    """A PostgreSQL server or database does not answer.

    The message names the host, port and database so that an operator (the CLI, the logs) can
    act on it; the engine's HTTP edge therefore never sends it to a client: it answers 503
    ``unavailable`` with ``Retry-After`` and logs this (``dispatch.web.outages``)."""


class MigrationError(WakalaError):
    """A migration could not be loaded or applied."""


class MigrationChecksumError(MigrationError):
    """An applied migration file was edited after it was applied."""


class ShardError(WakalaError):
    """The shard map is empty, inconsistent, or a shard definition is invalid."""


class InvalidTenantId(WakalaError):
    """A tenant id is not a UUID."""


class UnknownTenant(WakalaError):
    """No tenant with this id is registered in the control plane."""


class TenantNotActive(WakalaError):
    """The tenant exists but is not active (provisioning, suspended or deleted)."""


class InvalidTenantName(WakalaError):
    """A tenant name or slug fails validation."""


class TenantExists(WakalaError):
    """A tenant with this slug already exists."""


class MoveError(WakalaError):
    """A tenant move, drain or rebalance was refused or could not finish (the message says
    what state the tenant is in and what to run)."""


class TenantPaused(DatabaseUnavailable):
    """The tenant's writes are paused while it switches shards; retry in a second."""


class TenantMoved(DatabaseUnavailable):
    """The tenant's schema on the shard this process routed to has been fenced off: the
    tenant moved (or is moving). The placement is forgotten; a retry routes afresh."""
