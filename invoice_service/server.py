"""Invoice gRPC server: wires storage operations and the servicer into the shared bootstrap."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
from credits.invoice.v1 import invoice_pb2_grpc as pb_grpc

from invoice_service.api.permissions import PERMISSIONS, SERVICE_NAME
from invoice_service.api.servicer import InvoiceServicer
from invoice_service.config import InvoiceConfig
from invoice_service.portal_revocations import LedgerRevocations
from invoice_service.storage import MIGRATIONS_DIR
from invoice_service.storage.catalog import CatalogOperations
from invoice_service.storage.invoices import InvoiceOperations
from invoice_service.storage.pricing_rules import PricingRuleOperations
from invoice_service.storage.subscription_changes import SubscriptionChanges
from invoice_service.storage.usage import UsageOperations
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


async def create_invoice_server(dsn: str, address: str = "127.0.0.1:0", settings: Settings | None = None, *,
                                usage_grace_s: int | None = None) -> tuple[grpc.aio.Server, int, asyncpg.Pool]:
    """Migrates `dsn`, then starts the invoice service on `address`. Returns (server, port, pool).

    The caller stops the server and closes the pool.
    """
    settings = settings or Settings.from_env()
    await migrate_service(dsn, MIGRATIONS_DIR)
    config = InvoiceConfig.from_settings(settings, usage_grace_s)
    service_dsn = app_dsn(dsn, settings.invoice_app_dsn)
    pool = await create_tenant_pool(service_dsn, max_size=settings.pool_max_size)
    catalog = CatalogOperations(pool)
    servicer = InvoiceServicer(catalog, UsageOperations(pool, catalog, config.usage_grace_s),
                               InvoiceOperations(pool, catalog, config.clock_skew_s), config,
                               SubscriptionChanges(pool, catalog),
                               PricingRuleOperations(pool))
    # A portal session is admitted only once the ledger (which keeps the revocations) has not refused it.
    revocations = LedgerRevocations(settings.ledger_addr, settings.portal_revocation_cache_s)
    try:
        server, port = await create_server([(pb_grpc.add_InvoiceServiceServicer_to_server, servicer, SERVICE_NAME)],
                                           KeyResolver(pool, revocations), PERMISSIONS, address,
                                           health_dsn=service_dsn, settings=settings)
    except BaseException:
        await pool.close()
        raise
    return server, port, pool


async def refresh_gauges(pool: asyncpg.Pool) -> None:
    """Invoices waiting on a saga (PREPARED or VOID_PENDING): a stuck coordinator shows here."""
    metrics.INVOICES_PREPARED.set(await pool.fetchval(
        "SELECT count(*) FROM invoices WHERE status IN ('PREPARED', 'VOID_PENDING')"))


async def serve(settings: Settings) -> None:
    """Serves on settings.invoice_addr (after migrating the invoice database) until cancelled."""
    dsn = settings.invoice_dsn or resolve_databases(settings).invoice_dsn  # the embedded Postgres only if needed
    await wait_for_database(dsn)
    server, port, pool = await create_invoice_server(dsn, settings.invoice_addr, settings)
    metrics_port = metrics.start_endpoint()
    owner_pool = await create_pool(dsn, min_size=1, max_size=1)  # gauges count across tenants
    gauges = asyncio.create_task(metrics.refresh_forever(lambda: refresh_gauges(owner_pool)))
    log.info("invoice service listening on port %d (metrics: %s)", port, metrics_port)
    try:
        await server.wait_for_termination()
    finally:
        gauges.cancel()
        await server.stop(grace=5)
        await pool.close()
        await owner_pool.close()


def main() -> None:
    settings = settings_or_exit()  # a bad CREDITS_* value: one line naming it, exit 2
    configure_logging(settings=settings)
    with port_in_use_is_one_line():
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
