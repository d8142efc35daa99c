"""Postgres connection pools and the numbered-migration runner shared by every service."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import asyncpg

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# Serialises concurrent migrators (two services starting at once) on one database.
_MIGRATION_LOCK_ID = 0x63726564  # "cred"


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 16) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=60)
    assert pool is not None
    return pool


def migration_files(*dirs: Path) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration in `dirs`, ordered; versions must be unique."""
    found: dict[int, tuple[int, str, str]] = {}
    for d in dirs:
        for path in sorted(d.glob("*.sql")):
            m = _MIGRATION_NAME.match(path.name)
            if not m:
                raise ValueError(f"migration file name must look like 0001_name.sql: {path}")
            version = int(m.group(1))
            if version in found:
                raise ValueError(f"two migrations numbered {version}: {found[version][1]}, {path.name}")
            found[version] = (version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, *dirs: Path) -> list[str]:
    """Applies the migrations not yet applied, each in its own transaction; returns their names.

    A migration already applied whose file changed since is an error: migrations are forward-only.
    """
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        await conn.execute(_CREATE_MIGRATIONS_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        for version, name, sql in migration_files(*dirs):
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in applied:
                if applied[version]["checksum"] != checksum:
                    raise RuntimeError(f"migration {name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    version, name, checksum,
                )
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
        await conn.close()
    return applied_now
