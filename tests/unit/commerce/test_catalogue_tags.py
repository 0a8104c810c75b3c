"""Which cache tags a catalogue change invalidates: only the entries that show it."""

from __future__ import annotations

from dispatch.commerce.catalogue.tags import product_update_tags, stock_tags


def test_each_change_invalidates_only_what_shows_it():
    pid = "p1"
    for field in ("price", "name", "description"):
        assert product_update_tags(pid, [field]) == ["product:p1", "catalogue"]
    # the inventory entry carries the status: it decides who may see the stock
    assert product_update_tags(pid, ["status"]) == ["product:p1", "catalogue", "inventory:p1"]
    assert product_update_tags(pid, ["tags"]) == ["product:p1"]
    assert product_update_tags(pid, ["cost"]) == []
    # the product entry holds no stock, so a stock change leaves it (and every list) alone
    assert stock_tags(pid) == ["inventory:p1"]
