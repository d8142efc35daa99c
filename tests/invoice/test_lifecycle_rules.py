"""Pure rules of subscriptions that change (invoice_service/domain/lifecycle.py): schedules with trials,
calendar alignment and cancellation; pro-rating by cumulative rounding, checked by seeded random tests."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from invoice_service.domain.invoices import ChargeKind, Component, MeterUsage, PlanTerms
from invoice_service.domain.lifecycle import (
    Phase,
    PricedSpan,
    Schedule,
    SegmentTerms,
    double_pricing,
    priced_spans,
    prorate,
    segmented_line_items,
    segments,
    usage_by_segment,
)
from invoice_service.domain.pricing import Price, PriceModel

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)


def test_calendar_aligned_first_period_is_partial_and_trial_is_not_billed() -> None:
    s = Schedule(datetime(2026, 9, 10, 15, tzinfo=UTC), 1, calendar_aligned=True)
    first = s.period(0)
    assert first is not None and (first.start, first.end) == (datetime(2026, 9, 10, 15, tzinfo=UTC), OCT)
    assert (first.nominal_start, first.nominal_end, first.partial) == (SEP, OCT, True)
    second = s.period(1)
    assert second is not None and (second.start, second.end, second.partial) == (OCT, datetime(2026, 11, 1, tzinfo=UTC),
                                                                                   False)
    assert s.period_starting_at(OCT) == second and s.period_starting_at(SEP) is None
    # quarterly calendar periods: Jan/Apr/Jul/Oct
    q = Schedule(datetime(2026, 8, 20, tzinfo=UTC), 3, calendar_aligned=True).period(0)
    assert q is not None and (q.nominal_start, q.end) == (datetime(2026, 7, 1, tzinfo=UTC), OCT)
    # a 14-day trial: billing (and the anchor-aligned periods) start at its end
    t = Schedule(SEP, 1, trial_end=SEP + timedelta(days=14))
    assert t.period_containing(SEP + timedelta(days=3)) is None
    p = t.period(0)
    assert p is not None and (p.start, p.end) == (SEP + timedelta(days=14), datetime(2026, 10, 15, tzinfo=UTC))
    # cancelled on Oct 20: the last period ends there, nothing after it
    c = Schedule(SEP, 1, ends_at=datetime(2026, 10, 20, tzinfo=UTC))
    last = c.period(1)
    assert last is not None and (last.end, last.nominal_end) == (datetime(2026, 10, 20, tzinfo=UTC),
                                                                 datetime(2026, 11, 1, tzinfo=UTC))
    assert c.period(2) is None and c.period_containing(datetime(2026, 10, 25, tzinfo=UTC)) is None
    assert [x.index for x in c.periods_until(datetime(2027, 1, 1, tzinfo=UTC), 100)] == [0, 1]


def test_prorate_hand_table() -> None:
    day = timedelta(days=1)
    # 30.00 for 10 of 30 days, then 90.00 for 20: 10.00 + 60.00
    assert prorate([Decimal("30"), Decimal("90")], [(SEP, SEP + 10 * day), (SEP + 10 * day, OCT)], (SEP, OCT), 2) \
        == [1000, 6000]
    # 10.00 in three equal parts: 3.33 | 3.34 | 3.33 (cumulative: 3.33, 6.67, 10.00)
    cuts = [SEP, SEP + 10 * day, SEP + 20 * day, OCT]
    assert prorate([Decimal("10")] * 3, list(itertools.pairwise(cuts)), (SEP, OCT), 2) == [333, 334, 333]
    # a partial first period (Sep 10 to Oct 1 of a 30-day month): 21/30 of 9.99 = 6.993 -> 6.99
    assert prorate([Decimal("9.99")], [(SEP + 9 * day, OCT)], (SEP, OCT), 2) == [699]


def _exact_total(rates: list[Decimal], spans: list[tuple[datetime, datetime]], nominal: tuple[datetime, datetime],
                 scale: int) -> int:
    us = timedelta(microseconds=1)
    total = sum((Fraction(r) * ((b - a) // us) / ((nominal[1] - nominal[0]) // us) for r, (a, b) in
                 zip(rates, spans, strict=True)), Fraction(0))
    exact = Decimal(total.numerator) / Decimal(total.denominator)
    return int((exact * 10**scale).quantize(Decimal(1), rounding=ROUND_HALF_UP)) if total.denominator else 0


def test_prorated_parts_always_sum_to_the_whole_seeded() -> None:
    """Invariant (lifecycle.prorate): the parts sum exactly to round_half_up(exact total); with one rate
    throughout, to the full-period amount; every part is >= 0."""
    rng = random.Random(19)
    for _ in range(2000):
        scale = rng.choice([0, 2, 3])
        nominal_days = rng.choice([28, 29, 30, 31, 90, 365])
        nominal = (SEP, SEP + timedelta(days=nominal_days))
        start = SEP + timedelta(seconds=rng.randrange(0, nominal_days * 86400 // 2))
        end = nominal[1] - timedelta(seconds=rng.randrange(0, nominal_days * 86400 // 2))
        cuts = sorted({start + timedelta(microseconds=rng.randrange(1, (end - start) // timedelta(microseconds=1)))
                       for _ in range(rng.randrange(0, 6))})
        edges = [start, *cuts, end]
        spans = list(itertools.pairwise(edges))
        rates = [Decimal(rng.randrange(0, 10**7)).scaleb(-rng.randrange(0, 5)) for _ in spans]
        parts = prorate(rates, spans, nominal, scale)
        assert all(p >= 0 for p in parts)
        assert sum(parts) == _exact_total(rates, spans, nominal, scale)
        same = [rates[0]] * len(spans)
        whole = prorate(same, list(zip([nominal[0], *cuts], [*cuts, nominal[1]], strict=True)), nominal, scale)
        assert sum(whole) == int((rates[0] * 10**scale).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_segmented_items_sum_and_a_whole_period_is_unchanged_seeded() -> None:
    """Line items of segments cut at changes and lot instants: pieces sum to their items; a period
    under one phase gives the same items as before any change existed."""
    rng = random.Random(7)
    fee = Component(ChargeKind.FIXED_FEE, "platform", "Platform", None, Decimal("29.99"))
    seat = Component(ChargeKind.LICENSE, "seat", "Seat", None, Decimal("12.50"))
    tokens = Component(ChargeKind.USAGE, "tokens", "tokens", Price(PriceModel.PER_UNIT, unit_amount=Decimal("0.001")))
    terms = PlanTerms("p", "USD", 2, (tokens, fee, seat))
    for _ in range(300):
        changes = sorted({SEP + timedelta(hours=rng.randrange(1, 30 * 24)) for _ in range(rng.randrange(0, 4))})
        phases = [Phase(t, "p", 1, {"seat": rng.randrange(0, 50)}) for t in [SEP, *changes]]
        parts = segments(phases, SEP, OCT)
        lots = sorted({SEP + timedelta(hours=rng.randrange(1, 30 * 24)) for _ in range(rng.randrange(0, 3))})
        edges = sorted(set(lots) | {p.start for p in parts[1:]})
        raw = {"tokens": {g: Decimal(rng.randrange(0, 5000)) for g in range(len(edges) + 1)}}
        usage = usage_by_segment(raw, frozenset(), edges, parts)
        period = Schedule(SEP, 1).period(0)
        assert period is not None
        items, pieces = segmented_line_items([SegmentTerms(p, terms, u) for p, u in zip(parts, usage, strict=True)],
                                             period, lots)
        for item in items:
            assert sum(p.amount_minor for p in pieces if p.line_item_id == item.line_item_id) == item.amount_minor
        assert sum(i.amount_minor for i in items if i.kind is ChargeKind.FIXED_FEE) == 2999
        assert sum(i.quantity for i in items if i.kind is ChargeKind.USAGE) == sum(raw["tokens"].values())
        if not changes:
            assert [i.line_item_id for i in items] == ["L001", "L002", "L003"][:len(items)]
            assert all("pro-rated" not in i.description for i in items)
    assert usage_by_segment({"m": {0: Decimal(1), 1: Decimal(2), 2: Decimal(5)}}, frozenset({"m"}),
                            [SEP + timedelta(days=5), SEP + timedelta(days=9)],
                            segments([Phase(SEP, "p", 1), Phase(SEP + timedelta(days=9), "p", 2)], SEP, OCT)) \
        == [{"m": MeterUsage(Decimal(2), {0: Decimal(1), 1: Decimal(2)})},
            {"m": MeterUsage(Decimal(5), {0: Decimal(5)})}]


def test_invoiced_through_follows_the_schedule() -> None:
    trial = Schedule(SEP, 1, trial_end=SEP + timedelta(days=14))
    assert trial.invoiced_through(set(), 100) == SEP + timedelta(days=14)  # the trial is never billed
    cal = Schedule(datetime(2026, 9, 10, tzinfo=UTC), 1, calendar_aligned=True)
    assert cal.invoiced_through({datetime(2026, 9, 10, tzinfo=UTC)}, 100) == OCT
    ended = Schedule(SEP, 1, ends_at=datetime(2026, 10, 20, tzinfo=UTC))
    assert ended.invoiced_through({SEP}, 100) == OCT
    assert ended.invoiced_through({SEP, OCT}, 100) == datetime(2026, 10, 20, tzinfo=UTC)  # settled through its end
    assert Schedule(SEP, 1).invoiced_through({SEP, OCT}, 2) == datetime(2026, 11, 1, tzinfo=UTC)


def _bills(schedule: Schedule, phases: list[tuple[datetime, frozenset[str]]], meter: str, t: datetime) -> bool:
    """Whether the billing path prices an event of `meter` at `t`: a billed period holds t and the
    phase in force at t (domain `segments`) prices the meter."""
    p = schedule.period_containing(t)
    if p is None:
        return False
    as_phases = [Phase(at, "plan", 1, overrides={m: Decimal(0) for m in meters}) for at, meters in phases]
    part = next(s for s in segments(as_phases, p.start, p.end) if s.start <= t < s.end)
    return meter in part.phase.overrides


def test_random_subscription_sets_never_price_an_event_twice() -> None:
    """Seeded: subscriptions of one customer are admitted one by one unless `double_pricing` names a
    conflict; then no event instant of any meter is priced by two admitted subscriptions (checked on
    the billing path, not on the spans), and every refusal names an instant both would price."""
    rng = random.Random(1919)
    meters = ["a", "b", "c"]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    refused = shared = 0
    for _ in range(150):
        admitted: list[tuple[Schedule, list[tuple[datetime, frozenset[str]]], list[PricedSpan]]] = []
        for k in range(rng.randint(2, 6)):
            anchor = base + timedelta(days=rng.randint(0, 200), hours=rng.randint(0, 23))
            trial = anchor + timedelta(days=rng.randint(1, 40)) if rng.random() < 0.3 else None
            ends = anchor + timedelta(days=rng.randint(1, 300)) if rng.random() < 0.6 else None
            schedule = Schedule(anchor, rng.choice([1, 3]), trial, rng.random() < 0.5, ends)
            phases = [(anchor, frozenset(rng.sample(meters, rng.randint(0, 2))))]
            for _ in range(rng.randint(0, 3)):
                phases.append((phases[-1][0] + timedelta(days=rng.randint(1, 90)),
                               frozenset(rng.sample(meters, rng.randint(0, 2)))))
            spans = priced_spans(f"s{k}", schedule, phases)
            found = double_pricing(spans, [s for _, _, mine in admitted for s in mine])
            if not found:
                admitted.append((schedule, phases, spans))
                continue
            refused += 1
            meter, other, at = found[0]
            owner = next(a for a in admitted if a[2] and a[2][0].subscription_id == other)
            assert _bills(schedule, phases, meter, at) and _bills(owner[0], owner[1], meter, at), found
        shared += len({s.meter for _, _, mine in admitted for s in mine}) < sum(
            len({s.meter for s in mine}) for _, _, mine in admitted)
        for _ in range(200):
            t = base + timedelta(minutes=rng.randint(0, 600 * 24 * 60))
            meter = rng.choice(meters)
            assert sum(_bills(s, ph, meter, t) for s, ph, _ in admitted) <= 1
    assert refused > 50 and shared > 20  # both sides exercised: refusals, and one meter in turns
