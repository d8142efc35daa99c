"""A year of one customer, under both breakage methods, against a table computed by hand (issue #12 "Show it").

The ledger server runs on a clock the test walks through 2025. Customer `acme`:

    Jan  5  buys 1,200.00 USD of credit for 900.00 (cost basis 0.75), expiring Oct 1
    Jan  5  promotional 100.00 (campaign "launch"), expiring Feb 1
    Jan 31  invoice 60.00   -> promo pays it: promotional expense 60.00
    Feb  2  expiry sweep    -> promo's 40.00 expire (free: no money, program breakage 40%)
    Feb 28  invoice 100.00  -> revenue 75.00       Mar 31  200.00 -> 150.00
    Apr 30  invoice 120.00  -> revenue 90.00       May 31   80.00 ->  60.00
    Jun  1  January..May closed
    Jun 10  the April invoice is voided: revenue -90.00, posted in June (April is closed)
    Jun 30  40.00 -> 30.00; Jul, Aug, Sep 31/30: 100.00 each -> 75.00 each
    Oct  2  expiry sweep    -> 480.00 of credit expire: breakage 360.00

PROPORTIONAL (expected rate 0.25, so an advance of revenue x 1/3) recognizes breakage with use:
Feb 25, Mar 50, Apr 30, May 20, Jun -20 (the void gives 30 back, June's use takes 10), Jul..Sep 25
each; at expiry 360.00 expire and the 180.00 advance is trued up: October 180.00. Both total 360.00.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from credits.finance.v1 import finance_pb2 as fpb
from credits.ledger.v1 import ledger_pb2 as pb

from service_runtime.proto_time import to_timestamp
from tests.finance.conftest import Books

MONTHS = [f"2025-{m:02d}" for m in range(1, 13)]
ZERO = "0.00"


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


INVOICES = [(1, 31, "60.00"), (2, 28, "100.00"), (3, 31, "200.00"), (4, 30, "120.00"), (5, 31, "80.00"),
            (6, 30, "40.00"), (7, 31, "100.00"), (8, 31, "100.00"), (9, 30, "100.00")]


async def walk_the_year(b: Books, tenant: str) -> None:
    md = b.md(tenant)
    b.clock.now = at(1, 5)
    await b.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
    await b.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="buy", account_id="acme", type=pb.PURCHASED, unit="USD", amount="1200.00",
        cost_basis="0.75", source="purchase", expires_at=to_timestamp(at(10, 1, 0))), metadata=md)
    await b.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="promo", account_id="acme", type=pb.PROMOTIONAL, unit="USD", amount="100.00",
        source="marketing", campaign_id="launch", expires_at=to_timestamp(at(2, 1, 0))), metadata=md)
    for month, day, amount in INVOICES:
        if month == 2:
            b.clock.now = at(2, 2)
            await b.ledger.ExpireLots(pb.ExpireLotsRequest(idempotency_key="sweep-feb"), metadata=md)
        if month == 6:
            b.clock.now = at(6, 1)
            closed = await b.finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="close", period="2025-05"),
                                                 metadata=md)
            assert closed.closed_through.ToDatetime(UTC) == at(6, 1, 0)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await b.finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="close-jun", period="2025-06"),
                                            metadata=md)
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "period" in (refused.value.details() or "")
            b.clock.now = at(6, 10)
            await b.ledger.ReverseHold(pb.ReverseHoldRequest(idempotency_key="void-apr", hold_key="debit:inv-2025-04",
                                                             reason="invoice voided"), metadata=md)
        b.clock.now = at(month, day)
        ref = f"inv-2025-{month:02d}"
        await b.ledger.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key=ref, account_id="acme", unit="USD", reference=ref,
            charges=[pb.Charge(charge_id="usage", kind=pb.USAGE, name="tokens", amount=amount)]), metadata=md)
    b.clock.now = at(10, 2)
    await b.ledger.ExpireLots(pb.ExpireLotsRequest(idempotency_key="sweep-oct"), metadata=md)
    b.clock.now = datetime(2026, 1, 2, tzinfo=UTC)


# month -> (recognized, breakage AT_EXPIRY, breakage PROPORTIONAL, promotional expense)
TABLE = {
    "2025-01": ("0.00", ZERO, ZERO, "60.00"),
    "2025-02": ("75.00", ZERO, "25.00", ZERO),
    "2025-03": ("150.00", ZERO, "50.00", ZERO),
    "2025-04": ("90.00", ZERO, "30.00", ZERO),
    "2025-05": ("60.00", ZERO, "20.00", ZERO),
    "2025-06": ("-60.00", ZERO, "-20.00", ZERO),
    "2025-07": ("75.00", ZERO, "25.00", ZERO),
    "2025-08": ("75.00", ZERO, "25.00", ZERO),
    "2025-09": ("75.00", ZERO, "25.00", ZERO),
    "2025-10": (ZERO, "360.00", "180.00", ZERO),
}
# gross deferred revenue at each month's end (both methods), and the PROPORTIONAL advance then
DEFERRED = {"2025-01": "900.00", "2025-02": "825.00", "2025-03": "675.00", "2025-04": "585.00",
            "2025-05": "525.00", "2025-06": "585.00", "2025-07": "510.00", "2025-08": "435.00",
            "2025-09": "360.00", "2025-10": ZERO, "2025-11": ZERO, "2025-12": ZERO}
ADVANCE = {"2025-01": ZERO, "2025-02": "25.00", "2025-03": "75.00", "2025-04": "105.00", "2025-05": "125.00",
           "2025-06": "105.00", "2025-07": "130.00", "2025-08": "155.00", "2025-09": "180.00", "2025-10": ZERO}


def _sum(rows: list[fpb.RevenueRow], attr: str) -> dict[str, str]:
    from decimal import Decimal

    out: dict[str, Decimal] = {}
    for r in rows:
        out[r.period] = out.get(r.period, Decimal(0)) + Decimal(getattr(r, attr))
    return {k: f"{v:.2f}" for k, v in out.items()}


async def test_a_year_of_one_customer_matches_the_hand_computed_books(books: Books) -> None:
    rules = '{"breakage_by_lot_type": {"PURCHASED": {"method": "PROPORTIONAL", "expected_rate": "0.25"}}}'
    await books.finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r", rules_json=rules),
                                        metadata=books.md("proportional"))
    for tenant in ("at-expiry", "proportional"):
        await walk_the_year(books, tenant)
    for tenant, column in (("at-expiry", 1), ("proportional", 2)):
        md = books.md(tenant)
        report = await books.finance.GetRevenueReport(fpb.GetRevenueReportRequest(
            from_period="2025-01", to_period="2025-12"), metadata=md)
        recognized, breakage, promo = (_sum(list(report.rows), a) for a in
                                       ("recognized", "breakage", "promotional_expense"))
        assert {m: recognized.get(m, ZERO) for m in TABLE} == {m: v[0] for m, v in TABLE.items()}, tenant
        assert {m: breakage.get(m, ZERO) for m in TABLE} == {m: v[column] for m, v in TABLE.items()}, tenant
        assert {m: promo.get(m, ZERO) for m in TABLE} == {m: v[3] for m, v in TABLE.items()}, tenant
        assert {(r.account_id, r.lot_type) for r in report.rows} <= {("acme", "PURCHASED"), ("acme", "PROMOTIONAL")}
        await check_liability(books, tenant, proportional=column == 2)
        await check_journal(books, tenant, proportional=column == 2)
        await check_program(books, tenant)


async def check_liability(b: Books, tenant: str, *, proportional: bool) -> None:
    md = b.md(tenant)
    for i, month in enumerate(MONTHS):
        end = at(i + 2, 1, 0) if i < 11 else datetime(2026, 1, 1, tzinfo=UTC)
        liability = await b.finance.GetLiabilityReport(fpb.GetLiabilityReportRequest(as_of=to_timestamp(end)),
                                                       metadata=md)
        paid = [r for r in liability.rows if r.lot_type == "PURCHASED"]
        assert [r.deferred_gross for r in paid] == [DEFERRED[month]], (tenant, month)
        assert all(r.matches_lots for r in liability.rows)
        advance = ADVANCE.get(month, ZERO) if proportional else ZERO
        assert paid[0].expected_breakage == advance, (tenant, month)
        rf = await b.finance.GetLiabilityRollForward(fpb.GetLiabilityRollForwardRequest(period=month), metadata=md)
        assert all(r.balanced for r in rf.rows), (tenant, month, rf)
    june = await b.finance.GetLiabilityRollForward(fpb.GetLiabilityRollForwardRequest(period="2025-06"), metadata=md)
    (row,) = june.rows
    expected = ("400.00", "-60.00", "-20.00", "480.00") if proportional else ("525.00", "-60.00", ZERO, "585.00")
    assert (row.opening, row.recognized, row.breakage, row.closing) == expected
    feb = await b.finance.GetLiabilityReport(fpb.GetLiabilityReportRequest(as_of=to_timestamp(at(2, 1, 0))),
                                             metadata=md)
    assert [r.free_outstanding for r in feb.rows if r.lot_type == "PROMOTIONAL"] == ["40.00"]


async def check_journal(b: Books, tenant: str, *, proportional: bool) -> None:
    md = b.md(tenant)
    june = await b.finance.ExportJournal(fpb.ExportJournalRequest(period="2025-06", page_size=1000), metadata=md)
    void = [(x.gl_code, x.debit, x.credit, x.reference) for x in june.lines if x.entry_kind == "REINSTATE"]
    expected = [("4000", "90.00", ZERO, "inv-2025-04"), ("2400", ZERO, "90.00", "inv-2025-04")]
    if proportional:
        expected += [("4100", "30.00", ZERO, "inv-2025-04"), ("2410", ZERO, "30.00", "inv-2025-04")]
    assert void == expected  # an offsetting entry in June, traced to the April invoice; April unchanged
    assert all(x.posting_at.ToDatetime(UTC) >= at(6, 1, 0) for x in june.lines)
    for month in MONTHS:
        page = await b.finance.ExportJournal(fpb.ExportJournalRequest(period=month, page_size=1000), metadata=md)
        by_entry: dict[tuple[int, str], int] = {}
        for x in page.lines:
            cents = round(float(x.debit) * 100) - round(float(x.credit) * 100)
            by_entry[(x.entry_id, x.currency)] = by_entry.get((x.entry_id, x.currency), 0) + cents
        assert not [k for k, v in by_entry.items() if v], (tenant, month)
    april = await b.finance.ExportJournal(fpb.ExportJournalRequest(period="2025-04"), metadata=md)
    assert [(x.gl_code, x.debit, x.credit) for x in april.lines][:2] == [("2400", "90.00", ZERO),
                                                                         ("4000", ZERO, "90.00")]


async def check_program(b: Books, tenant: str) -> None:
    program = await b.finance.GetProgramReport(fpb.GetProgramReportRequest(from_period="2025-01",
                                                                           to_period="2025-12"), metadata=b.md(tenant))
    rows = {r.lot_type: r for r in program.rows}
    promo, paid = rows["PROMOTIONAL"], rows["PURCHASED"]
    assert (promo.campaign_id, promo.units_issued, promo.units_consumed, promo.units_expired) == (
        "launch", "100.00", "60.00", "40.00")
    assert (promo.consumption_rate, promo.breakage_rate, promo.redemption_rate) == (0.6, 0.4, 1.0)
    assert promo.median_time_to_consumption_s == (at(1, 31) - at(1, 5)).total_seconds()
    assert (paid.units_issued, paid.units_consumed, paid.units_expired, paid.value_issued) == (
        "1200.00", "720.00", "480.00", "900.00")
    breakage = await b.finance.GetBreakageReport(fpb.GetBreakageReportRequest(from_period="2025-10"),
                                                 metadata=b.md(tenant))
    assert sum(float(r.total) for r in breakage.rows) in (360.0, 180.0)
