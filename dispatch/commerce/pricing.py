"""Money rules of an order: cents, VAT, the delivery fee, fair splits. Pure, ``Decimal`` only.

* Every amount is a ``Decimal`` quantized to cents with ROUND_HALF_UP; a float never enters.
* **VAT** (South Africa, 15 %) is *inclusive* by default: shelf prices in South Africa must
  include VAT (Consumer Protection Act), so the catalogue's prices are what the customer
  pays and ``tax_amount`` is the VAT contained in them (``amount * rate / (1 + rate)``).
  ``WAKALA_PRICES_INCLUDE_VAT=0`` treats prices as exclusive: VAT is added on top. VAT is
  charged on the goods after discounts and on the delivery fee (a taxable supply), each line
  and the fee rounded on its own, so the order's VAT is the sum of the amounts shown.
* **Delivery fee**: ``base + per_km * km`` on the straight-line (PostGIS) distance from the
  vendor to the delivery location, metres rounded to whole metres, the fee to cents.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

from schema.errors import ConfigError

__all__ = ["CENT", "ZERO", "PricingSettings", "Totals", "allocate", "delivery_fee", "money",
           "order_totals", "refund_share"]

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def money(value: Decimal | int) -> Decimal:
    """``value`` in cents, half up. Floats are refused: they cannot say 0.1 exactly."""
    if isinstance(value, float):
        raise TypeError("money is Decimal, never float")
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def _env_decimal(env: Mapping[str, str], name: str, default: str, lo: str, hi: str) -> Decimal:
    raw = env.get(name) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal number, got {raw!r}") from None
    if not (value.is_finite() and Decimal(lo) <= value <= Decimal(hi)):
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {raw!r}")
    return value


@dataclass(frozen=True)
class PricingSettings:
    vat_rate: Decimal = Decimal("0.15")
    prices_include_vat: bool = True
    delivery_base_fee: Decimal = Decimal("10.00")
    delivery_fee_per_km: Decimal = Decimal("4.00")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PricingSettings:
        env = os.environ if env is None else env
        return cls(
            vat_rate=_env_decimal(env, "WAKALA_VAT_RATE", "0.15", "0", "1"),
            prices_include_vat=env.get("WAKALA_PRICES_INCLUDE_VAT", "1").lower() not in ("0", "false", "no"),
            delivery_base_fee=money(_env_decimal(env, "WAKALA_DELIVERY_BASE_FEE", "10.00", "0", "10000")),
            delivery_fee_per_km=money(_env_decimal(env, "WAKALA_DELIVERY_FEE_PER_KM", "4.00", "0", "10000")),
        )


def delivery_fee(distance_m: float | int, settings: PricingSettings) -> Decimal:
    """The fee for a delivery of ``distance_m`` metres (straight line, vendor to customer)."""
    metres = Decimal(round(distance_m))
    return money(settings.delivery_base_fee + settings.delivery_fee_per_km * metres / 1000)


def allocate(total: Decimal, weights: Sequence[Decimal]) -> list[Decimal]:
    """Split ``total`` (cents) over ``weights`` in proportion, in cents that add up exactly.

    Largest remainder: everyone gets the floor of their share, the cents left over go to the
    largest remainders (earliest first on ties). No share exceeds its weight when
    ``total <= sum(weights)`` and weights are whole cents.
    """
    if not weights:
        return []
    whole = sum(weights, ZERO)
    if whole <= 0:
        return [ZERO] * len(weights)
    exact = [total * w / whole for w in weights]
    shares = [e.quantize(CENT, rounding=ROUND_DOWN) for e in exact]
    left = int((total - sum(shares, ZERO)) / CENT)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[:left]:
        shares[i] += CENT
    return shares


@dataclass(frozen=True)
class Totals:
    subtotal: Decimal            # the goods at catalogue prices
    discount: Decimal            # promotions, all lines
    delivery_fee: Decimal
    tax: Decimal                 # VAT: contained in the amounts (inclusive) or added (exclusive)
    total: Decimal               # what the customer pays
    line_tax: tuple[Decimal, ...]
    fee_tax: Decimal


def _vat(amount: Decimal, settings: PricingSettings) -> Decimal:
    rate = settings.vat_rate
    return money(amount * rate / (1 + rate)) if settings.prices_include_vat else money(amount * rate)


def order_totals(
    line_totals: Sequence[Decimal], line_discounts: Sequence[Decimal], fee: Decimal,
    settings: PricingSettings,
) -> Totals:
    """Subtotal, discount, VAT and total of an order from its lines and delivery fee."""
    subtotal = sum(line_totals, ZERO)
    discount = sum(line_discounts, ZERO)
    line_tax = tuple(_vat(t - d, settings) for t, d in zip(line_totals, line_discounts, strict=True))
    fee_tax = _vat(fee, settings)
    tax = sum(line_tax, ZERO) + fee_tax
    total = subtotal - discount + fee + (ZERO if settings.prices_include_vat else tax)
    return Totals(money(subtotal), money(discount), money(fee), money(tax), money(total), line_tax,
                  fee_tax)


def refund_share(line_paid: Decimal, quantity: int, already_returned: int, returning: int) -> Decimal:
    """What returning ``returning`` more units of a line refunds, of the ``line_paid`` it cost.

    Cumulative rounding (the refund of units 1..k is ``money(paid * k / n)``): however a line
    is returned, in one go or unit by unit, its refunds add up to exactly what was paid.
    """
    upto = already_returned + returning
    if not (quantity > 0 and 0 <= already_returned and 0 < returning and upto <= quantity):
        raise ValueError(f"cannot return {returning} more of {quantity} ({already_returned} back)")
    return money(line_paid * upto / quantity) - money(line_paid * already_returned / quantity)
