"""The program report's time to consumption weighted by units: a few small early debits and one large late
one -- the median debit is early, the median unit late; the mean is the units-weighted one, exactly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from credits.finance.v1 import finance_pb2 as fpb
from credits.ledger.v1 import ledger_pb2 as pb

from tests.finance.conftest import Books

DAY = 86_400.0


async def test_time_to_consumption_is_reported_weighted_by_units(books: Books) -> None:
    md = books.md("at-expiry")
    start = books.clock.now
    await books.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
    await books.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="g", account_id="acme", type=pb.PURCHASED, unit="USD", amount="100.00", cost_basis="1",
        source="purchase"), metadata=md)
    for days, amount in ((1, "1.00"), (2, "1.00"), (10, "90.00")):
        books.clock.now = start + timedelta(days=days)
        await books.ledger.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key=f"d{days}", account_id="acme", unit="USD", reference=f"inv-{days}",
            charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="tokens", amount=amount)]), metadata=md)
    report = await books.finance.GetProgramReport(fpb.GetProgramReportRequest(from_period="2025-01"), metadata=md)
    [row] = report.rows
    assert row.units_consumed == "92.00"
    assert row.median_time_to_consumption_s == 2 * DAY  # the median debit
    assert row.units_weighted_median_time_to_consumption_s == 10 * DAY  # the median unit: 46 of 92 come at day 10
    assert row.units_weighted_mean_time_to_consumption_s == pytest.approx((1 * 1 + 1 * 2 + 90 * 10) / 92 * DAY)


async def test_nothing_consumed_reports_minus_one(books: Books) -> None:
    md = books.md("at-expiry")
    await books.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
    await books.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="g", account_id="acme", type=pb.PROMOTIONAL, unit="USD", amount="5.00", source="marketing"),
        metadata=md)
    [row] = (await books.finance.GetProgramReport(fpb.GetProgramReportRequest(from_period="2025-01"),
                                                  metadata=md)).rows
    assert (row.median_time_to_consumption_s, row.units_weighted_median_time_to_consumption_s,
            row.units_weighted_mean_time_to_consumption_s) == (-1.0, -1.0, -1.0)
