"""Starts the ledger gRPC server on its own database."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.api.permissions import PERMISSIONS
from ledger_service.api.servicer import SERVICE, LedgerServicer
from ledger_service.storage import MIGRATIONS_DIR
from service_runtime.api_keys import KeyResolver
from service_runtime.databases import TENANCY_MIGRATIONS, resolve_databases
from service_runtime.grpc_server import create_server
from service_runtime.postgres import create_pool, migrate
from service_runtime.settings import Settings

log = logging.getLogger(__name__)


async def create_ledger_server(dsn: str, address: str = "127.0.0.1:0", settings: Settings | None = None,
                               ) -> tuple[grpc.aio.Server, int, asyncpg.Pool]:
    """Migrates `dsn`, then starts the ledger server on `address`. Returns (server, port, pool)."""
    settings = settings or Settings.from_env()
    await migrate(dsn, TENANCY_MIGRATIONS, MIGRATIONS_DIR)
    pool = await create_pool(dsn, max_size=settings.pool_max_size)
    servicer = LedgerServicer(pool, settings)
    server, port = await create_server(
        [(ledger_pb2_grpc.add_LedgerServiceServicer_to_server, servicer, SERVICE)],
        KeyResolver(pool), PERMISSIONS, address,
    )
    return server, port, pool


async def serve(settings: Settings) -> None:
    dsn = resolve_databases(settings).ledger_dsn
    server, port, pool = await create_ledger_server(dsn, settings.ledger_addr, settings)
    log.info("ledger listening on %s", port)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(5)
        await pool.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(Settings.from_env()))
    else:
        uvloop.run(serve(Settings.from_env()))


if __name__ == "__main__":
    main()
