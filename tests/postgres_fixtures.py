"""Test databases on one embedded Postgres per test process (per xdist worker).

Each service's migrations run once into a template database; every test that asks for a database
gets a fresh copy (CREATE DATABASE ... TEMPLATE), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.postgres import migrate

_server: EmbeddedPostgres | None = None
_templates: dict[str, str] = {}
_counter = itertools.count()


def server() -> EmbeddedPostgres:
    global _server
    if _server is None:
        root = Path(tempfile.mkdtemp(prefix="credits-test-pg-"))
        # fsync stays on: durability is part of what the tests exercise, and it is cheap here.
        _server = EmbeddedPostgres(root, fsync=os.environ.get("CREDITS_TEST_FSYNC", "1") == "1").start()
    return _server


def stop_server() -> None:
    """Stops this process's test server and deletes its directory (its WAL alone reaches a GB)."""
    if _server is not None:
        _server.stop("immediate")
        shutil.rmtree(_server.data_dir, ignore_errors=True)


async def fresh_database(name: str, migration_dirs: Sequence[Path]) -> str:
    """A new database migrated with `migration_dirs`; returns its DSN."""
    pg = server()
    template = f"tmpl_{name}"
    admin = await asyncpg.connect(pg.dsn())
    try:
        if template not in _templates:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", template)
            if not exists:
                await admin.execute(f'CREATE DATABASE "{template}"')
            await migrate(pg.dsn(template), *migration_dirs)
            _templates[template] = template
        db = f"{name}_{os.getpid()}_{next(_counter)}"
        for attempt in range(20):
            try:
                await admin.execute(f'CREATE DATABASE "{db}" TEMPLATE "{template}"')
                return pg.dsn(db)
            except asyncpg.ObjectInUseError:  # the template is briefly in use by another copy
                await asyncio.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"could not create {db} from {template}: template stayed in use")
    finally:
        await admin.close()
