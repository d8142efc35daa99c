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


async def _new_database(name: str) -> str:
    pg = server()
    admin = await asyncpg.connect(pg.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return pg.dsn(name)


async def test_an_index_built_outside_a_transaction_lets_writers_in(tmp_path: Path) -> None:
    """A migration marked OUTSIDE_A_TRANSACTION builds its index CONCURRENTLY: while the build waits for
    an open writer, another writer still inserts (a plain CREATE INDEX would queue it behind the build);
    a second migrator waits without deadlocking the build; an INVALID leftover is rebuilt."""
    from service_runtime.postgres import OUTSIDE_A_TRANSACTION, migrate

    migrations = tmp_path / "pkg" / "migrations"
    migrations.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (migrations / "0001_t.sql").write_text("CREATE TABLE t (k int PRIMARY KEY, v int NOT NULL);\n")
    (migrations / "app_role_grants.txt").write_text("t  -\nschema_migrations  -\n")
    dsn = await _new_database(f"outside_tx_{os.getpid()}")
    assert await migrate(dsn, migrations) == ["pkg/0001_t.sql"]
    (migrations / "0002_t_by_v.sql").write_text(
        f"{OUTSIDE_A_TRANSACTION}\n-- an index on a busy table\n\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_by_v ON t (v);\n")
    open_writer, other_writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        tx = open_writer.transaction()
        await tx.start()
        await open_writer.execute("INSERT INTO t VALUES (1, 1)")
        building = asyncio.create_task(migrate(dsn, migrations))
        second = asyncio.create_task(migrate(dsn, migrations))  # polls the migration lock meanwhile
        await asyncio.sleep(0.5)
        assert not building.done()  # the concurrent build waits for the open writer...
        await asyncio.wait_for(other_writer.execute("INSERT INTO t VALUES (2, 2)"), 5)  # ...and lets others in
        await tx.commit()
        assert sorted([*await asyncio.wait_for(building, 30), *await asyncio.wait_for(second, 30)]) == [
            "pkg/0002_t_by_v.sql"]
        valid = "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 't_by_v'"
        assert await other_writer.fetchval(valid) is True
        # A build that failed half-way leaves the index INVALID and the migration unrecorded: it is rebuilt.
        await other_writer.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 't_by_v'::regclass")
        await other_writer.execute("DELETE FROM schema_migrations WHERE component = 'pkg' AND version = 2")
        assert await migrate(dsn, migrations) == ["pkg/0002_t_by_v.sql"]
        assert await other_writer.fetchval(valid) is True
    finally:
        await open_writer.close()
        await other_writer.close()


async def test_an_amended_migration_accepts_only_the_checksum_it_had() -> None:
    """0014 moved its index out to 0020 (built concurrently): a database that applied the old text
    migrates on; any other changed text is still refused."""
    from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
    from service_runtime.databases import migrate_service

    dsn = await _new_database(f"amended_{os.getpid()}")
    await migrate_service(dsn, LEDGER_MIGRATIONS)
    conn = await asyncpg.connect(dsn)
    try:
        old = "75898037f4fce664b0a8e9c156e3808e7790b012a903ec449243179a30c00b9d"
        bump = "UPDATE schema_migrations SET checksum = $1 WHERE component = 'ledger_service' AND version = 14"
        await conn.execute(bump, old)
        assert await migrate_service(dsn, LEDGER_MIGRATIONS) == []
        assert await conn.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = 'journal_by_lot_time'::regclass")
        await conn.execute(bump, "another text")
        with pytest.raises(RuntimeError, match=r"0014_balance_checkpoints\.sql changed after it was applied"):
            await migrate_service(dsn, LEDGER_MIGRATIONS)
    finally:
        await conn.close()
