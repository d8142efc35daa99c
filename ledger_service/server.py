"""Starts the ledger gRPC server on its own database."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial

import asyncpg
import grpc
from credits.alerts.v1 import alerts_pb2_grpc
from credits.finance.v1 import finance_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client

from finance.api.servicer import FinanceServicer
from finance.storage.projector import BackgroundProjector
from ledger_service.api import alerts_servicer
from ledger_service.api.alerts_servicer import AlertsServicer
from ledger_service.api.permissions import ALERT_PERMISSIONS, PERMISSIONS
from ledger_service.api.servicer import SERVICE, LedgerServicer
from ledger_service.domain.webhooks import RetrySchedule
from ledger_service.operations.context import Ledger, utc_now
from ledger_service.storage import MIGRATIONS_DIR, portal_links
from ledger_service.topups.http_provider import HttpPaymentProvider
from ledger_service.topups.saga import TopUpSettings, start_topups
from ledger_service.topups.stripe_provider import StripePaymentProvider
from ledger_service.webhooks.dispatcher import DeliverySettings, RunningDispatcher, start_dispatcher
from service_runtime import metrics
from service_runtime.api_keys import KeyResolver
from service_runtime.databases import migrate_service, resolve_databases
from service_runtime.grpc_server import create_server
from service_runtime.logs import configure_logging
from service_runtime.permissions import FINANCE_BOOKS, FINANCE_SERVICE
from service_runtime.ports import port_in_use_is_one_line
from service_runtime.postgres import create_pool, wait_for_database
from service_runtime.row_security import app_dsn, create_tenant_pool
from service_runtime.settings import Settings, settings_or_exit
from service_runtime.temporal_client import connect_temporal

log = logging.getLogger(__name__)


async def create_ledger_server(dsn: str, address: str = "127.0.0.1:0", settings: Settings | None = None,
                               clock: Callable[[], datetime] = utc_now) -> tuple[grpc.aio.Server, int, asyncpg.Pool]:
    """Migrates `dsn`, then starts the ledger server (and the finance books' API) on `address`.
    Returns (server, port, pool). `clock` is the services' now (tests walk it through a year)."""
    settings = settings or Settings.from_env()
    await migrate_service(dsn, MIGRATIONS_DIR)
    service_dsn = app_dsn(dsn, settings.ledger_app_dsn)
    pool = await create_tenant_pool(service_dsn, max_size=settings.pool_max_size)
    servicer = LedgerServicer(pool, settings, clock, listen_dsn=service_dsn)
    alerts = AlertsServicer(Ledger.create(pool, settings))
    server, port = await create_server(
        [(ledger_pb2_grpc.add_LedgerServiceServicer_to_server, servicer, SERVICE),
         (alerts_pb2_grpc.add_AlertsServiceServicer_to_server, alerts, alerts_servicer.SERVICE),
         (finance_pb2_grpc.add_FinanceServiceServicer_to_server, FinanceServicer(pool, clock), FINANCE_SERVICE)],
        KeyResolver(pool, partial(portal_links.is_revoked, pool)),  # per-link portal revocations
        {**PERMISSIONS, **ALERT_PERMISSIONS, **FINANCE_BOOKS}, address, health_dsn=service_dsn,
        settings=settings,
    )
    return server, port, pool


def delivery_settings(settings: Settings) -> DeliverySettings:
    schedule = RetrySchedule(base_s=settings.webhook_retry_base_s, max_attempts=settings.webhook_max_attempts)
    return DeliverySettings(schedule=schedule, poll_s=settings.webhook_poll_s)


async def start_webhook_delivery(dsn: str, settings: Settings, temporal: Client | None = None) -> RunningDispatcher:
    """The webhook delivery loop beside a ledger server (owner DSN: it drains every tenant's outbox), and the
    auto top-up sagas' starter and worker when a payment provider is configured (on `temporal`, else a client
    of CREDITS_TEMPORAL_ADDR; they stop with the delivery loop)."""
    delivery = await start_dispatcher(dsn, delivery_settings(settings))
    provider = payment_provider(settings)
    if provider is None:
        return delivery
    if temporal is None and settings.temporal_addr:
        temporal = await connect_temporal(settings.temporal_addr, settings=settings)
    if temporal is None:
        log.warning("a payment provider is configured but no Temporal (CREDITS_TEMPORAL_ADDR): no auto top-ups")
        await provider.close()
        return delivery
    topups = TopUpSettings(retry_initial_s=settings.topup_retry_base_s, retry_max_s=settings.topup_retry_cap_s,
                           pending_poll_s=settings.topup_retry_base_s, lease_s=settings.topup_lease_s,
                           step_timeout_s=2 * settings.payment_timeout_s + 5)
    delivery.also_stop(await start_topups(dsn, provider, temporal, topups), provider)
    return delivery


def payment_provider(settings: Settings) -> HttpPaymentProvider | StripePaymentProvider | None:
    if settings.payment_provider == "stripe":
        return StripePaymentProvider(settings.payment_api_key, api_base=settings.payment_provider_url,
                                     timeout_s=settings.payment_timeout_s)
    if settings.payment_provider_url:
        return HttpPaymentProvider(settings.payment_provider_url, settings.payment_api_key,
                                   timeout_s=settings.payment_timeout_s)
    return None


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


def settle_heap() -> None:
    """Once a server process has started: everything imported and built so far leaves the cycle
    collector's view (gc.freeze), and young collections run every 10,000 allocations instead of 700.

    Why: under `creditctl bench ledger` the collector took about a third of the ledger server's CPU,
    mostly full collections re-scanning the import-time heap (protobuf, grpc, aiohttp: ~100 ms each,
    which also lands in the unary p99). Only objects created while serving are scanned now."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 10)


async def serve(settings: Settings) -> None:
    dsn = settings.ledger_dsn or resolve_databases(settings).ledger_dsn  # the embedded Postgres only if needed
    await wait_for_database(dsn)
    server, port, pool = await create_ledger_server(dsn, settings.ledger_addr, settings)
    delivery = await start_webhook_delivery(dsn, settings)
    metrics_port = metrics.start_endpoint()
    owner_pool = await create_pool(dsn, min_size=1, max_size=1)  # gauges count across tenants
    gauges = asyncio.create_task(metrics.refresh_forever(lambda: refresh_gauges(owner_pool)))
    books = await BackgroundProjector.start(dsn)  # the finance books follow the journal
    settle_heap()
    log.info("ledger listening on %s (metrics: %s)", port, metrics_port)
    try:
        await server.wait_for_termination()
    finally:
        gauges.cancel()
        await books.stop()
        await delivery.stop()
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
