"""API keys: hashed at rest, expirable, revocable, rotatable — in every service database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from creditctl.commands.keys import create_key, list_keys, revoke_key, rotate_key
from creditctl.commands.tenants import create_tenant
from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from service_runtime.api_keys import KeyResolver
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.rejections import Rejection
from service_runtime.settings import Settings
from tests.postgres_fixtures import fresh_database


@pytest.fixture
async def settings() -> Settings:
    ledger = await fresh_database("ledger", [TENANCY_MIGRATIONS, LEDGER_MIGRATIONS])
    invoice = await fresh_database("invoice", [TENANCY_MIGRATIONS, INVOICE_MIGRATIONS])
    return Settings(ledger_dsn=ledger, invoice_dsn=invoice)


async def _resolves(dsn: str, key: str) -> str:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        try:
            return (await KeyResolver(pool).resolve(key)).role
        except Rejection as rej:
            return rej.message
    finally:
        await pool.close()


async def test_key_lifecycle(settings: Settings) -> None:
    first = await create_tenant(settings, "acme", "Acme", "admin")
    key_id, key = await create_key(settings, "acme", "service", None)
    for dsn in (settings.ledger_dsn, settings.invoice_dsn):
        assert await _resolves(dsn, first) == "admin"
        assert await _resolves(dsn, key) == "service"
        conn = await asyncpg.connect(dsn)
        try:  # only a hash of the secret is stored
            stored = await conn.fetchval("SELECT key_hash FROM api_keys WHERE key_id = $1", key_id)
            assert stored and key.split(".", 1)[1] not in stored
        finally:
            await conn.close()
    new_id, new_key = await rotate_key(settings, key_id, timedelta(seconds=0))
    assert await _resolves(settings.ledger_dsn, new_key) == "service"
    assert "expired" in await _resolves(settings.ledger_dsn, key)
    assert await revoke_key(settings, new_id)
    assert "revoked" in await _resolves(settings.invoice_dsn, new_key)
    _, short = await create_key(settings, "acme", "readonly", datetime.now(UTC) - timedelta(seconds=1))
    assert "expired" in await _resolves(settings.ledger_dsn, short)
    listed = {k["key_id"]: k for k in await list_keys(settings, "acme")}
    assert listed[new_id]["revoked_at"] is not None and len(listed) == 4
    with pytest.raises(SystemExit):
        await create_key(settings, "nobody", "service", None)
