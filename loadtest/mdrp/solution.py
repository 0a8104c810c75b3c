"""A solution in the set's three space-separated files: written, and read back for checking.

``solution_info_assignments.txt``: ``assignment_time pickup_time courier order...`` (the
bundle in drop-off order). ``solution_info_orders.txt``: one line per order of the instance,
undelivered ones with empty times and courier (the evaluator counts a row with every field
as delivered). ``solution_info_couriers.txt``: one line per move, ``courier departure_time
origin destination``, each courier's moves together and in time order, origin ``0`` for the
courier's start (the evaluator groups the moves by consecutive courier id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import BAD_FORMAT, MISSING_FIELD, NOT_FOUND, WRONG_TYPE
from loadtest.mdrp.instance import Instance, InvalidInstance

__all__ = ["ASSIGNMENTS", "COURIERS", "ORDERS", "Move", "OrderRow", "Solution", "Trip",
           "read_solution", "write_solution"]

ASSIGNMENTS = "solution_info_assignments.txt"
ORDERS = "solution_info_orders.txt"
COURIERS = "solution_info_couriers.txt"
START = "0"


@dataclass(frozen=True, slots=True)
class Trip:
    """One assignment: a bundle of one restaurant's orders, in drop-off order."""

    assigned_at: int
    pickup_at: int
    courier: str
    orders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OrderRow:
    order: str
    pickup_at: int | None
    dropoff_at: int | None
    courier: str | None


@dataclass(frozen=True, slots=True)
class Move:
    courier: str
    departure: int
    origin: str          # START for the courier's start
    destination: str


@dataclass(frozen=True)
class Solution:
    trips: tuple[Trip, ...]
    orders: tuple[OrderRow, ...]
    moves: tuple[Move, ...]


def write_solution(instance: Instance, solution: Solution, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["assignment_time pickup_time courier orders"]
    lines += [f"{t.assigned_at} {t.pickup_at} {t.courier} {' '.join(t.orders)}" for t in solution.trips]
    (directory / ASSIGNMENTS).write_text("\n".join(lines) + "\n")

    def opt(value: object) -> str:
        return "" if value is None else str(value)

    lines = ["order placement_time restaurant x y ready_time pickup_time dropoff_time courier"]
    for row in solution.orders:
        o = instance.order(row.order)
        lines.append(f"{o.id} {o.placed_at} {o.restaurant} {_coord(o.x)} {_coord(o.y)} {o.ready_at} "
                     f"{opt(row.pickup_at)} {opt(row.dropoff_at)} {opt(row.courier)}")
    (directory / ORDERS).write_text("\n".join(lines) + "\n")
    moves = sorted(solution.moves, key=lambda m: (m.courier, m.departure))
    lines = ["courier departure_time origin destination"]
    lines += [f"{m.courier} {m.departure} {m.origin} {m.destination}" for m in moves]
    (directory / COURIERS).write_text("\n".join(lines) + "\n")


def _coord(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _minute(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInstance(WRONG_TYPE, where, f"{value[:40]!r} is not a whole minute") from None


def _lines(directory: Path, name: str) -> list[tuple[int, list[str]]]:
    try:
        text = (directory / name).read_text("utf-8")
    except FileNotFoundError:
        raise InvalidInstance(NOT_FOUND, name, f"missing from {directory}") from None
    except UnicodeDecodeError:
        raise InvalidInstance(BAD_FORMAT, name, "not UTF-8 text") from None
    return [(n, line.split(" ")) for n, line in enumerate(text.splitlines()[1:], start=2) if line.strip()]


def read_solution(directory: str | Path) -> Solution:
    """Read the three files back (what ``evaluate.check`` is run on in the tests)."""
    directory = Path(directory)
    trips = []
    for n, f in _lines(directory, ASSIGNMENTS):
        f = [x for x in f if x]
        if len(f) < 4:
            raise InvalidInstance(MISSING_FIELD, f"{ASSIGNMENTS}:{n}", "assignment_time pickup_time courier order...")
        trips.append(Trip(_minute(f[0], f"{ASSIGNMENTS}:{n}:assignment_time"),
                          _minute(f[1], f"{ASSIGNMENTS}:{n}:pickup_time"), f[2], tuple(f[3:])))
    rows = []
    for n, f in _lines(directory, ORDERS):
        if len(f) != 9:
            raise InvalidInstance(MISSING_FIELD, f"{ORDERS}:{n}", f"{len(f)} fields, 9 expected")
        rows.append(OrderRow(f[0], _minute(f[6], f"{ORDERS}:{n}:pickup_time") if f[6] else None,
                             _minute(f[7], f"{ORDERS}:{n}:dropoff_time") if f[7] else None, f[8] or None))
    moves = []
    for n, f in _lines(directory, COURIERS):
        f = [x for x in f if x]
        if len(f) != 4:
            raise InvalidInstance(MISSING_FIELD, f"{COURIERS}:{n}", f"{len(f)} fields, 4 expected")
        moves.append(Move(f[0], _minute(f[1], f"{COURIERS}:{n}:departure_time"), f[2], f[3]))
    return Solution(tuple(trips), tuple(rows), tuple(moves))
