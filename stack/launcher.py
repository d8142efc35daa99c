"""`creditctl up` / `creditctl demo`: the whole stack in one foreground process.

Embedded Postgres (two databases), `temporal server start-dev` with the UI and the search
attributes, the ledger, invoice and billing front-door gRPC servers, the coordinator worker,
the schedules and the customer portal (a web client of the two gRPC servers, CREDITS_PORTAL_ADDR).
Any part pointed elsewhere by settings (CREDITS_LEDGER_DSN, CREDITS_INVOICE_DSN,
CREDITS_TEMPORAL_ADDR) is used instead of started. Data stays in `settings.data_dir`.

The parts every local stack needs, whichever way it runs its servers (here in this process; the
proving harness runs each in an OS process of its own), are the functions above `running_stack`:
`prepare_databases` (found or started, migrated), `start_temporal` (the dev server with the
coordinator's search attributes) and `add_tenant_key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from temporalio.client import Client

from coordinator import search_attributes as sa
from coordinator.front_door import create_front_door, ui_link
from coordinator.keys import MintingKeyStore, key_ttl_from_env
from coordinator.schedules import ensure_schedules
from coordinator.worker import WorkerConfig, running_worker, temporal_runtime
from service_runtime import metrics, portal_sessions, tracing
from service_runtime.databases import Databases, embedded_server, resolve_databases
from service_runtime.ports import check_free, host_port
from service_runtime.settings import Settings, env_name, remove_stack_file, write_stack_file
from service_runtime.temporal_client import connect_temporal
from service_runtime.temporal_server import TemporalDevServer

log = logging.getLogger(__name__)


@dataclass
class RunningStack:
    settings: Settings
    client: Client
    ledger_addr: str
    invoice_addr: str
    billing_addr: str
    temporal_addr: str
    ui_url: str
    ledger_dsn: str
    invoice_dsn: str
    addresses: dict[str, str] = field(default_factory=dict)
    portal_url: str = ""

    def workflow_url(self, workflow_id: str, run_id: str = "") -> str:
        return ui_link(self.ui_url, self.client.namespace, workflow_id, run_id)


async def prepare_databases(settings: Settings, *, migrated: bool = True) -> Databases:
    """The two service databases, on the settings' DSNs or on the embedded Postgres (started in
    `settings.data_dir`); with every migration applied (`migrate_service`) unless `migrated` is
    False, for a caller whose servers migrate their own database as they start."""
    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
    from service_runtime.databases import migrate_service

    dbs = await asyncio.to_thread(resolve_databases, settings)
    if not migrated:
        return dbs
    try:
        await migrate_service(dbs.ledger_dsn, LEDGER_MIGRATIONS)
        await migrate_service(dbs.invoice_dsn, INVOICE_MIGRATIONS)
    except BaseException:
        if dbs.embedded is not None:
            await asyncio.to_thread(dbs.embedded.stop)
        raise
    return dbs


async def start_temporal(data_dir: Path, *, db_file: Path | None = None, headless: bool = False, port: int = 0,
                         ui_port: int = 0, namespace: str = "default") -> TemporalDevServer:
    """`temporal server start-dev` with the coordinator's search attributes, its log in
    `data_dir/temporal.log`; in memory unless `db_file`. Returns once it serves."""
    server = TemporalDevServer(port=port, ui_port=ui_port, db_file=db_file, headless=headless,
                               search_attributes=sa.DEV_SERVER_FLAGS, log_path=data_dir / "temporal.log",
                               namespace=namespace)
    await asyncio.to_thread(server.start)
    return server


async def add_tenant_key(dsns: Sequence[str], tenant_id: str, name: str, role: str) -> str:
    """Creates the tenant (if new) with one new API key of `role` in every service database; returns the key."""
    from service_runtime.api_keys import mint_key, store_tenant_key
    from service_runtime.postgres import create_pool

    key_id, key, key_hash = mint_key()
    for dsn in dsns:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await store_tenant_key(pool, tenant_id, name, key_id, key_hash, role)
        finally:
            await pool.close()
    return key


@asynccontextmanager
async def running_stack(settings: Settings, *, usage_grace_s: int | None = None, schedules: bool = True,
                        gauges_every_s: float = 15.0, portal: bool = True) -> AsyncIterator[RunningStack]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_ports_free(settings, portal=portal)
    ensure_portal_secret(settings.data_dir)  # before the servers: they sign and check portal sessions with it
    # Observability from the environment, for the whole process: traces (CREDITS_OTLP_ENDPOINT ...),
    # Prometheus (CREDITS_METRICS_ADDR) and the Temporal SDK's metrics (CREDITS_TEMPORAL_METRICS_ADDR).
    tracing.configure("credits")
    metrics_port = metrics.start_endpoint()
    dbs = await prepare_databases(settings, migrated=False)  # each server migrates its own at start
    async with contextlib.AsyncExitStack() as running:
        if dbs.embedded is not None:  # stopped last, after everything that uses it
            running.push_async_callback(asyncio.to_thread, dbs.embedded.stop)
        temporal_addr, ui_url = await _temporal(settings, running)
        client = await connect_temporal(temporal_addr, settings=settings, runtime=temporal_runtime(),
                                        tls=None if settings.temporal_addr else False)
        await sa.register(client)
        ledger_addr, invoice_addr, billing_addr = await _servers(settings, dbs, client, ui_url, usage_grace_s,
                                                                 running)
        await _refresh_gauges(dbs, running, gauges_every_s)
        keys = MintingKeyStore([dbs.ledger_dsn, dbs.invoice_dsn], key_ttl_from_env())
        running.push_async_callback(keys.close)  # after the worker has stopped; the databases are still up
        await running.enter_async_context(
            running_worker(client, WorkerConfig(ledger_addr, invoice_addr, settings.task_queue), keys))
        if schedules:
            await ensure_schedules(client, settings.task_queue)
        stack = RunningStack(settings, client, ledger_addr, invoice_addr, billing_addr,
                             temporal_addr, ui_url, dbs.ledger_dsn, dbs.invoice_dsn)
        if portal:
            stack.portal_url = await start_portal(settings, ledger_addr, invoice_addr, running)
        stack.addresses = _addresses(stack, dbs, metrics_port)
        write_stack_file(settings.data_dir, _recorded(stack, dbs))  # what every creditctl command reads
        running.callback(remove_stack_file, settings.data_dir)
        yield stack


def _recorded(stack: RunningStack, dbs: Databases) -> dict[str, object]:
    """The addresses the stack really serves on (a port 0 resolved), for the stack file."""
    settings = stack.settings
    out: dict[str, object] = {"ledger_addr": stack.ledger_addr, "invoice_addr": stack.invoice_addr,
                              "billing_addr": stack.billing_addr, "temporal_addr": stack.temporal_addr,
                              "task_queue": settings.task_queue, "temporal_namespace": settings.temporal_namespace}
    if stack.ui_url:
        out["temporal_ui_port"] = int(stack.ui_url.rpartition(":")[2])
    if dbs.embedded is not None:
        out["embedded_pg_port"] = dbs.embedded.port
    return out


def check_ports_free(settings: Settings, *, portal: bool = True) -> None:
    """Refuses at once, naming the port and the setting, when a port this stack would bind is taken
    (rather than a Temporal log tail or a gRPC "failed to bind" from deep inside)."""
    addrs = ("ledger_addr", "invoice_addr", "billing_addr", *(("portal_addr",) if portal else ()))
    wanted = [(env_name(f), getattr(settings, f), *host_port(getattr(settings, f))) for f in addrs]
    if not settings.temporal_addr:
        wanted += [(env_name(f), str(getattr(settings, f)), "127.0.0.1", getattr(settings, f))
                   for f in ("temporal_port", "temporal_ui_port")]
    if (not settings.ledger_dsn or not settings.invoice_dsn) and not embedded_server(settings).is_running():
        wanted.append((env_name("embedded_pg_port"), str(settings.embedded_pg_port), "127.0.0.1",
                       settings.embedded_pg_port))
    for setting, value, host, port in wanted:
        check_free(host, port, setting, value)


async def _temporal(settings: Settings, running: contextlib.AsyncExitStack) -> tuple[str, str]:
    """The Temporal frontend's address and UI URL: the configured server, or a dev server of our own."""
    if settings.temporal_addr:
        return settings.temporal_addr, ""
    temporal = await start_temporal(settings.data_dir, db_file=settings.data_dir / "temporal.db",
                                    port=settings.temporal_port, ui_port=settings.temporal_ui_port,
                                    namespace=settings.temporal_namespace)
    running.push_async_callback(asyncio.to_thread, temporal.stop)
    return temporal.address, temporal.ui_url


