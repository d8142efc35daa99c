"""Cost and credits per usage bucket: the spread is exact (seeded random histories against the
invariant of invoice_service/domain/usage_costs.py), and GetUsageSeries on the real server reports
what each day of a finalized period cost and how much credit paid it, and nothing for a draft period."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.domain.usage_costs import BilledLine, bucket_costs, spread
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_spread_is_exact_non_negative_and_monotone(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        weights = [Decimal(rng.choice([0, 1, 2, 7, 1000])) + Decimal(rng.randint(0, 999)) / 1000
                   for _ in range(rng.randint(1, 40))]
        amount = rng.choice([0, 1, 3, 99, 10**6, rng.randint(0, 10**9)])
        shares = spread(amount, weights)
        if sum(weights) == 0:
            assert shares == [0] * len(weights)
            continue
        assert sum(shares) == amount and min(shares) >= 0
        for i, j in ((i, j) for i in range(len(weights)) for j in range(len(weights)) if weights[i] > weights[j]):
            assert shares[i] >= shares[j], (weights[i], weights[j], shares[i], shares[j])


def test_only_the_windows_buckets_are_kept_but_shares_are_of_the_whole_line() -> None:
    day = datetime(2026, 8, 1, tzinfo=UTC)
    line = BilledLine("tokens", "USD", 100, 10, ((day, False, Decimal(1)), (day + timedelta(days=1), True, Decimal(3))))
    costs = bucket_costs([line])
    assert list(costs) == [("tokens", day + timedelta(days=1))]
    assert costs[("tokens", day + timedelta(days=1))].by_currency == {"USD": (75, 8)}  # 7.5 -> 8: largest remainder


async def test_usage_series_carries_cost_and_credits_per_day(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=when(1))
    await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("a1", "input_tokens", "300000", when(3, 9)), event("a2", "input_tokens", "100000", when(5, 9)),
        event("o1", "output_tokens", "100000", when(3, 10)), event("s1", "input_tokens", "100000", when(3, month=9))]))
    august = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d8", customer_id="john-wick",
                                                                 period_start=ts(when(1))))
    await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="prep", invoice_id=august.invoice_id, applications=[pb.CreditApplication(
            charge_id="L001#1", lot_id="lot-1", lot_type="PROMOTIONAL", amount="1.00")]))
    await env.call("CommitFinalize", pb.CommitFinalizeRequest(idempotency_key="c", invoice_id=august.invoice_id))
    req = pb.GetUsageSeriesRequest(customer_id="john-wick", to=ts(when(10, month=9)))
    getattr(req, "from").CopyFrom(ts(when(1)))
    series = await env.call("GetUsageSeries", req)
    got = [(p.meter_code, p.bucket_start.ToDatetime(tzinfo=UTC).strftime("%m-%d"), p.value, p.cost,
            p.credits_applied, p.currency) for p in series.points]
    assert got == [("input_tokens", "08-03", "300000", "3.00", "0.75", "USD"),   # 4.00 and 1.00 of credit, 3:1
                   ("input_tokens", "08-05", "100000", "1.00", "0.25", "USD"),
                   ("input_tokens", "09-03", "100000", "", "", ""),             # September is still a draft
                   ("output_tokens", "08-03", "100000", "3.00", "0.00", "USD")]
    invoice = await env.call("GetInvoice", pb.GetInvoiceRequest(invoice_id=august.invoice_id))
    assert sum(Decimal(p.cost) for p in series.points if p.cost) == Decimal(invoice.subtotal)
    assert sum(Decimal(p.credits_applied) for p in series.points if p.cost) == Decimal(invoice.credits_applied)
