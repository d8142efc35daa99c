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
from service_runtime import metrics
from service_runtime.api_keys import KeyResolver
from service_runtime.databases import migrate_service, resolve_databases
from service_runtime.grpc_server import create_server
from service_runtime.logs import configure_logging
from service_runtime.ports import port_in_use_is_one_line
from service_runtime.postgres import create_pool, wait_for_database
from service_runtime.row_security import app_dsn, create_tenant_pool
from service_runtime.settings import Settings, settings_or_exit

log = logging.getLogger(__name__)


async def create_ledger_server(dsn: str, address: str = "127.0.0.1:0", settings: Settings | None = None,
                               ) -> tuple[grpc.aio.Server, int, asyncpg.Pool]:
    """Migrates `dsn`, then starts the ledger server on `address`. Returns (server, port, pool)."""
    settings = settings or Settings.from_env()
    await migrate_service(dsn, MIGRATIONS_DIR)
    service_dsn = app_dsn(dsn, settings.ledger_app_dsn)
    pool = await create_tenant_pool(service_dsn, max_size=settings.pool_max_size)
    servicer = LedgerServicer(pool, settings)
    server, port = await create_server(
        [(ledger_pb2_grpc.add_LedgerServiceServicer_to_server, servicer, SERVICE)],
        KeyResolver(pool), PERMISSIONS, address, health_dsn=service_dsn, settings=settings,
    )
    return server, port, pool


_GAUGES = """
SELECT (SELECT count(*) FROM holds h WHERE NOT EXISTS (
            SELECT 1 FROM hold_resolutions r WHERE r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key)) AS pending,
       (SELECT count(*) FROM lots l JOIN lot_balances b ON b.tenant_id = l.tenant_id AND b.lot_id = l.lot_id
        WHERE b.available > 0 AND l.expires_at > now() AND l.expires_at <= now() + interval '24 hours') AS expiring
"""


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """Sets the ledger's gauges (holds pending, lots expiring within a day) from the database."""
    row = await pool.fetchrow(_GAUGES)
    metrics.HOLDS_PENDING.set(row["pending"])
    metrics.LOTS_EXPIRING.set(row["expiring"])


async def serve(settings: Settings) -> None:
    dsn = resolve_databases(settings).ledger_dsn
    await wait_for_database(dsn)
    server, port, pool = await create_ledger_server(dsn, settings.ledger_addr, settings)
    metrics_port = metrics.start_endpoint()
    owner_pool = await create_pool(dsn, min_size=1, max_size=1)  # gauges count across tenants
    gauges = asyncio.create_task(metrics.refresh_forever(lambda: refresh_gauges(owner_pool)))
    log.info("ledger listening on %s (metrics: %s)", port, metrics_port)
    try:
        await server.wait_for_termination()
    finally:
        gauges.cancel()
        await server.stop(5)
        await pool.close()
        await owner_pool.close()


def main() -> None:
    settings = settings_or_exit()  # a bad CREDITS_* value: one line naming it, exit 2
    configure_logging(settings=settings)
    with port_in_use_is_one_line():
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            asyncio.run(serve(settings))
        else:
            uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
