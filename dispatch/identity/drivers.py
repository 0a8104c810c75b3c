"""Driver accounts: creating a driver (with its user) in a tenant, validated; shifts recorded."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from dispatch.core.errors import INVALID_VALUE, NOT_FOUND, Refusal
from dispatch.core.ids import parse_uuid
from schema.db import TenantDatabase

VEHICLE_TYPES = ("bicycle", "motorbike", "car", "bakkie", "van")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_NAME = re.compile(r"^[\w][\w .'-]{0,99}$", re.UNICODE)
_PLATE = re.compile(r"^[A-Z0-9][A-Z0-9 -]{1,19}$")

CREATE_USER_SQL = """
INSERT INTO users (phone_number, name, role) VALUES ($1, $2, 'driver') RETURNING id
"""
CREATE_DRIVER_SQL = """
INSERT INTO drivers (user_id, first_name, last_name, license_number, vehicle_type,
                     vehicle_registration, has_cold_storage)
VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
"""


class InvalidDriver(Refusal):
    """A driver record refused (422 ``invalid_value``); nothing was written. A ``Refusal``
    whose text names the field (``phone_number: an E.164 number ...``), as the CLI prints it;
    ``field`` and ``message`` are also apart for an API to render."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, INVALID_VALUE, message, field)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class NewDriver:
    first_name: str
    last_name: str
    phone_number: str
    license_number: str
    vehicle_type: str
    vehicle_registration: str
    has_cold_storage: bool = False

    def validated(self) -> NewDriver:
        for field in ("first_name", "last_name"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _NAME.match(value.strip()):
                raise InvalidDriver(field, "letters, spaces, ' . - only, 1-100 characters")
        if not isinstance(self.phone_number, str) or not _PHONE.match(self.phone_number):
            raise InvalidDriver("phone_number", "an E.164 number such as +27821234567")
        if self.vehicle_type not in VEHICLE_TYPES:
            raise InvalidDriver("vehicle_type", f"one of {', '.join(VEHICLE_TYPES)}")
        plate = str(self.vehicle_registration).upper().strip()
        if not _PLATE.match(plate):
            raise InvalidDriver("vehicle_registration", "letters, digits, spaces and dashes, 2-20 characters")
        licence = str(self.license_number).strip()
        if not 3 <= len(licence) <= 100 or not licence.replace("-", "").replace(" ", "").isalnum():
            raise InvalidDriver("license_number", "letters, digits, spaces and dashes, 3-100 characters")
        if not isinstance(self.has_cold_storage, bool):
            raise InvalidDriver("has_cold_storage", "true or false")
        return NewDriver(self.first_name.strip(), self.last_name.strip(), self.phone_number, licence,
                         self.vehicle_type, plate, self.has_cold_storage)


async def create_driver(db: TenantDatabase, tenant_id: object, driver: NewDriver) -> uuid.UUID:
    """Create the driver's user and driver rows in one transaction; returns the driver id."""
    d = driver.validated()
    async with db.tenant_transaction(tenant_id) as tx:
        user_id = await tx.fetchval(CREATE_USER_SQL, d.phone_number, f"{d.first_name} {d.last_name}")
        return await tx.fetchval(CREATE_DRIVER_SQL, user_id, d.first_name, d.last_name, d.license_number,
                                 d.vehicle_type, d.vehicle_registration, d.has_cold_storage)


# A driver's shift is recorded in Postgres as ``drivers.is_available`` (the seed's column: on
# shift, offered work when free), so that Redis, which holds the live status, can be rebuilt
# from it after a restart (``dispatch.matching.recovery``). Busy or not is not recorded here:
# it follows from the driver's active deliveries, which Postgres also holds.
SHIFT_SQL = """
UPDATE drivers SET is_available = $2, updated_at = now() WHERE id = $1 RETURNING vehicle_type
"""
ACTIVE_DELIVERIES_SQL = """
SELECT id::text FROM deliveries
WHERE driver_id = $1 AND status IN ('assigned', 'at_pickup', 'picked_up')
ORDER BY assigned_at NULLS LAST, id
"""


class UnknownShiftDriver(Refusal):
    """A shift change for a driver the tenant does not have (404); nothing written."""

    def __init__(self, driver_id: object) -> None:
        super().__init__(404, NOT_FOUND, f"no driver {driver_id}", "driver_id")


async def record_shift(db: TenantDatabase, tenant_id: object, driver_id: object,
                       on_shift: bool) -> tuple[str, list[str]]:
    """Record a shift start (``on_shift``) or end in Postgres; return the driver's vehicle type
    and, for a start, its active delivery ids (assigned, at_pickup, picked_up), read in the
    same transaction: what its availability must follow, whatever Redis remembers. An end
    returns no ids: the driver goes offline whatever it carries, so nothing is read.

    The start's read is a statement of its own, after the ``UPDATE``, not folded into it (a
    CTE would save a round trip). The ``UPDATE`` waits for the driver's row lock, which
    ``offer`` and ``accept`` hold while they assign a delivery (``dispatch.deliveries.store``);
    under READ COMMITTED only a statement that starts after that wait sees the delivery the
    lock holder committed. One statement reads with the snapshot taken before the wait, and
    would miss it: the driver would come back ``available`` with its new claim dropped."""
    driver = parse_uuid(str(driver_id), "driver_id")
    async with db.tenant_transaction(tenant_id) as tx:
        vehicle = await tx.fetchval(SHIFT_SQL, driver, on_shift)
        if vehicle is None:
            raise UnknownShiftDriver(driver)
        active = [r[0] for r in await tx.fetch(ACTIVE_DELIVERIES_SQL, driver)] if on_shift else []
    return vehicle, active
