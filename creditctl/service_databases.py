"""The service databases as the admin commands see them: migrated, and one connection to each.

Tenants, keys and migrations live in every service database (ledger and invoice), so the
commands that change them (`migrate`, `tenants`, `keys`) open all of them. With the stack down and
the embedded Postgres in use, the command starts that Postgres for itself and stops it again when it
is done: nothing is left running behind a person's back (`opened`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from service_runtime.databases import Databases, migrate_service, resolve_databases
from service_runtime.settings import Settings


def service_migrations() -> dict[str, Path]:
    """Each service database's own migration directory (migrate_service runs tenancy first)."""
    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS

    return {"ledger": LEDGER_MIGRATIONS, "invoice": INVOICE_MIGRATIONS}


@asynccontextmanager
async def opened(settings: Settings, *, migrated: bool = True) -> AsyncIterator[Databases]:
    """Both databases (migrated unless told not to); an embedded Postgres that was not running before is
    started for the block and stopped after it."""
    probe = resolve_databases(settings, start_embedded=False)
    started_here = probe.embedded is not None and not probe.embedded.is_running()
    dbs = await asyncio.to_thread(resolve_databases, settings)  # starts the embedded one if needed (idempotent)
    try:
        if migrated:
            await _migrate(dbs)
        yield dbs
    finally:
        if started_here and dbs.embedded is not None:
            await asyncio.to_thread(dbs.embedded.stop)


async def _migrate(dbs: Databases) -> dict[str, list[str]]:
    dirs = service_migrations()
    return {
        "ledger": await migrate_service(dbs.ledger_dsn, dirs["ledger"]),
        "invoice": await migrate_service(dbs.invoice_dsn, dirs["invoice"]),
    }


async def migrate_all(settings: Settings) -> dict[str, list[str]]:
    """Applies every pending migration; the names applied per database."""
    async with opened(settings, migrated=False) as dbs:
        return await _migrate(dbs)


@asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[list[asyncpg.Connection]]:
    """One connection per service database (ledger first), migrated; closed (and an embedded Postgres
    started for the block stopped) after the block."""
    async with opened(settings) as dbs:
        conns = [await asyncpg.connect(dsn) for dsn in (dbs.ledger_dsn, dbs.invoice_dsn)]
        try:
            yield conns
        finally:
            for conn in conns:
                await conn.close()
