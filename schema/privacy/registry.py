"""Which columns hold personal information: the rule that finds candidates, and the columns
that match it but are not personal (with the reason). Pure: no I/O.

The registry itself is data: ``personal_data_registry`` in the control database, filled by the
control migrations (``0007_personal_data_registry.sql``), one row per (table, column) with its
category, sensitivity, purpose, retention and how it is anonymised. A column whose *name* looks
personal must be either in the registry or in ``NOT_PERSONAL`` here; the schema test
(``tests/integration/schema/test_privacy_registry.py``) fails otherwise, so a migration that
adds ``customers.alt_phone`` without a registry row (or a reasoned exclusion) cannot go in
unnoticed. Names are only a net: a column called ``extra`` holding phone numbers would pass
it, which is why the registry is reviewed with every migration that touches people.
"""

from __future__ import annotations

import re

# Names that suggest personal information: identity, contact, address and location, free
# text people write, message contents, proof of delivery, network and device identifiers.
PERSONAL_NAME = re.compile(
    r"(^|_)(name|first_name|last_name|phone|phone_number|phone_normalized|email|address|addresses"
    r"|location|lat|lng|latitude|longitude|ip|ip_address|birth|date_of_birth|gender|license_number"
    r"|registration|vehicle_registration|tax_number|content|message|feedback|notes|instructions"
    r"|proof_of_delivery|signature|photo|device_info|user_agent|polyline|from_number|to_number)($|_)")

# Bookkeeping names the rule would catch in every table that has them (never personal).
TECHNICAL = frozenset({"error_message", "schema_name", "table_name", "column_name", "metric_name",
                       "database_name", "shard_name"})
# Columns the rule matches that hold no personal information, and why.
NOT_PERSONAL: dict[str, str] = {
    "products.name": "a product's name",
    "categories.name": "a catalogue category's name",
    "product_options.name": "a product option's label (size, colour)",
    "product_variants.name": "a product variant's label",
    "promotions.name": "a promotion's name",
    "roles.name": "a role's name",
    "inventory.location_id": "the id of a stock location, not of a person",
    "whatsapp_messages.message_id": "Meta's id of a message; the message's content is registered",
    "conversations.last_message_at": "a timestamp",
    "tenants.name": "the name of a tenant organisation",
    "schema_migrations.name": "a migration file's name",
    "backup_log.location": "a backup file's path",
    "restore_log.location": "the path of the backup file restored",
    "delivery_proof_images.content_type": "the stored image's media type (image/jpeg or image/png)",
    "proof_settings.require_photo": "a tenant setting: whether deliveries need a photo",
    "proof_settings.require_signature": "a tenant setting: whether deliveries need a signature",
}


def looks_personal(column: str) -> bool:
    return column not in TECHNICAL and PERSONAL_NAME.search(column) is not None


def uncovered(columns: list[tuple[str, str]], registered: set[tuple[str, str]]) -> list[str]:
    """``table.column`` of every column whose name looks personal and that is neither in the
    registry nor reasoned away in ``NOT_PERSONAL``."""
    return sorted(f"{t}.{c}" for t, c in columns
                  if looks_personal(c) and (t, c) not in registered and f"{t}.{c}" not in NOT_PERSONAL)


def stale(columns: list[tuple[str, str]], registered: set[tuple[str, str]]) -> list[str]:
    """Registry rows naming a column that does not exist (renamed or dropped by a migration)."""
    present = set(columns)
    return sorted(f"{t}.{c}" for t, c in registered if (t, c) not in present)
