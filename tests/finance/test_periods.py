"""Period close: a closed period never changes; what arrives for it later posts in the first open one."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from credits.finance.v1 import finance_pb2 as fpb
from credits.ledger.v1 import ledger_pb2 as pb

from finance.domain.periods import Granularity, parse_period, period_of, periods_between
from service_runtime.rejections import Rejection
from tests.finance.conftest import Books

T = "at-expiry"


async def _lines(b: Books, period: str) -> list[tuple[int, int, str, str, str]]:
    page = await b.finance.ExportJournal(fpb.ExportJournalRequest(period=period, page_size=1000), metadata=b.md(T))
    return [(x.entry_id, x.line_no, x.gl_code, x.debit, x.credit) for x in page.lines]


async def test_a_late_entry_for_a_closed_month_posts_in_the_first_open_one(books: Books) -> None:
    md = books.md(T)
    books.clock.now = datetime(2025, 1, 10, tzinfo=UTC)
    await books.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
    await books.ledger.GrantCredits(pb.GrantCreditsRequest(idempotency_key="g", account_id="acme", type=pb.PURCHASED,
                                                           unit="USD", amount="100.00", cost_basis="1"), metadata=md)
    books.clock.now = datetime(2025, 2, 3, tzinfo=UTC)
    closed = await books.finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="c1", period="2025-01"),
                                             metadata=md)
    assert not closed.already_closed
    again = await books.finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="c2", period="2025-01"),
                                            metadata=md)
    assert again.already_closed  # closing twice changes nothing
    with pytest.raises(grpc.aio.AioRpcError) as reused:  # a key reused for another period closes nothing
        await books.finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="c1", period="2024-12"), metadata=md)
    assert reused.value.code() is grpc.StatusCode.ALREADY_EXISTS
    january = await _lines(books, "2025-01")
    books.clock.now = datetime(2025, 1, 20, tzinfo=UTC)  # an entry recorded in January, after the close
    await books.ledger.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="late", account_id="acme", unit="USD", reference="inv-late",
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="m", amount="5.00")]), metadata=md)
    books.clock.now = datetime(2025, 2, 4, tzinfo=UTC)
    assert await _lines(books, "2025-01") == january  # the closed month is untouched
    page = await books.finance.ExportJournal(fpb.ExportJournalRequest(period="2025-02-01"), metadata=md)
    late = [x for x in page.lines if x.reference == "inv-late"]
    assert [(x.gl_code, x.debit, x.credit) for x in late] == [("2400", "5.00", "0.00"), ("4000", "0.00", "5.00")]
    assert all(x.posting_at.ToDatetime(UTC) == datetime(2025, 2, 1, tzinfo=UTC) for x in late)
    assert all(x.effective_at.ToDatetime(UTC) == datetime(2025, 1, 20, tzinfo=UTC) for x in late)
    feb = await books.finance.GetRevenueReport(fpb.GetRevenueReportRequest(from_period="2025-02"), metadata=md)
    assert [r.recognized for r in feb.rows] == ["5.00"]


def test_periods_are_utc_months_and_days() -> None:
    m = parse_period("2025-12")
    assert (m.start, m.end, m.name) == (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), "2025-12")
    d = parse_period("2024-02-29")
    assert d.end == datetime(2024, 3, 1, tzinfo=UTC) and d.granularity is Granularity.DAY
    assert period_of(datetime(2025, 3, 31, 23, 59, tzinfo=UTC), Granularity.MONTH).name == "2025-03"
    assert [p.name for p in periods_between(m.start, datetime(2026, 2, 15, tzinfo=UTC), Granularity.MONTH)] == [
        "2025-12", "2026-01", "2026-02"]
    for bad in ("2025-13", "2025-02-30", "25-01", "", "2025-1"):
        with pytest.raises(Rejection) as e:
            parse_period(bad)
        assert e.value.field == "period"
