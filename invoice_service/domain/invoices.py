"""Draft computation: plan + subscription + aggregated usage -> line items -> pieces (charges).

Usage arrives already aggregated by Postgres, per meter and per piece of the period (the piece
index is the number of split instants at or before the event; 0 when the draft is not split).
Line items are priced on the whole period; pieces get the line amount apportioned exactly.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from invoice_service.domain.dimensions import Dimensions, usage_key, variants
from invoice_service.domain.money import round_to_minor
from invoice_service.domain.pricing import Price, price_quantity
from invoice_service.domain.splitting import apportion, duration_us, intervals

_ZERO = Decimal(0)
_QUANTITY_SCALE = 9  # event quantities keep at most 9 decimals, so weights scale to integers exactly
# Event quantities (and the numeric properties a meter aggregates): at most 18 integer digits and
# 9 decimals, optionally negative.
QUANTITY_PATTERN = re.compile(r"-?(0|[1-9]\d{0,17})(\.\d{1,9})?")


class ChargeKind(enum.Enum):
    USAGE = "USAGE"
    ADD_ON = "ADD_ON"
    FIXED_FEE = "FIXED_FEE"
    LICENSE = "LICENSE"
    # A plan's minimum commitment per period (a component, never a line kind): its true-up line is a
    # FIXED_FEE line with variant TRUE_UP, so the ledger reserves against it as a fixed fee.
    COMMITMENT = "COMMITMENT"


TRUE_UP = "true_up"


class Aggregation(enum.Enum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    UNIQUE_COUNT = "UNIQUE_COUNT"


@dataclass(frozen=True)
class Component:
    """One priced thing of a plan: a meter's usage charge, a fixed fee, an add-on or a license."""

    kind: ChargeKind
    code: str
    name: str
    price: Price | None = None      # USAGE
    amount: Decimal = _ZERO         # FIXED_FEE per period; ADD_ON/LICENSE per unit per period; COMMITMENT
    dimensions: Dimensions | None = None  # USAGE: filters, group-by, time of use (domain/dimensions.py)


@dataclass(frozen=True)
class PlanTerms:
    plan_id: str
    currency: str
    scale: int
    components: tuple[Component, ...]