async def _servers(settings: Settings, dbs: Any, client: Client, ui_url: str, usage_grace_s: int | None,
                   running: contextlib.AsyncExitStack) -> tuple[str, str, str]:
    """Starts the ledger, invoice and billing gRPC servers; each stops (then its pool closes) on exit."""
    from finance.storage.projector import BackgroundProjector
    from invoice_service.server import create_invoice_server
    from ledger_service.server import create_ledger_server, start_webhook_delivery

    def stopping(server: Any, pool: Any) -> None:
        running.push_async_callback(_close_quietly, pool)
        running.push_async_callback(server.stop, 2)

    ledger, ledger_port, ledger_pool = await create_ledger_server(dbs.ledger_dsn, settings.ledger_addr, settings)
    stopping(ledger, ledger_pool)
    delivery = await start_webhook_delivery(dbs.ledger_dsn, settings, client)  # alert outbox -> webhooks; top-ups
    running.push_async_callback(delivery.stop)
    books = await BackgroundProjector.start(dbs.ledger_dsn)  # the finance books follow the journal
    running.push_async_callback(books.stop)
    invoice, invoice_port, invoice_pool = await create_invoice_server(  # it asks this ledger about revoked portal links
        dbs.invoice_dsn, settings.invoice_addr, settings.model_copy(update={"ledger_addr": f"127.0.0.1:{ledger_port}"}),
        usage_grace_s=usage_grace_s)
    stopping(invoice, invoice_pool)
    ledger_addr, invoice_addr = f"127.0.0.1:{ledger_port}", f"127.0.0.1:{invoice_port}"
    front, front_port, front_pool = await create_front_door(client, dbs.ledger_dsn, settings.task_queue,
                                                            settings.billing_addr, ui_url, invoice_addr, ledger_addr)
    stopping(front, front_pool)
    return ledger_addr, invoice_addr, f"127.0.0.1:{front_port}"


