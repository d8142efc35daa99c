"""Row-level security: the services' database role sees only the calling tenant's rows, even when a
query forgets its tenant filter, and cannot write rows of another tenant."""

from __future__ import annotations

import asyncpg
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from service_runtime.row_security import app_dsn, create_tenant_pool, current_tenant
from tests.ledger.conftest import Ledger
from tests.tenancy import add_tenant_key


async def test_a_query_without_the_tenant_filter_sees_only_the_calling_tenant(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "5")
    other = await add_tenant_key(ledger.dsn, "tenant-b")
    md_b = [("x-api-key", other)]
    await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="b", account_id="beta"), metadata=md_b)
    await ledger.stub.GrantCredits(pb.GrantCreditsRequest(idempotency_key="g", account_id="beta", unit="USD",
                                                          amount="7", type=pb.PURCHASED), metadata=md_b)
    conn = await asyncpg.connect(app_dsn(ledger.dsn))  # the role the ledger service logs in as
    try:
        assert await conn.fetchval("SELECT current_user") == "credits_app"
        sql = "SELECT array_agg(DISTINCT tenant_id ORDER BY tenant_id) FROM lots"  # no tenant filter on purpose
        assert await conn.fetchval(sql) is None  # no tenant set: nothing at all
        await conn.execute("SELECT set_config('app.tenant_id', 'tenant-a', false)")
        assert await conn.fetchval(sql) == ["tenant-a"]
        assert await conn.fetchval("SELECT count(*) FROM journal") == 1
        await conn.execute("SELECT set_config('app.tenant_id', 'tenant-b', false)")
        assert await conn.fetchval(sql) == ["tenant-b"]
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE account_id = 'acme'") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK: no writing as another tenant
            await conn.execute("INSERT INTO accounts (tenant_id, account_id, root_account_id) "
                               "VALUES ('tenant-a', 'sneaky', 'sneaky')")
        # Authentication tables are readable before any tenant is known.
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 2
    finally:
        await conn.close()
    owner = await asyncpg.connect(ledger.dsn)  # operator tools use the owner and see every tenant
    try:
        assert await owner.fetchval("SELECT count(DISTINCT tenant_id) FROM lots") == 2
    finally:
        await owner.close()


async def test_the_service_pool_rescopes_a_reused_connection_to_each_calling_tenant(ledger: Ledger) -> None:
    """One connection, acquired in turn for tenant-a, no tenant, tenant-b and tenant-a again: each
    acquire sees exactly its tenant's rows although the release sends no RESET (the pool remembers
    the session's tenant and skips the round trip only when it is already right)."""
    await ledger.account("acme")
    await ledger.grant("acme", "5")
    other = await add_tenant_key(ledger.dsn, "tenant-b")
    md_b = [("x-api-key", other)]
    await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="b", account_id="beta"), metadata=md_b)
    pool = await create_tenant_pool(app_dsn(ledger.dsn), min_size=1, max_size=1)
    sql = "SELECT coalesce(array_agg(account_id ORDER BY account_id), '{}') FROM accounts"  # no tenant filter
    seen: list[list[str]] = []
    try:
        for tenant in ("tenant-a", "tenant-a", "", "tenant-b", "tenant-a"):
            token = current_tenant.set(tenant)
            try:
                async with pool.acquire() as conn:
                    seen.append(await conn.fetchval(sql))
                    tx = conn.transaction()  # left open on purpose: the release must roll it back
                    await tx.start()
                    await conn.execute("SELECT set_config('app.tenant_id', 'tenant-b', true)")
            finally:
                current_tenant.reset(token)
        token = current_tenant.set("tenant-a")
        try:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == "tenant-a"
                assert await conn.fetchval("SELECT current_user") == "credits_app"
        finally:
            current_tenant.reset(token)
    finally:
        await pool.close()
    assert seen == [["acme"], ["acme"], [], ["beta"], ["acme"]]
