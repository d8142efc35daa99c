"""Postgres connection pools and the numbered-migration runner shared by every service."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from service_runtime.row_policies import apply_row_security

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Migrations are numbered per component (the top-level package owning the directory), so the
# shared runtime and each service number their files independently.
_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component   text NOT NULL,
    version     integer NOT NULL,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""

_HAS_COMPONENT = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_name = 'schema_migrations' AND column_name = 'component')
"""

# Serialises concurrent migrators (two services starting at once) on one database.
_MIGRATION_LOCK_ID = 0x63726564  # "cred"

# A migration whose first line is this runs outside a transaction, one statement at a time: for
# `CREATE INDEX CONCURRENTLY`, which builds an index on a big table without blocking its writers (a
# plain CREATE INDEX holds off every insert while it runs). Its statements must be repeatable (IF
# NOT EXISTS): a crash half-way leaves the migration unrecorded, so it runs again from the top. An
# index a failed concurrent build left INVALID is dropped before it is built again.
OUTSIDE_A_TRANSACTION = "-- migration: outside a transaction"
_CONCURRENT_INDEX = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)
_INVALID_INDEX = "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1"

# Migrations amended after release, with the checksums they had: an amendment may only move work out
# to a later migration that redoes it idempotently (a database that applied the old text is then
# already where the new text and the later migration lead).
_AMENDED: dict[tuple[str, int], frozenset[str]] = {
    # 0014 built journal_by_lot_time in its transaction (blocking ledger writes on a big journal);
    # 0020 builds it CONCURRENTLY IF NOT EXISTS.
    ("ledger_service", 14): frozenset({"75898037f4fce664b0a8e9c156e3808e7790b012a903ec449243179a30c00b9d"}),
}


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 16,
                      setup: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                      reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                      connection_class: type[asyncpg.Connection] = asyncpg.Connection) -> asyncpg.Pool:
    """A pool on `dsn`; `setup` runs on every acquire (e.g. to scope it to the calling tenant),
    `reset` on every release instead of asyncpg's default RESET ALL round trip."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=60, setup=setup,
                                     reset=reset, connection_class=connection_class)
    assert pool is not None
    return pool


async def wait_for_database(dsn: str, wait_s: float = 60) -> None:
    """Returns once `dsn` accepts connections; retries a database that is down or recovering for
    `wait_s` (a service restarted by a supervisor right after its database must not exit at once)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    delay = 0.1
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            await conn.close()
            return


def component_of(directory: Path) -> str:
    """The top-level package that owns a migrations directory (e.g. ledger_service)."""
    d = directory.resolve()
    top = d
    while (d.parent / "__init__.py").exists():
        d = d.parent
        top = d
    while not (top / "__init__.py").exists() and top.parent != top:
        top = top.parent
    return top.name


def migration_files(*dirs: Path) -> list[tuple[str, int, str, str]]:
    """(component, version, name, sql) per migration, directory by directory, each in number order."""
    out: list[tuple[str, int, str, str]] = []
    for d in dirs:
        component = component_of(d)
        seen: dict[int, str] = {}
        for path in sorted(d.glob("*.sql")):
            m = _MIGRATION_NAME.match(path.name)
            if not m:
                raise ValueError(f"migration file name must look like 0001_name.sql: {path}")
            version = int(m.group(1))
            if version in seen:
                raise ValueError(f"two migrations numbered {version} in {component}: {seen[version]}, {path.name}")
            seen[version] = path.name
            out.append((component, version, path.name, path.read_text()))
    return out


async def migrate(dsn: str, *dirs: Path) -> list[str]:
    """Applies the migrations not yet applied, each in its own transaction; returns their names.

    A migration already applied whose file changed since is an error: migrations are forward-only.
    """
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        # Polled, not waited for: a migrator waiting inside pg_advisory_lock holds a snapshot, and a
        # concurrent index build (OUTSIDE_A_TRANSACTION) waits for every snapshot — a deadlock.
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK_ID):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await conn.execute(_CREATE_MIGRATIONS_TABLE)
        if not await conn.fetchval(_HAS_COMPONENT):
            raise RuntimeError("this database predates per-component migrations (0.x has no upgrade path): "
                               "recreate it, e.g. delete the data directory")
        rows = await conn.fetch("SELECT component, version, checksum FROM schema_migrations")
        applied = {(r["component"], r["version"]): r["checksum"] for r in rows}
        for component, version, name, sql in migration_files(*dirs):
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if (component, version) in applied:
                was = applied[(component, version)]
                if was != checksum and was not in _AMENDED.get((component, version), ()):
                    raise RuntimeError(f"migration {component}/{name} changed after it was applied")
                continue
            record = ("INSERT INTO schema_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                      component, version, name, checksum)
            if sql.startswith(OUTSIDE_A_TRANSACTION):
                await _run_outside_a_transaction(conn, sql)
                await conn.execute(*record)
            else:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(*record)
            applied_now.append(f"{component}/{name}")
        await apply_row_security(conn, dirs)  # idempotent: covers tables any migration added
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
        await conn.close()
    return applied_now


async def _run_outside_a_transaction(conn: asyncpg.Connection, sql: str) -> None:
    """Each `;`-terminated statement on its own (autocommit); an INVALID index left by a failed
    concurrent build of the same name is dropped first. Comments are whole `--` lines; statements
    hold no `;` inside them."""
    code = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    for body in (part.strip() for part in code.split(";")):
        if not body:
            continue
        if (m := _CONCURRENT_INDEX.search(body)) and await conn.fetchval(_INVALID_INDEX, m.group(1)):
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{m.group(1)}"')
        await conn.execute(body)