async def _refresh_gauges(dbs: Any, running: contextlib.AsyncExitStack, every_s: float) -> None:
    """The database gauges the standalone servers refresh (credits_ledger_holds_pending,
    credits_ledger_lots_expiring_24h, credits_invoice_prepared), refreshed the same way here: each
    service's `refresh_gauges` every `every_s` on an owner pool of its own (they count across
    tenants), stopped before the pools close."""
    from invoice_service.server import refresh_gauges as invoice_gauges
    from ledger_service.server import refresh_gauges as ledger_gauges
    from service_runtime.postgres import create_pool

    for dsn, refresh in ((dbs.ledger_dsn, ledger_gauges), (dbs.invoice_dsn, invoice_gauges)):
        pool = await create_pool(dsn, min_size=1, max_size=1)
        running.push_async_callback(_close_quietly, pool)
        task = asyncio.create_task(metrics.refresh_forever(functools.partial(refresh, pool), every_s))
        running.push_async_callback(_cancelled, task)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ensure_portal_secret(data_dir: Path) -> None:
    """CREDITS_PORTAL_SECRET for this process (the servers and the portal it runs): the environment's,
    else the one kept in the data directory (made once, readable by its owner only)."""
    if portal_sessions.secret_from_env():
        return
    path = data_dir / "portal-secret"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(portal_sessions.new_secret())
    os.environ[portal_sessions.SECRET_ENV] = path.read_text().strip()


