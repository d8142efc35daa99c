"""The service databases as the admin commands see them: migrated, and one connection to each.

Tenants, keys and migrations live in every service database (ledger and invoice), so the
commands that change them (`migrate`, `tenants`, `keys`) open all of them.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from service_runtime.databases import migrate_service, resolve_databases
from service_runtime.settings import Settings


def service_migrations() -> dict[str, Path]:
    """Each service database's own migration directory (migrate_service runs tenancy first)."""
    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS

    return {"ledger": LEDGER_MIGRATIONS, "invoice": INVOICE_MIGRATIONS}


async def migrate_all(settings: Settings) -> dict[str, list[str]]:
    """Applies every pending migration; the names applied per database."""
    dbs = resolve_databases(settings)
    dirs = service_migrations()
    return {
        "ledger": await migrate_service(dbs.ledger_dsn, dirs["ledger"]),
        "invoice": await migrate_service(dbs.invoice_dsn, dirs["invoice"]),
    }


async def connect_each(settings: Settings) -> list[asyncpg.Connection]:
    """One connection per service database (ledger first), migrated; the caller closes them."""
    dbs = resolve_databases(settings)
    await migrate_all(settings)
    return [await asyncpg.connect(dsn) for dsn in (dbs.ledger_dsn, dbs.invoice_dsn)]


async def close_each(conns: list[asyncpg.Connection]) -> None:
    for conn in conns:
        await conn.close()
