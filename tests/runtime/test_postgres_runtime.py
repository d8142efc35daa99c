"""Shared Postgres runtime: waiting for a database, per-component migrations, stop that verifies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

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