class _EmbeddedWebServer(uvicorn.Server):
    """uvicorn inside the stack's process: the stack owns the signals (Ctrl-C stops everything in order)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        pass


async def start_portal(settings: Settings, ledger_addr: str, invoice_addr: str,
                       running: contextlib.AsyncExitStack) -> str:
    """The customer portal (portal/) on CREDITS_PORTAL_ADDR, a client of the two gRPC servers; returns
    its URL, which the invoice server's CreatePortalLink then puts in its links."""
    from portal.app import create_app

    host, _, port = settings.portal_addr.rpartition(":")
    app = create_app(settings.model_copy(update={"ledger_addr": ledger_addr, "invoice_addr": invoice_addr}))
    server = _EmbeddedWebServer(uvicorn.Config(app, host=host or "127.0.0.1", port=int(port), log_level="warning",
                                               lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()  # it could not start (the port is taken): say why
            raise RuntimeError(f"the customer portal did not start on {settings.portal_addr}")
        await asyncio.sleep(0.05)

    async def stop() -> None:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)

    running.push_async_callback(stop)
    bound = server.servers[0].sockets[0].getsockname()
    url = settings.portal_url.rstrip("/") or f"http://{bound[0]}:{bound[1]}"
    os.environ["CREDITS_PORTAL_URL"] = url
    return url


async def _close_quietly(pool: Any) -> None:
    with contextlib.suppress(Exception):
        await pool.close()


def _addresses(stack: RunningStack, dbs: Any, metrics_port: int | None) -> dict[str, str]:
    settings = stack.settings
    out = {
        "postgres (ledger)": _redact(dbs.ledger_dsn), "postgres (invoice)": _redact(dbs.invoice_dsn),
        "temporal": stack.temporal_addr, "temporal UI": stack.ui_url or "(external server)",
        "ledger gRPC": stack.ledger_addr, "invoice gRPC": stack.invoice_addr,
        "billing front door gRPC": stack.billing_addr, "task queue": settings.task_queue,
        **({"customer portal": f"{stack.portal_url} (links: creditctl portal link CUSTOMER)"}
           if stack.portal_url else {}),
        "data directory": str(settings.data_dir),
        "addresses recorded in": f"{settings.stack_file} (every creditctl command reads them)",
    }
    if metrics_port:
        host = settings.metrics_addr.rpartition(":")[0] or "127.0.0.1"
        out["metrics"] = f"http://{host}:{metrics_port}/metrics"
    if settings.temporal_metrics_addr:
        out["temporal worker metrics"] = f"http://{settings.temporal_metrics_addr}/metrics"
    return out


def _redact(dsn: str) -> str:
    head, at, tail = dsn.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at and ":" in head.split("//")[-1] else dsn


async def serve_forever(settings: Settings, webhook_port: int | None = None) -> None:
    """`creditctl up`: runs until Ctrl-C / SIGTERM, then stops every part; with `webhook_port`, also a local
    webhook receiver that prints every verified event (`creditctl up --webhook-receiver`)."""
    import signal

    from temporalio import workflow

    # The outcome lines (a saga's, a schedule run's) name their invoice or sweep; the run's ids are in the UI.
    workflow.logger.workflow_info_on_message = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_stack(settings) as stack, contextlib.AsyncExitStack() as extras:
        if webhook_port is not None:
            stack.addresses["webhook receiver"] = await _webhook_receiver(stack.ledger_dsn, webhook_port, extras)
        print("credits stack is up:", flush=True)
        for name, value in stack.addresses.items():
            print(f"  {name:<26} {value}", flush=True)
        print(f"Ctrl-C stops everything. Logging at {settings.log_level} (CREDITS_LOG_LEVEL): a line per saga "
              "outcome and per schedule run.", flush=True)
        await stop.wait()
        print("stopping ...", flush=True)
    print("stopped.", flush=True)


RECEIVER_SECRETS = """
SELECT s.secret FROM webhook_secrets s JOIN webhook_endpoints e
  ON e.tenant_id = s.tenant_id AND e.endpoint_id = s.endpoint_id
WHERE e.url = $1 AND (s.expires_at IS NULL OR s.expires_at > now())
"""


async def _webhook_receiver(ledger_dsn: str, port: int, running: contextlib.AsyncExitStack) -> str:
    """The example receiver on `port`, verifying with the secrets of every endpoint that targets it (read from
    the ledger database on each request, so an endpoint created later works at once); prints each event."""
    import json

    import asyncpg

    from ledger_service.webhooks.example_receiver import PATH, ExampleReceiver

    url = f"http://127.0.0.1:{port}{PATH}"
    pool = await asyncpg.create_pool(ledger_dsn, min_size=1, max_size=2)
    running.push_async_callback(pool.close)

    async def secrets() -> list[str]:
        return [r["secret"] for r in await pool.fetch(RECEIVER_SECRETS, url)]

    def show(event: dict[str, Any]) -> None:
        print(f"webhook: {json.dumps(event, sort_keys=True)}", flush=True)

    receiver = ExampleReceiver([], on_event=show, secret_source=secrets)
    await receiver.start(port)
    running.push_async_callback(receiver.stop)
    return f"{url} (creditctl webhooks create local {url} --allow-private-targets)"
