"""The background round finds the tenants to project from the journal's new entries only (one range on
its primary key), and moves an idle tenant's cursor up to the mark (here at once: no slack) -- never past
an entry of its own."""

from __future__ import annotations

import asyncpg
from credits.ledger.v1 import ledger_pb2 as pb

from finance.storage import projector
from tests.finance.conftest import Books

ACTIVE, IDLE = "at-expiry", "proportional"


async def _debit(b: Books, tenant: str, key: str) -> None:
    await b.ledger.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key=key, account_id="acme", unit="USD", reference=key,
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="tokens", amount="1.00")]), metadata=b.md(tenant))


async def test_a_round_visits_tenants_with_new_entries_and_moves_idle_cursors(books: Books) -> None:
    for tenant in (ACTIVE, IDLE):
        md = books.md(tenant)
        await books.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
        await books.ledger.GrantCredits(pb.GrantCreditsRequest(
            idempotency_key="g", account_id="acme", type=pb.PURCHASED, unit="USD", amount="100.00", cost_basis="1",
            source="purchase"), metadata=md)
    owner = await asyncpg.create_pool(books.dsn, min_size=1, max_size=2)
    try:
        cursor = "SELECT entry_id FROM finance_cursors WHERE tenant_id = $1"
        count = "SELECT count(*) FROM finance_entries WHERE tenant_id = $1"
        assert await projector.project_all(owner, idle_slack=0) == 2  # both tenants: their GRANTs
        for n in range(3):
            await _debit(books, ACTIVE, f"d{n}")
        assert await projector.project_all(owner, idle_slack=0) == 3
        last = await owner.fetchval("SELECT max(entry_id) FROM journal")
        assert await owner.fetchval(cursor, IDLE) == await owner.fetchval(cursor, ACTIVE) == last
        assert await projector.project_all(owner, idle_slack=0) == 0  # nothing new: nothing to visit
        await _debit(books, IDLE, "late")  # the idle tenant's next entry is still projected
        assert await projector.project_all(owner, idle_slack=0) == 1
        assert await owner.fetchval(count, IDLE) == await owner.fetchval(
            "SELECT count(*) FROM journal WHERE tenant_id = $1", IDLE)
    finally:
        await owner.close()
