"""Subscriptions that change: billing schedules (trials, calendar alignment, cancellation) and phases.

A **schedule** turns a subscription into periods. Billing starts at `billing_start` (the anchor, or
the end of the trial: a trial is a free period before billing starts, nothing in it is billed).
Periods repeat every `months` from a base: the billing start itself (anchor-aligned), or the
calendar boundary at or before it (calendar-aligned: the 1st of the month, of the quarter
Jan/Apr/Jul/Oct, or Jan 1, in UTC). Period k's **nominal** span is [base + k*months, base + (k+1)*months);
it is billed from max(nominal start, billing start) to min(nominal end, ends_at): a calendar-aligned
subscription's first period is partial, and a cancelled one's last period ends at the cancellation.

A **phase** is what the subscription bills from an instant on: plan, plan version, add-on units,
license seats and per-customer price overrides. An UpdateSubscription, CancelSubscription or
MigrateSubscription at an instant inside a period cuts that period into **segments**, one per phase.

Pro-rating (fixed fees, add-ons, licenses) — the one rounding rule:
- a component's rate r_i in a segment is its full-period amount under that segment's phase (exact
  Decimal: fee, or units x unit amount);
- the cumulative exact charge at instant t is C(t) = sum over the segments before t of
  r_i x (overlap in microseconds) / (nominal period in microseconds), as an exact fraction;
- a segment [a, b) bills round_half_up(C(b)) - round_half_up(C(a)) minor units, with C(period start) = 0.
So the segments of a line always sum exactly to round_half_up of the exact total, and a component
unchanged over a whole nominal period bills exactly its unrounded-then-rounded full amount, as
before. Usage is priced per segment, on the events of that segment only, under the plan in force at
their event time (tiers restart at a change).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from invoice_service.domain.invoices import (
    TRUE_UP,
    ChargeKind,
    Component,
    LineItem,
    MeterUsage,
    Piece,
    PlanTerms,
    compute_line_items,
    line_item_id,
    split_line_items,
)
from invoice_service.domain.periods import add_months
from invoice_service.domain.periods import period_containing as _anchored_containing
from invoice_service.domain.pricing import Price

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class BilledPeriod:
    """A billing period as billed (`start`, `end`) and its nominal full-length span (the pro-rating base)."""

    index: int
    start: datetime
    end: datetime
    nominal_start: datetime
    nominal_end: datetime

    @property
    def partial(self) -> bool:
        return (self.start, self.end) != (self.nominal_start, self.nominal_end)


def calendar_base(instant: datetime, months: int) -> datetime:
    """The calendar boundary (UTC) at or before `instant` for periods of `months` months."""
    t = instant.astimezone(UTC)
    month0 = ((t.month - 1) // months) * months
    return datetime(t.year, month0 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Schedule:
    """A subscription's periods: see the module docstring."""

    anchor: datetime
    months: int
    trial_end: datetime | None = None
    calendar_aligned: bool = False
    ends_at: datetime | None = None

    @property
    def billing_start(self) -> datetime:
        return max(self.anchor, self.trial_end) if self.trial_end else self.anchor

    @property
    def base(self) -> datetime:
        start = self.billing_start
        return calendar_base(start, self.months) if self.calendar_aligned else start

    def period(self, index: int) -> BilledPeriod | None:
        """Period `index` (0 = the first billed), or None if it does not exist (before the start, after the end)."""
        if index < 0:
            return None
        n0 = add_months(self.base, index * self.months)
        n1 = add_months(self.base, (index + 1) * self.months)
        start = max(n0, self.billing_start)
        end = min(n1, self.ends_at) if self.ends_at is not None else n1
        if start >= end:
            return None
        return BilledPeriod(index, start, end, n0, n1)

    def period_containing(self, instant: datetime) -> BilledPeriod | None:
        """The billed period whose [start, end) holds `instant`, or None (trial, before start, after the end)."""
        if instant < self.billing_start or (self.ends_at is not None and instant >= self.ends_at):
            return None
        return self.period(_anchored_containing(self.base, self.months, instant).index)

    def period_starting_at(self, start: datetime) -> BilledPeriod | None:
        p = self.period_containing(start)
        return p if p is not None and p.start == start else None

    def invoiced_through(self, settled_starts: set[datetime], max_periods: int) -> datetime:
        """The start of the earliest billed period whose invoice is not FINALIZED, VOIDED or ABANDONED
        (periods.SETTLED_STATUSES).

        Every charge with a service time before it has been invoiced for good: events of a finalized
        period are refused, a voided period is not re-billed, an abandoned one is never billed, and a
        trial is never billed. A cancelled subscription whose periods are all settled is settled through
        its end. The ledger's expiry waits for it."""
        for index in range(max_periods + 1):
            p = self.period(index)
            if p is None:
                return self.ends_at or self.billing_start
            if p.start not in settled_starts or index == max_periods:
                return p.start
        raise AssertionError("unreachable")

    def periods_until(self, cutoff: datetime, limit: int) -> list[BilledPeriod]:
        """The billed periods ending at or before `cutoff`, in order, at most `limit`."""
        out: list[BilledPeriod] = []
        for index in range(limit):
            p = self.period(index)
            if p is None or p.end > cutoff:
                break
            out.append(p)
        return out


