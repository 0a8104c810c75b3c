"""Which backups to keep: pure rules over (tenant, created_at, kind), no I/O.

* A backup is ``weekly`` when it is the tenant's first completed backup of its ISO week
  (UTC), ``daily`` otherwise. The kind is decided once, when the backup completes, and
  stored: pruning a weekly backup never promotes a later one, so what an operator saw in
  ``wakala backup list`` stays true.
* Daily backups are kept ``daily_days`` (7), weekly ones ``weekly_days`` (30), counted from
  their creation; a backup exactly at the limit is still kept.
* A tenant's newest completed backup is always kept, however old: a tenant whose backups
  stopped (suspended, a key missing) keeps something to restore from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class LoggedBackup:
    backup_id: str
    tenant_id: str
    created_at: datetime
    kind: str   # 'daily' or 'weekly'


def _iso_week(moment: datetime) -> tuple[int, int]:
    year, week, _ = moment.astimezone(UTC).isocalendar()
    return year, week


def kind_for(created_at: datetime, earlier: Iterable[datetime]) -> str:
    """``weekly`` unless one of the tenant's ``earlier`` completed backups is in the same ISO week."""
    week = _iso_week(created_at)
    for other in earlier:
        if other < created_at and _iso_week(other) == week:
            return "daily"
    return "weekly"


def expired(backups: Iterable[LoggedBackup], now: datetime, *, daily_days: int = 7,
            weekly_days: int = 30) -> list[LoggedBackup]:
    """The completed backups to delete at ``now`` (oldest first)."""
    backups = list(backups)
    newest: dict[str, LoggedBackup] = {}
    for b in backups:
        if b.tenant_id not in newest or b.created_at > newest[b.tenant_id].created_at:
            newest[b.tenant_id] = b
    keep_days = {"daily": daily_days, "weekly": weekly_days}
    doomed = []
    for b in backups:
        if newest[b.tenant_id] is b:
            continue
        days = keep_days.get(b.kind, daily_days)
        if now - b.created_at > timedelta(days=days):
            doomed.append(b)
    return sorted(doomed, key=lambda b: (b.created_at, b.backup_id))
