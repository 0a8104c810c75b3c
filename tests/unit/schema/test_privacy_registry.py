"""The rule that finds columns which look personal, and what the registry check reports."""

import pytest

from schema.privacy.registry import NOT_PERSONAL, looks_personal, stale, uncovered


@pytest.mark.parametrize("column", [
    "name", "first_name", "last_name", "business_name", "phone_number", "alt_phone", "email",
    "delivery_address", "addresses", "current_location", "dropoff_location", "pickup_lat", "home_lng",
    "ip_address", "user_agent", "device_info", "date_of_birth", "gender", "license_number",
    "vehicle_registration", "tax_number", "content", "customer_feedback", "driver_notes",
    "delivery_instructions", "proof_of_delivery", "signature", "photo", "route_polyline",
    "from_number", "to_number",
])
def test_names_that_look_personal_are_caught(column: str) -> None:
    assert looks_personal(column)


@pytest.mark.parametrize("column", [
    "id", "tenant_id", "status", "created_at", "total_amount", "quantity", "sku", "token_hash",
    "error_message", "schema_name", "table_name", "rename_count", "planet", "phoneme_count_x",
])
def test_bookkeeping_and_look_alike_names_are_not(column: str) -> None:
    assert not looks_personal(column)


def test_a_new_personal_column_without_a_registry_row_is_reported_and_stale_rows_too() -> None:
    columns = [("customers", "first_name"), ("customers", "alt_phone"), ("products", "name"), ("orders", "id")]
    registered = {("customers", "first_name"), ("customers", "middle_name")}
    assert "products.name" in NOT_PERSONAL
    assert uncovered(columns, registered) == ["customers.alt_phone"]
    assert stale(columns, registered) == ["customers.middle_name"]