@dataclass(frozen=True)
class Phase:
    """What a subscription bills from `effective_at` on (until the next phase)."""

    effective_at: datetime
    plan_id: str
    plan_version: int
    quantities: Mapping[str, int] = field(default_factory=dict)  # add-on units and license seats by code
    overrides: Mapping[str, Decimal | Price] = field(default_factory=dict)  # code -> amount or usage price


@dataclass(frozen=True)
class Segment:
    """A part of a billed period under one phase."""

    phase: Phase
    start: datetime
    end: datetime


def segments(phases: Sequence[Phase], start: datetime, end: datetime) -> list[Segment]:
    """[start, end) cut at the phases' effective instants; each part under the phase in force.

    `phases` sorted by effective_at; the first must be in force at `start`."""
    assert phases and phases[0].effective_at <= start, "no phase in force at the period start"
    out: list[Segment] = []
    for current, following in itertools.zip_longest(phases, phases[1:]):
        seg_start = max(current.effective_at, start)
        seg_end = min(following.effective_at, end) if following is not None else end
        if seg_start < seg_end:
            out.append(Segment(current, seg_start, seg_end))
    return out


def apply_overrides(components: Sequence[Component], overrides: Mapping[str, Decimal | Price]) -> tuple[Component, ...]:
    """The plan's components with the customer's prices: a usage price, or an amount (fee, unit, seat)."""
    out: list[Component] = []
    for c in components:
        o = overrides.get(c.code)
        if o is None:
            out.append(c)
        elif c.kind is ChargeKind.USAGE:
            assert isinstance(o, Price)
            out.append(replace(c, price=o))  # a dimensional charge keeps its dimensions
        else:
            assert isinstance(o, Decimal)
            out.append(replace(c, amount=o))
    return tuple(out)