@dataclass(frozen=True)
class MeterUsage:
    """A meter's period total and each piece's share of it (piece index -> quantity)."""

    total: Decimal
    pieces: Mapping[int, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class LineItem:
    line_item_id: str
    kind: ChargeKind
    code: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount_minor: int
    service_start: datetime
    service_end: datetime
    unit: str = ""  # USAGE: the meter's usage unit ("" = none)
    variant: str = ""  # "model=large", "peak", "off_peak" (USAGE), TRUE_UP (commitment); "" = plain
    discount_minor: int = 0  # coupons on this line (domain/discounts.py); net = amount - discount
    discount_codes: tuple[str, ...] = ()
    tax_minor: int = 0  # tax of this line (domain/taxes.py)

    @property
    def net_minor(self) -> int:
        """What the line costs after discounts: what credits may pay (its pieces sum to it)."""
        return self.amount_minor - self.discount_minor

    @property
    def usage_key(self) -> str:
        return usage_key(self.code, self.variant)


@dataclass(frozen=True)
class Piece:
    charge_id: str
    line_item_id: str
    kind: ChargeKind
    name: str
    quantity: Decimal
    amount_minor: int
    service_start: datetime
    service_end: datetime


def line_item_id(position: int) -> str:
    return f"L{position + 1:03d}"


def compute_line_items(terms: PlanTerms, quantities: Mapping[str, int], usage: Mapping[str, MeterUsage],
                       start: datetime, end: datetime) -> list[LineItem]:
    """Line items in plan order. `quantities` are the subscription's add-on units and license seats;
    add-ons and licenses absent from it are not billed. Each amount is rounded half-up once. `usage`
    is keyed by `usage_key(meter, variant)`. A minimum commitment comes last: its true-up line is the
    commitment (rounded) less the usage lines' amounts, when that is positive."""
    items: list[LineItem] = []
    commitment: tuple[int, Component] | None = None
    for position, c in enumerate(terms.components):
        if c.kind is ChargeKind.USAGE:
            items.extend(_usage_lines(terms, position, c, usage, start, end))
            continue
        if c.kind is ChargeKind.COMMITMENT:
            commitment = (position, c)
            continue
        if c.kind is ChargeKind.FIXED_FEE:
            qty, unit, exact = Decimal(1), c.amount, c.amount
        else:
            if c.code not in quantities:
                continue
            qty = Decimal(quantities[c.code])
            unit, exact = c.amount, qty * c.amount
        items.append(LineItem(line_item_id(position), c.kind, c.code, c.name, qty, unit,
                              round_to_minor(exact, terms.scale), start, end))
    if commitment is not None:
        position, c = commitment
        used = sum(i.amount_minor for i in items if i.kind is ChargeKind.USAGE)
        short = round_to_minor(c.amount, terms.scale) - used
        if short > 0:
            unit = Decimal(short).scaleb(-terms.scale)
            items.append(LineItem(line_item_id(position), ChargeKind.FIXED_FEE, c.code, c.name, Decimal(1), unit,
                                  short, start, end, variant=TRUE_UP))
    return items


def _usage_lines(terms: PlanTerms, position: int, c: Component, usage: Mapping[str, MeterUsage],
                 start: datetime, end: datetime) -> list[LineItem]:
    assert c.price is not None
    if c.dimensions is None:
        pairs = [("", c.price)]
    else:
        prefix = c.code + "["
        seen = [k[len(prefix):-1] for k in usage if k.startswith(prefix)]
        pairs = variants(c.dimensions, c.price, seen)
    out: list[LineItem] = []
    for n, (variant, price) in enumerate(pairs):
        key = usage_key(c.code, variant)
        qty = usage[key].total if key in usage else _ZERO
        priced = price_quantity(price, qty)
        line_id = line_item_id(position) if c.dimensions is None else f"{line_item_id(position)}-{n + 1}"
        name = f"{c.name} ({variant})" if variant else c.name
        out.append(LineItem(line_id, ChargeKind.USAGE, c.code, name, qty, priced.unit_price,
                            round_to_minor(priced.amount, terms.scale), start, end, variant=variant))
    return out


def split_line_items(items: Sequence[LineItem], usage: Mapping[str, MeterUsage],
                     instants: Sequence[datetime]) -> list[Piece]:
    """Every line item cut at `instants` (normalized, inside the period). Usage is apportioned by
    each piece's quantity, everything else pro rata by time; pieces with amount 0 are left out
    (there is nothing to pay), their numbering stays stable."""
    pieces: list[Piece] = []
    for item in items:
        spans = intervals(item.service_start, item.service_end, instants)
        time_weights = [duration_us(s) for s in spans]
        quantities = [item.quantity] * len(spans)
        weights = time_weights
        if item.kind is ChargeKind.USAGE:
            by_piece = usage[item.usage_key].pieces if item.usage_key in usage else {}
            quantities = [by_piece.get(n, _ZERO) for n in range(len(spans))]
            usage_weights = [max(int(q.scaleb(_QUANTITY_SCALE)), 0) for q in quantities]
            if sum(usage_weights) > 0:
                weights = usage_weights
        amounts = apportion(item.net_minor, weights) if item.net_minor else [0] * len(spans)
        for n, (span, qty, amount) in enumerate(zip(spans, quantities, amounts, strict=True)):
            if amount == 0:
                continue
            pieces.append(Piece(f"{item.line_item_id}#{n + 1}", item.line_item_id, item.kind, item.code,
                                qty, amount, span[0], span[1]))
    return pieces


def digest(items: Sequence[LineItem], pieces: Sequence[Piece]) -> str:
    """A fingerprint of what would be billed and reserved; changes when any amount or piece does."""
    canon = {
        "items": [[i.line_item_id, i.kind.value, i.code, str(i.quantity), i.amount_minor, i.variant,
                   i.discount_minor] for i in items],
        "pieces": [[p.charge_id, p.kind.value, p.name, p.amount_minor, p.service_start.isoformat(),
                    p.service_end.isoformat()] for p in pieces],
    }
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class TaxTerms:
    """The tax rule an invoice was taxed by, as frozen on it (rate in percent, e.g. 19)."""

    region: str
    name: str
    rate_percent: Decimal
    inclusive: bool


@dataclass(frozen=True)
class Application:
    """Credit from one ledger lot applied to one charge (piece) of the invoice."""

    charge_id: str
    line_item_id: str
    lot_id: str
    lot_type: str
    amount_minor: int   # in the invoice currency (for a usage-unit lot: the value of `units`)
    unit: str = ""      # "" = a lot in the invoice currency; else the lot's usage unit
    units: Decimal = _ZERO  # units covered (usage-unit lots) or converted (credit-unit lots)
    rate: Decimal | None = None  # a credit-unit lot at a published rate: currency per unit
    rate_version: int = 0

    @property
    def converted(self) -> bool:
        return self.rate_version > 0


@dataclass(frozen=True)
class InvoiceView:
    """An invoice as stored (or as a draft would be recomputed now), for reads and rendering."""

    invoice_id: str
    customer_id: str
    ledger_account_id: str
    subscription_id: str
    plan_id: str
    currency: str
    scale: int
    status: str
    number: str
    period_start: datetime
    period_end: datetime
    line_items: tuple[LineItem, ...]
    charges: tuple[Piece, ...]
    applications: tuple[Application, ...]
    split_at: tuple[datetime, ...]
    draft_digest: str
    prepare_key: str
    subtotal_minor: int
    credits_minor: int
    created_at: datetime
    computed_at: datetime
    prepared_at: datetime | None = None
    finalized_at: datetime | None = None
    void_prepared_at: datetime | None = None
    voided_at: datetime | None = None
    credit_notes: tuple[str, ...] = ()
    abandoned_at: datetime | None = None
    abandon_reason: str = ""
    discount_minor: int = 0  # coupons, all lines (domain/discounts.py)
    tax_minor: int = 0       # tax, all lines (domain/taxes.py)
    tax: TaxTerms | None = None  # the rule the tax was computed by (None: the customer has no tax region)

    @property
    def amount_due_minor(self) -> int:
        """subtotal - discounts - credits (+ tax when it is charged on top, i.e. exclusive)."""
        exclusive = self.tax is not None and not self.tax.inclusive
        return self.subtotal_minor - self.discount_minor - self.credits_minor + (self.tax_minor if exclusive else 0)

    def credits_by_line(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.applications:
            out[a.line_item_id] = out.get(a.line_item_id, 0) + a.amount_minor
        return out

    def units_by_line(self) -> dict[str, Decimal]:
        """Units covered by usage-unit lots, per line item."""
        out: dict[str, Decimal] = {}
        for a in self.applications:
            if a.unit and not a.converted:
                out[a.line_item_id] = out.get(a.line_item_id, _ZERO) + a.units
        return out


def line_due(inv: InvoiceView, item: LineItem, credits_minor: int) -> int:
    """What is due on one line: net - credits (+ its tax when exclusive); lines sum to the invoice's."""
    exclusive = inv.tax is not None and not inv.tax.inclusive
    return item.net_minor - credits_minor + (item.tax_minor if exclusive else 0)
