"""Usage units as credits (SPEC §8): lots in a meter's usage unit pay its usage in units.

N units covered on a line of Q units remove N units from the billed quantity *before pricing*.
Which units are free matters under tiered prices; the rule is: **the covered units are the first N
units consumed in the period**, so the remaining Q - N are priced as the period's last units:

- PER_UNIT and GRADUATED: billed = price(Q) - price(N) (graduated: the first N units in the tiers
  they fall in, flat amounts of the tiers they touch included);
- VOLUME: the period's total Q still picks the tier; billed = (Q - N) x that tier's unit amount +
  its flat amount (all Q covered: nothing);
- PACKAGE: billed = price(Q - N) (whole packages of the units left);
- FLAT: billed = the flat amount unless all Q units are covered.

Value of the covered units = the line amount - round_half_up(billed), in the currency's minor
unit (so line amount = value + what is left, exactly). It is spread over the line's unit
applications in proportion to their units (largest remainder), never above what a piece costs; a
share a piece cannot take goes to the next application, then to the line's other pieces (as an
application of the same lot covering 0 units), so the line's value is always applied in full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from invoice_service.domain.invoices import Application, ChargeKind, LineItem, Piece
from invoice_service.domain.money import round_to_minor
from invoice_service.domain.pricing import Price, PriceModel, graduated_amount, price_quantity, volume_tier
from invoice_service.domain.splitting import apportion
from service_runtime.rejections import invalid

_ZERO = Decimal(0)


@dataclass(frozen=True)
class UnitCover:
    """What a usage-unit lot reserved against one unit charge (as the coordinator sends it)."""

    charge_id: str
    lot_id: str
    lot_type: str
    unit: str
    units: Decimal
    position: int  # its index in the request (named in rejections)


def billed_after_free_units(price: Price, quantity: Decimal, free: Decimal) -> Decimal:
    """The exact amount still billed for a period's `quantity` when its first `free` units are free."""
    q = max(quantity, _ZERO)
    n = min(max(free, _ZERO), q)
    rest = q - n
    if n == 0:
        return price_quantity(price, q).amount
    if price.model is PriceModel.FLAT:
        return price.flat_amount if rest > 0 else _ZERO
    if price.model is PriceModel.PER_UNIT:
        return rest * price.unit_amount
    if price.model is PriceModel.PACKAGE:
        return price_quantity(price, rest).amount
    if price.model is PriceModel.GRADUATED:
        return graduated_amount(price.tiers, q) - graduated_amount(price.tiers, n)
    tier = volume_tier(price.tiers, q)
    return rest * tier.unit_amount + tier.flat_amount if rest > 0 else _ZERO


def value_covers(items: Sequence[LineItem], pieces: Sequence[Piece], prices: Mapping[str, Price], scale: int,
                 covers: Sequence[UnitCover], field: str = "applications") -> list[Application]:
    """The applications of usage-unit lots, valued in minor units of the invoice currency.

    `prices` maps a usage line's id (a line of a segment after a subscription change) or else its
    `usage_key` (its meter and variant) to its price; a discounted
    line's value is at most its net. Each cover must name a usage piece
    of a meter counting in `unit`, and the units on one piece may not exceed its quantity."""
    by_id = {p.charge_id: p for p in pieces}
    lines = {i.line_item_id: i for i in items}
    left = {p.charge_id: p.quantity for p in pieces}
    per_line: dict[str, list[tuple[UnitCover, Piece]]] = {}
    for c in covers:
        n = c.position
        piece = by_id.get(c.charge_id)
        item = lines.get(piece.line_item_id) if piece else None
        if piece is None or item is None or piece.kind is not ChargeKind.USAGE or item.unit != c.unit:
            raise invalid(f"{field}[{n}].charge_id", f"no usage charge {c.charge_id!r} counted in {c.unit!r} "
                                                     "on this invoice (at these split instants)")
        if c.units <= 0 or c.units > left[c.charge_id]:
            raise invalid(f"{field}[{n}].units", f"must be positive and cover at most the {piece.quantity} "
                                                 f"units of {c.charge_id}")
        left[c.charge_id] -= c.units
        per_line.setdefault(item.line_item_id, []).append((c, piece))
    out: list[Application] = []
    for line_id, line_covers in per_line.items():
        item = lines[line_id]
        covered = sum((c.units for c, _ in line_covers), _ZERO)
        price = prices.get(item.line_item_id) or prices[item.usage_key]  # a line of a segment: its own price
        billed = round_to_minor(billed_after_free_units(price, item.quantity, covered), scale)
        value = max(min(item.amount_minor - billed, item.net_minor), 0)
        line_pieces = [p for p in pieces if p.line_item_id == line_id]
        out.extend(_spread(value, line_covers, line_pieces))
    return out


def _spread(value: int, covers: Sequence[tuple[UnitCover, Piece]], line_pieces: Sequence[Piece]) -> list[Application]:
    """`value` over the covers by units, each piece taking at most its amount; the rest to other pieces."""
    weights = [int(c.units.scaleb(9)) for c, _ in covers]
    shares = apportion(value, weights) if value and sum(weights) else [0] * len(covers)
    room = {p.charge_id: p.amount_minor for p in line_pieces}
    out: list[Application] = []
    carry = 0
    for (c, piece), share in zip(covers, shares, strict=True):
        take = min(share + carry, room[piece.charge_id])
        carry = share + carry - take
        room[piece.charge_id] -= take
        out.append(Application(c.charge_id, piece.line_item_id, c.lot_id, c.lot_type, take, c.unit, c.units))
    first = covers[0][0]
    for piece in line_pieces:
        if carry == 0:
            break
        take = min(carry, room[piece.charge_id])
        if take:
            carry -= take
            room[piece.charge_id] -= take
            out.append(Application(piece.charge_id, piece.line_item_id, first.lot_id, first.lot_type, take,
                                   first.unit, _ZERO))
    return out


def unit_charges(items: Sequence[LineItem], pieces: Sequence[Piece]) -> list[Piece]:
    """The usage pieces of lines whose meter counts in a unit (quantity > 0): what lots in that unit
    may cover, unit by unit, before the currency charges are reserved."""
    units = {i.line_item_id: i.unit for i in items if i.kind is ChargeKind.USAGE and i.unit}
    return [p for p in pieces if p.line_item_id in units and p.quantity > 0]


def left_to_pay(pieces: Sequence[Piece], applications: Sequence[Application]) -> dict[str, int]:
    """Per charge, what is left to pay in the currency after `applications`."""
    left = {p.charge_id: p.amount_minor for p in pieces}
    for a in applications:
        left[a.charge_id] -= a.amount_minor
    return left