def _round_half_up(x: Fraction) -> int:
    """ROUND_HALF_UP of a non-negative exact fraction (amounts here are never negative)."""
    return int((2 * x.numerator + x.denominator) // (2 * x.denominator))


def prorate(rates: Sequence[Decimal], spans: Sequence[tuple[datetime, datetime]], nominal: tuple[datetime, datetime],
            scale: int) -> list[int]:
    """Minor units per segment for full-period `rates` (exact currency amounts) over `spans`
    (consecutive, inside `nominal`): cumulative rounding, see the module docstring.

    Invariant (tests/invoice/test_lifecycle_rules.py, seeded): the parts are >= 0 and sum exactly to
    round_half_up(the exact total); one rate over the whole nominal period sums to round_half_up(rate)."""
    total_us = (nominal[1] - nominal[0]) // _MICROSECOND
    assert total_us > 0 and len(rates) == len(spans)
    unit = Fraction(10) ** scale
    cumulative = Fraction(0)
    billed = 0
    out: list[int] = []
    for rate, (a, b) in zip(rates, spans, strict=True):
        assert rate >= 0 and nominal[0] <= a <= b <= nominal[1]
        cumulative += Fraction(rate) * unit * ((b - a) // _MICROSECOND) / total_us
        rounded = _round_half_up(cumulative)
        out.append(rounded - billed)
        billed = rounded
    return out


def days_text(start: datetime, end: datetime) -> str:
    """A segment's length for people: whole days when it is whole days, else hours."""
    span = end - start
    if span % timedelta(days=1) == timedelta(0):
        return f"{span // timedelta(days=1)}d"
    return f"{span / timedelta(hours=1):.2f}h".replace(".00h", "h")


@dataclass(frozen=True)
class SegmentTerms:
    """A segment with its priced terms (overrides applied) and the usage of its own events."""

    segment: Segment
    terms: PlanTerms
    usage: Mapping[str, MeterUsage]  # piece indices local to the segment (0 = its first piece)


def usage_by_segment(raw: Mapping[str, Mapping[int, Decimal]], peak_meters: frozenset[str],
                     edges: Sequence[datetime], parts: Sequence[Segment]) -> list[dict[str, MeterUsage]]:
    """Splits usage aggregated per meter and per global piece (the number of `edges` at or before the
    event; `edges` = the lot instants and the segment boundaries inside the period, sorted) into each
    segment's own usage, pieces renumbered from 0. A MAX meter's total is its largest piece."""
    out: list[dict[str, MeterUsage]] = []
    for part in parts:
        offset = sum(1 for e in edges if e <= part.start)
        count = 1 + sum(1 for e in edges if part.start < e < part.end)
        usage: dict[str, MeterUsage] = {}
        for code, by_piece in raw.items():
            local = {g - offset: q for g, q in by_piece.items() if offset <= g < offset + count}
            if local:
                values = local.values()
                total = max(values) if code in peak_meters else sum(values, Decimal(0))
                usage[code] = MeterUsage(total, local)
        out.append(usage)
    return out


def segment_line_items(parts: Sequence[SegmentTerms], period: BilledPeriod) -> list[LineItem]:
    """Line items per segment (plan order within a segment), then the commitment true-up over the
    whole period; cut them into pieces with `segment_pieces` (after coupons).

    A period billed whole under one phase gives exactly the items of `compute_line_items` (same ids,
    same amounts). Otherwise fixed fees, add-ons, licenses and the minimum commitment are pro-rated
    (`prorate`, per code across the segments) and described with their share of the nominal period;
    line ids continue across segments (segment k's ids start after the previous segments'
    components; a dimensional line keeps its suffix, `L004-2`). Usage is priced per segment, each
    (meter, variant) on the segment's own total. The true-up (a FIXED_FEE line with variant
    TRUE_UP, last) bills the pro-rated commitment less all the usage lines of the period, when positive."""
    nominal = (period.nominal_start, period.nominal_end)
    whole = len(parts) == 1 and not period.partial
    spans = [(p.segment.start, p.segment.end) for p in parts]
    rates: dict[str, list[Decimal]] = {}
    for k, part in enumerate(parts):
        for c in part.terms.components:
            rate = _full_rate(c, part.segment.phase.quantities)
            if rate is not None:
                rates.setdefault(c.code, [Decimal(0)] * len(parts))[k] = rate
    scale = parts[0].terms.scale
    prorated = {code: prorate(r, spans, nominal, scale) for code, r in rates.items()}
    items: list[LineItem] = []
    offset = 0
    commitment: tuple[str, Component] | None = None
    for k, part in enumerate(parts):
        seg = part.segment
        terms = replace(part.terms, components=tuple(c for c in part.terms.components
                                                     if c.kind is not ChargeKind.COMMITMENT))
        for position, c in enumerate(part.terms.components):
            if c.kind is ChargeKind.COMMITMENT:
                commitment = (line_item_id(offset + position), c)
        for item in compute_line_items(terms, seg.phase.quantities, part.usage, seg.start, seg.end):
            items.append(item if whole else _segment_item(item, part, k, offset, len(parts), nominal, prorated))
        offset += len(part.terms.components)
    if commitment is not None:
        line_id, c = commitment
        used = sum(i.amount_minor for i in items if i.kind is ChargeKind.USAGE)
        short = sum(prorated[c.code]) - used
        if short > 0:
            items.append(LineItem(line_id, ChargeKind.FIXED_FEE, c.code, c.name, Decimal(1),
                                  Decimal(short).scaleb(-scale), short, period.start, period.end, variant=TRUE_UP))
    return items


def _segment_item(item: LineItem, part: SegmentTerms, k: int, offset: int, count: int,
                  nominal: tuple[datetime, datetime], prorated: Mapping[str, list[int]]) -> LineItem:
    """A line of segment `k` of a split (or partial) period: its id after the previous segments', a
    usage line named with its segment, any other pro-rated."""
    seg = part.segment
    base, dash, suffix = item.line_item_id.partition("-")  # "L004" or a dimensional line's "L004-2"
    new_id = line_item_id(offset + int(base[1:]) - 1) + dash + suffix  # numbered by plan position
    if item.kind is ChargeKind.USAGE:
        label = f" ({seg.start:%Y-%m-%d %H:%M} to {seg.end:%Y-%m-%d %H:%M}, plan {seg.phase.plan_id} " \
                f"v{seg.phase.plan_version})" if count > 1 else ""
        return replace(item, line_item_id=new_id, description=item.description + label)
    share = f" (pro-rated {days_text(seg.start, seg.end)} of {days_text(*nominal)})"
    return replace(item, line_item_id=new_id, description=item.description + share,
                   amount_minor=prorated[item.code][k])


def segmented_line_items(parts: Sequence[SegmentTerms], period: BilledPeriod,
                         instants: Sequence[datetime]) -> tuple[list[LineItem], list[Piece]]:
    """`segment_line_items` and their pieces cut at the lot `instants` (no coupons)."""
    items = segment_line_items(parts, period)
    return items, segment_pieces(items, parts, instants)


def segment_pieces(items: Sequence[LineItem], parts: Sequence[SegmentTerms],
                   instants: Sequence[datetime]) -> list[Piece]:
    """Every line cut at the lot `instants` inside its span, usage by its own segment's pieces."""
    usage = {(p.segment.start, p.segment.end): p.usage for p in parts}
    pieces: list[Piece] = []
    for item in items:
        inside = [t for t in instants if item.service_start < t < item.service_end]
        pieces += split_line_items([item], usage.get((item.service_start, item.service_end), {}), inside)
    return pieces


def _full_rate(c: Component, quantities: Mapping[str, int]) -> Decimal | None:
    """A component's exact amount for a whole period under a phase (None: usage, or an add-on/license not taken)."""
    if c.kind in (ChargeKind.FIXED_FEE, ChargeKind.COMMITMENT):
        return c.amount
    if c.kind in (ChargeKind.ADD_ON, ChargeKind.LICENSE) and c.code in quantities:
        return c.amount * quantities[c.code]
    return None


# ---- one meter, one subscription at a time ------------------------------------------------------
# Usage events belong to the customer, so every subscription whose plan prices a meter bills that
# meter's events. Invariant (kept by storage/subscription_changes.check_no_double_pricing in the
# transaction of every CreateSubscription, UpdateSubscription and MigrateSubscription; checked by the
# seeded random tests in tests/invoice/test_lifecycle_rules.py and test_double_pricing_api.py): two
# subscriptions of one customer never price one meter over overlapping instants, so no event is
# ever priced twice.


@dataclass(frozen=True)
class PricedSpan:
    """`subscription_id` prices `meter` over [start, end) (end None: open-ended)."""

    subscription_id: str
    meter: str
    start: datetime
    end: datetime | None


def priced_spans(subscription_id: str, schedule: Schedule,
                 phases: Sequence[tuple[datetime, frozenset[str]]]) -> list[PricedSpan]:
    """Where a subscription prices each meter: each phase's (effective_at, usage meters) from its
    instant to the next phase's, inside the billed time [billing start, ends_at) (a trial prices nothing)."""
    out: list[PricedSpan] = []
    ordered = sorted(phases, key=lambda p: p[0])
    for (at, meters), following in itertools.zip_longest(ordered, ordered[1:]):
        start = max(at, schedule.billing_start)
        ends = [t for t in (following[0] if following else None, schedule.ends_at) if t is not None]
        end = min(ends) if ends else None
        if end is not None and end <= start:
            continue
        out += [PricedSpan(subscription_id, m, start, end) for m in sorted(meters)]
    return out


def _overlap(a: PricedSpan, b: PricedSpan) -> bool:
    return (b.end is None or a.start < b.end) and (a.end is None or b.start < a.end)


def double_pricing(mine: Sequence[PricedSpan], others: Sequence[PricedSpan]) -> list[tuple[str, str, datetime]]:
    """(meter, other subscription, first shared instant) for every meter that `mine` and one of
    `others` (other subscriptions of the same customer) price at a common instant, sorted."""
    found: dict[tuple[str, str], datetime] = {}
    for a in mine:
        for b in others:
            if a.meter == b.meter and a.subscription_id != b.subscription_id and _overlap(a, b):
                key = (a.meter, b.subscription_id)
                at = max(a.start, b.start)
                found[key] = min(found.get(key, at), at)
    return sorted((m, s, at) for (m, s), at in found.items())
