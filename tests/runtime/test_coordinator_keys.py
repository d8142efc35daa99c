"""The coordinator's minted keys: expiring, re-minted before expiry, revoked by the store that minted them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from coordinator.keys import COORDINATOR_ROLE, MintingKeyStore, UnknownTenant, key_ttl_from_env
from creditctl.commands.tenants import create_tenant
from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from service_runtime.api_keys import KeyResolver
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.rejections import Reason, Rejection
from service_runtime.settings import Settings
from tests.postgres_fixtures import fresh_database

TTL = timedelta(hours=24)


class Clock:
    """A settable clock for the store (the services compare expiry with the real one)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
async def settings() -> Settings:
    ledger = await fresh_database("ledger", [TENANCY_MIGRATIONS, LEDGER_MIGRATIONS])
    invoice = await fresh_database("invoice", [TENANCY_MIGRATIONS, INVOICE_MIGRATIONS])
    settings = Settings(ledger_dsn=ledger, invoice_dsn=invoice)
    await create_tenant(settings, "acme", "Acme", "admin")
    return settings


def _dsns(settings: Settings) -> list[str]:
    return [settings.ledger_dsn, settings.invoice_dsn]


async def _resolve(dsn: str, key: str) -> str:
    """The caller's role, or the rejection's message."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        try:
            return (await KeyResolver(pool).resolve(key)).role
        except Rejection as rej:
            assert rej.reason is Reason.UNAUTHENTICATED
            return rej.message
    finally:
        await pool.close()


async def _key_row(dsn: str, key: str) -> asyncpg.Record:
    key_id = key.removeprefix("ck_").partition(".")[0]
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT created_at, expires_at, revoked_at FROM api_keys WHERE key_id = $1", key_id)
    finally:
        await conn.close()
    assert row is not None
    return row


async def test_minted_key_expires_after_ttl_and_authenticates(settings: Settings) -> None:
    clock = Clock()
    store = MintingKeyStore(_dsns(settings), TTL, now=clock)
    try:
        key = await store.key_for("acme")
        assert await store.key_for("acme") == key  # cached
        for dsn in _dsns(settings):
            assert await _resolve(dsn, key) == COORDINATOR_ROLE
            row = await _key_row(dsn, key)
            assert row["expires_at"] == clock.at + TTL and row["revoked_at"] is None
            assert abs(row["expires_at"] - row["created_at"] - TTL) < timedelta(seconds=5)
        with pytest.raises(UnknownTenant):
            await store.key_for("nobody")
    finally:
        await store.close()


async def test_key_is_reminted_at_half_ttl_and_the_old_one_stays_valid(settings: Settings) -> None:
    clock = Clock()
    store = MintingKeyStore(_dsns(settings), TTL, now=clock)
    try:
        first = await store.key_for("acme")
        clock.at += TTL / 2 - timedelta(microseconds=1)
        assert await store.key_for("acme") == first
        clock.at += timedelta(microseconds=1)
        second, again = await asyncio.gather(store.key_for("acme"), store.key_for("acme"))
        assert second == again != first  # single flight: one new key, not two
        assert (await _key_row(settings.ledger_dsn, second))["expires_at"] == clock.at + TTL
        # the replaced key is left to expire: an activity may still be using it
        assert await _resolve(settings.ledger_dsn, first) == COORDINATOR_ROLE
    finally:
        await store.close()
    for key in (first, second):
        assert "revoked" in await _resolve(settings.invoice_dsn, key)


async def test_close_revokes_only_this_stores_keys(settings: Settings) -> None:
    mine, other = MintingKeyStore(_dsns(settings)), MintingKeyStore(_dsns(settings))
    try:
        my_key, other_key = await mine.key_for("acme"), await other.key_for("acme")
        await mine.close()
        for dsn in _dsns(settings):
            assert "revoked" in await _resolve(dsn, my_key)
            assert await _resolve(dsn, other_key) == COORDINATOR_ROLE
        with pytest.raises(RuntimeError, match="closed"):
            await mine.key_for("acme")
    finally:
        await other.close()
    assert "revoked" in await _resolve(settings.ledger_dsn, other_key)


async def test_half_written_key_is_revoked_and_close_is_best_effort(settings: Settings) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    store = MintingKeyStore([*_dsns(settings), unreachable])
    with pytest.raises(OSError):  # written into both service databases, then the third fails
        await store.key_for("acme")
    await store.close()  # the unreachable database is logged, not raised
    for dsn in _dsns(settings):
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT revoked_at FROM api_keys WHERE role = $1", COORDINATOR_ROLE)
        finally:
            await conn.close()
        assert len(rows) == 1 and rows[0]["revoked_at"] is not None


async def test_expired_minted_key_is_refused(settings: Settings) -> None:
    clock = Clock()
    clock.at -= timedelta(minutes=2)  # minted two minutes ago with a one-minute ttl
    store = MintingKeyStore(_dsns(settings), timedelta(minutes=1), now=clock)
    try:
        key = await store.key_for("acme")
        for dsn in _dsns(settings):
            assert "expired" in await _resolve(dsn, key)
    finally:
        await store.close()


def test_ttl_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDITS_COORDINATOR_KEY_TTL_S", raising=False)
    assert key_ttl_from_env() == timedelta(hours=24)
    monkeypatch.setenv("CREDITS_COORDINATOR_KEY_TTL_S", "3600")
    assert key_ttl_from_env() == timedelta(hours=1)
    for bad in ("0", "-5", "1.5", "day"):
        monkeypatch.setenv("CREDITS_COORDINATOR_KEY_TTL_S", bad)
        with pytest.raises(ValueError, match="CREDITS_COORDINATOR_KEY_TTL_S"):
            key_ttl_from_env()
    with pytest.raises(ValueError):
        MintingKeyStore(["postgresql://unused"], timedelta(0))
