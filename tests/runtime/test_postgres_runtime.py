"""Shared Postgres runtime: waiting for a database, per-component migrations, stop that verifies."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncpg
import pytest

from service_runtime.embedded_postgres import EmbeddedPostgres, free_port
from service_runtime.postgres import component_of, migration_files, wait_for_database
from tests.postgres_fixtures import server


async def test_wait_for_database_returns_when_up_and_gives_up_when_down() -> None:
    await wait_for_database(server().dsn(), wait_s=5)
    started = time.monotonic()
    with pytest.raises(OSError):
        await wait_for_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", wait_s=0.5)
    assert time.monotonic() - started < 5


async def test_a_database_restarted_under_a_waiting_service_is_reached(tmp_path: Path) -> None:
    pg = await asyncio.to_thread(lambda: EmbeddedPostgres(tmp_path / "pg", fsync=False).start())
    try:
        await asyncio.to_thread(pg.stop, "immediate")
        assert not pg.is_running()
        waiting = asyncio.create_task(wait_for_database(pg.dsn(), wait_s=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.to_thread(pg.start)
        await asyncio.wait_for(waiting, 30)
    finally:
        await asyncio.to_thread(pg.stop)


def test_migrations_are_numbered_per_component() -> None:
    ledger = Path("ledger_service/storage/migrations")
    runtime = Path("service_runtime/migrations")
    assert (component_of(ledger), component_of(runtime)) == ("ledger_service", "service_runtime")
    names = [(c, v) for c, v, _, _ in migration_files(runtime, ledger)]
    assert names[:2] == [("service_runtime", 1), ("service_runtime", 2)] and ("ledger_service", 2) in names


@pytest.mark.parametrize("service", ["ledger", "invoice"])
async def test_both_services_migrate_the_same_way(service: str) -> None:
    """migrate_service: tenancy first, then the service's own, then row security on every tenant table."""
    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
    from service_runtime.databases import migrate_service

    directory = LEDGER_MIGRATIONS if service == "ledger" else INVOICE_MIGRATIONS
    pg = server()
    name = f"migrate_{service}_{os.getpid()}"
    admin = await asyncpg.connect(pg.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    applied = await migrate_service(pg.dsn(name), directory)
    components = [a.split("/")[0] for a in applied]
    assert components == sorted(components, key=lambda c: c != "service_runtime")  # tenancy first
    assert set(components) == {"service_runtime", f"{service}_service"}
    assert await migrate_service(pg.dsn(name), directory) == []  # idempotent
    conn = await asyncpg.connect(pg.dsn(name))
    try:
        unprotected = await conn.fetch("""
            SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
            WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace AND NOT c.relrowsecurity
              AND c.relname NOT IN ('tenants', 'api_keys', 'schema_migrations')""")
        assert [r["relname"] for r in unprotected] == []
        policies = await conn.fetchval("SELECT count(*) FROM pg_policies WHERE policyname = 'tenant_isolation'")
        assert policies > 3
    finally:
        await conn.close()
