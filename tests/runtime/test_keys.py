"""API keys: hashed at rest, expirable, revocable, rotatable — in every service database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from creditctl.commands.keys import create_key, list_keys, revoke_key, rotate_key
from creditctl.commands.tenants import create_tenant
from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from service_runtime.api_keys import Caller, KeyResolver
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


async def _caller(dsn: str, key: str) -> Caller:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        return await KeyResolver(pool).resolve(key)
    finally:
        await pool.close()


async def test_keys_carry_their_owner_and_creditctl_asks_for_it(settings: Settings) -> None:
    """`creditctl keys create --owner` (required) stores the person or system behind the key in every
    database; a rotated key keeps it; the coordinator's keys are the system's."""
    from coordinator.keys import COORDINATOR_OWNER, MintingKeyStore
    from tests.creditctl.test_user_mistakes import creditctl, one_line

    await create_tenant(settings, "acme", "Acme", "admin", owner="ops@acme.example")
    env = {"CREDITS_LEDGER_DSN": settings.ledger_dsn, "CREDITS_INVOICE_DSN": settings.invoice_dsn}
    code, out, err = await creditctl("keys", "create", "acme", "--role", "finance", "--owner", "alice@acme.example",
                                     "--json", **env)
    assert code == 0, err
    created = json.loads(out)
    assert created["owner"] == "alice@acme.example"
    for dsn in (settings.ledger_dsn, settings.invoice_dsn):
        caller = await _caller(dsn, created["api_key"])
        assert (caller.role, caller.owner, caller.principal) == ("finance", "alice@acme.example", "alice@acme.example")
    code, _, err = await creditctl("keys", "create", "acme", **env)
    assert code == 2 and "--owner" in one_line(err)
    code, _, err = await creditctl("keys", "create", "acme", "--owner", " ", **env)
    assert code == 2 and "--owner" in one_line(err)
    _, rotated = await rotate_key(settings, created["key_id"], timedelta(hours=1))
    assert (await _caller(settings.ledger_dsn, rotated)).owner == "alice@acme.example"
    listed = {k["key_id"]: k["owner"] for k in await list_keys(settings, "acme")}
    assert sorted(listed.values()) == ["alice@acme.example", "alice@acme.example", "ops@acme.example"]
    store = MintingKeyStore([settings.ledger_dsn, settings.invoice_dsn])
    try:
        minted = await store.key_for("acme")
        assert (await _caller(settings.invoice_dsn, minted)).owner == COORDINATOR_OWNER
    finally:
        await store.close()
    ownerless = await _caller(settings.ledger_dsn, (await create_key(settings, "acme", "readonly", None))[1])
    assert ownerless.owner == "" and ownerless.principal == f"key:{ownerless.key_id}"
