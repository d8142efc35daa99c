"""The books re-derived from the journal from scratch (finance/storage/rederive.py) equal what was
projected -- over a seeded random history, a rules version changed half-way, a closed period and both
projector paths -- and a tampered line that keeps the books balanced and exact per lot is caught, by
the re-derivation and by `creditctl reconcile`'s books check."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest
from credits.finance.v1 import finance_pb2 as fpb
from credits.ledger.v1 import ledger_pb2 as pb

from finance.storage import projector
from finance.storage.rederive import rederive_books
from finance.storage.verify import verify_books
from reconciler.report import Check, ReconcileReport, TenantFindings
from reconciler.run import check_books
from service_runtime.row_security import current_tenant
from tests.finance.conftest import Books
from tests.finance.test_random_books import random_history

TENANT = "at-expiry"


async def _more_history(b: Books) -> None:
    md = b.md(TENANT)
    await b.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="late-grant", account_id="team-a", type=pb.PURCHASED, unit="USD", amount="40.00",
        cost_basis="0.8", source="purchase"), metadata=md)
    for n, amount in enumerate(("3.33", "7.01", "12.50")):
        await b.ledger.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key=f"late-{n}", account_id="team-a", unit="USD", reference=f"late-inv-{n}",
            charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="tokens", amount=amount)]), metadata=md)


@pytest.mark.parametrize("seed", [5])
async def test_the_books_rederived_from_scratch_equal_the_projected_and_a_tampered_line_is_caught(
        books: Books, seed: int) -> None:
    md = books.md(TENANT)
    pool = await asyncpg.create_pool(books.dsn, min_size=1, max_size=2)
    token = current_tenant.set(TENANT)
    try:
        await random_history(books, TENANT, seed, 40)
        await projector.project(pool, TENANT, window=7, overlapped=False)  # the earlier path, small batches
        rules = ('{"chart": {"REVENUE": "4999"}, "breakage": {"method": "PROPORTIONAL", "expected_rate": "0.2"}}')
        await books.finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r2", rules_json=rules),
                                            metadata=md)
        await _more_history(books)
        books.clock.now = datetime(2025, 3, 3, tzinfo=UTC)
        await books.finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="c", period="2025-02"), metadata=md)
        books.clock.now = datetime(2025, 3, 5, tzinfo=UTC)
        await books.ledger.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key="after-close", account_id="team-a", unit="USD", reference="inv-after",
            charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="tokens", amount="1.00")]), metadata=md)
        await projector.project(pool, TENANT)  # the overlapped path
        async with pool.acquire() as conn:
            versions = {r["rules_version"] for r in await conn.fetch(
                "SELECT rules_version FROM finance_batches WHERE tenant_id = $1", TENANT)}
            assert versions == {0, 1}
            clean = await rederive_books(conn, TENANT)
            assert clean.violations == [] and clean.differences == 0
            assert clean.entries == await conn.fetchval("SELECT count(*) FROM journal WHERE tenant_id = $1", TENANT)
            assert clean.lines == await conn.fetchval("SELECT count(*) FROM finance_lines WHERE tenant_id = $1",
                                                      TENANT) > 0

            # Move one revenue entry's both lines to another customer: still balanced, every lot still exact.
            victim = await conn.fetchrow(
                "SELECT entry_id, account_id FROM finance_lines WHERE tenant_id = $1 AND entry_kind = 'DEBIT' "
                "AND gl_account = 'REVENUE' ORDER BY entry_id LIMIT 1", TENANT)
            await conn.execute("ALTER TABLE finance_lines DISABLE TRIGGER finance_lines_append_only")
            await conn.execute("UPDATE finance_lines SET account_id = 'someone-else' WHERE tenant_id = $1 "
                               "AND entry_id = $2", TENANT, victim["entry_id"])
            await conn.execute("ALTER TABLE finance_lines ENABLE TRIGGER finance_lines_append_only")
            assert (await verify_books(conn, TENANT)).violations == []  # the books agree with themselves
            caught = await rederive_books(conn, TENANT)
            assert caught.differences == 2, caught.violations
            assert all(f"entry {victim['entry_id']} line" in v and "someone-else" in v for v in caught.violations)

            report = ReconcileReport()
            await check_books(conn, pool, TenantFindings(TENANT, report))
            found = [v for v in report.violations if v.check == str(Check.FINANCE_REDERIVED)]
            assert len(found) == 2 and str(victim["entry_id"]) in found[0].message
    finally:
        current_tenant.reset(token)
        await pool.close()
