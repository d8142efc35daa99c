"""The projector on a real ledger: lines balanced, exactly once, and never past an uncommitted entry."""

from __future__ import annotations

import asyncpg
from credits.ledger.v1 import ledger_pb2 as pb

from finance.storage import projector
from tests.ledger.conftest import Ledger

TENANT = "tenant-a"


async def _debit(ledger: Ledger, key: str, account: str, amount: str, ref: str = "") -> pb.Hold:
    return await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key=key, account_id=account, unit="USD", reference=ref or key,
        charges=[pb.Charge(charge_id="c1", kind=pb.USAGE, name="tokens", amount=amount)]), metadata=ledger.md)


async def test_projection_is_balanced_traced_and_exactly_once(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.account("team", parent="acme")
    await ledger.grant("acme", "100.00", cost_basis="0.9", key="g1")
    await ledger.grant("acme", "20.00", type=pb.PROMOTIONAL, campaign_id="spring", key="g2")
    hold = await _debit(ledger, "d1", "acme", "50.00", "inv-1")
    await ledger.stub.TransferCredits(pb.TransferCreditsRequest(
        idempotency_key="t1", from_account_id="acme", to_account_id="team", unit="USD", amount="30.00"),
        metadata=ledger.md)
    await ledger.stub.ReverseHold(pb.ReverseHoldRequest(idempotency_key="r1", hold_key=hold.hold_key,
                                                        reason="invoice voided"), metadata=ledger.md)
    pool = await asyncpg.create_pool(ledger.dsn, min_size=1, max_size=2)
    try:
        assert await projector.project(pool, TENANT) > 0
        assert await projector.project(pool, TENANT) == 0  # nothing twice
        async with pool.acquire() as conn:
            unbalanced = await conn.fetch("SELECT entry_id FROM finance_lines GROUP BY entry_id, currency "
                                          "HAVING sum(debit) <> sum(credit)")
            assert unbalanced == []
            journal = await conn.fetchval("SELECT count(*) FROM journal WHERE tenant_id = $1", TENANT)
            assert await conn.fetchval("SELECT count(*) FROM finance_entries") == journal
            by_gl = {r["gl_account"]: r["net"] for r in await conn.fetch(
                "SELECT gl_account, sum(credit - debit) AS net FROM finance_lines GROUP BY 1")}
            # 100.00 at 0.9 = 90.00 deferred; promo 20.00 pays first (6100), purchased 30.00 -> 27.00 revenue,
            # then the void reverses it; 30.00 of credit (27.00) moves to team through the clearing account.
            assert by_gl["REVENUE"] == 0 and by_gl["PROMOTIONAL_EXPENSE"] == 0
            assert by_gl["DEFERRED_REVENUE"] == 9000 and by_gl["TRANSFER_CLEARING"] == 0
            traced = await conn.fetch("SELECT DISTINCT reference, hold_key FROM finance_lines "
                                      "WHERE entry_kind = 'DEBIT'")
            assert [(r["reference"], r["hold_key"]) for r in traced] == [("inv-1", hold.hold_key)]
            books = await conn.fetch("SELECT * FROM finance_lots ORDER BY granted_at")
            assert len(books) == 3  # the two grants and the transferred copy
            assert [v for b in books for v in projector._book(b).violations()] == []
    finally:
        await pool.close()


async def test_the_projector_never_passes_an_entry_still_uncommitted(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "10.00", cost_basis="1", key="g1")
    pool = await asyncpg.create_pool(ledger.dsn, min_size=1, max_size=3)
    slow = await asyncpg.connect(ledger.dsn)
    try:
        await projector.project(pool, TENANT)
        tx = slow.transaction()
        await tx.start()
        lot_id = await slow.fetchval("SELECT lot_id FROM lots LIMIT 1")
        # a writer that took its entry id and has not committed yet
        await slow.execute("INSERT INTO journal (tenant_id, account_id, lot_id, kind, amount, unit, effective_at) "
                           "VALUES ($1, 'acme', $2, 'HOLD', 1, 'USD', now())", TENANT, lot_id)
        await _debit(ledger, "d1", "acme", "2.00")  # commits a later entry id
        async with pool.acquire() as conn:
            assert await projector.safe_mark(conn, wait_s=0.3) is None
        assert await projector.project(pool, TENANT, wait_s=0.3) == 0
        await tx.rollback()  # the slow writer gives up: its id is a gap, never an entry
        assert await projector.project(pool, TENANT) == 1
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM finance_entries WHERE kind = 'DEBIT'") == 1
    finally:
        await slow.close()
        await pool.close()


async def test_the_safe_mark_waits_for_the_newest_writer_too(ledger: Ledger) -> None:
    """The writer holding an entry id is the newest transaction running, nothing completed after it
    (a sequential seed's GRANT): a snapshot's xmax is then its own xid, so a mark that waited only
    for transactions below xmax passed the GRANT, and the lot's next HOLD met a lot the books lacked."""
    await ledger.account("acme")
    pool = await asyncpg.create_pool(ledger.dsn, min_size=1, max_size=2)
    slow = await asyncpg.connect(ledger.dsn)
    try:
        await projector.project(pool, TENANT)
        tx = slow.transaction()
        await tx.start()
        writer = int(await slow.fetchval("SELECT pg_current_xact_id()::text"))
        taken = await slow.fetchval("SELECT nextval('journal_entry_id_seq')")
        async with pool.acquire() as conn:
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            mark = await projector.safe_mark(conn, wait_s=0.3)
        assert mark is None or mark < taken, (snapshot, writer, taken, mark)
        await tx.rollback()
        async with pool.acquire() as conn:
            mark = await projector.safe_mark(conn, wait_s=5)
        assert mark is not None and mark >= taken
    finally:
        await slow.close()
        await pool.close()


async def test_the_finance_api_answers_on_the_ledger_server(ledger: Ledger) -> None:
    from credits.finance.v1 import finance_pb2 as fpb
    from credits.finance.v1 import finance_pb2_grpc

    finance = finance_pb2_grpc.FinanceServiceStub(ledger.channel)
    rules = '{"breakage": {"method": "PROPORTIONAL", "expected_rate": "0", "estimate": true}}'  # no history yet
    set_ = await finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r1", rules_json=rules),
                                         metadata=ledger.md)
    assert set_.version == 1
    again = await finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r1", rules_json=rules),
                                          metadata=ledger.md)
    assert again.version == 1  # a replay, not a second version
    await ledger.account("acme")
    await ledger.grant("acme", "100.00", cost_basis="0.9", key="g1")
    await _debit(ledger, "d1", "acme", "10.00", "inv-1")
    status = await finance.ProjectBooks(fpb.ProjectBooksRequest(), metadata=ledger.md)
    assert status.entries_behind == 0 and status.entries_projected == 2
    from datetime import UTC, datetime
    month = datetime.now(UTC).strftime("%Y-%m")
    report = await finance.GetRevenueReport(fpb.GetRevenueReportRequest(from_period=month), metadata=ledger.md)
    assert [(r.account_id, r.recognized, r.deferred_issued, r.deferred_closing) for r in report.rows] == [
        ("acme", "9.00", "90.00", "81.00")]
    liab = await finance.GetLiabilityReport(fpb.GetLiabilityReportRequest(), metadata=ledger.md)
    assert [(r.deferred_gross, r.matches_lots) for r in liab.rows] == [("81.00", True)]
    rf = await finance.GetLiabilityRollForward(fpb.GetLiabilityRollForwardRequest(period=month), metadata=ledger.md)
    assert [(r.opening, r.issued, r.recognized, r.closing, r.balanced) for r in rf.rows] == [
        ("0.00", "90.00", "9.00", "81.00", True)]
    page = await finance.ExportJournal(fpb.ExportJournalRequest(period=month, page_size=3), metadata=ledger.md)
    assert len(page.lines) == 3 and page.next_page_token
    rest = await finance.ExportJournal(fpb.ExportJournalRequest(period=month, page_size=3,
                                                                page_token=page.next_page_token), metadata=ledger.md)
    assert len(rest.lines) == 1 and not rest.next_page_token
    program = await finance.GetProgramReport(fpb.GetProgramReportRequest(from_period=month), metadata=ledger.md)
    assert [(r.lot_type, r.units_issued, r.units_consumed, r.redemption_rate) for r in program.rows] == [
        ("PURCHASED", "100.00", "10.00", 1.0)]


async def test_the_background_projector_follows_the_journal(ledger: Ledger) -> None:
    import asyncio

    books = await projector.BackgroundProjector.start(ledger.dsn, interval_s=0.05)
    try:
        await ledger.account("acme")
        await ledger.grant("acme", "10.00", cost_basis="1", key="g1")
        await _debit(ledger, "d1", "acme", "1.00")
        conn = await asyncpg.connect(ledger.dsn)
        try:
            for _ in range(200):
                if await conn.fetchval("SELECT count(*) FROM finance_entries WHERE tenant_id = $1", TENANT) == 2:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT count(*) FROM finance_entries WHERE tenant_id = $1", TENANT) == 2
        finally:
            await conn.close()
    finally:
        await books.stop()
    assert books.task.done()
