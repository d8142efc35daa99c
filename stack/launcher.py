"""`creditctl up` / `creditctl demo`: the whole stack in one foreground process.

Embedded Postgres (two databases), `temporal server start-dev` with the UI and the search
attributes, the ledger, invoice and billing front-door gRPC servers, the coordinator worker and
the schedules. Any part pointed elsewhere by settings (CREDITS_LEDGER_DSN, CREDITS_INVOICE_DSN,
CREDITS_TEMPORAL_ADDR) is used instead of started. Data stays in `settings.data_dir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client

from coordinator import search_attributes as sa
from coordinator.front_door import create_front_door, ui_link
from coordinator.keys import KeyStore, MintingKeyStore, key_ttl_from_env
from coordinator.schedules import ensure_schedules
from coordinator.worker import WorkerConfig, running_worker, temporal_runtime
from service_runtime import metrics, tracing
from service_runtime.databases import resolve_databases
from service_runtime.settings import Settings
from service_runtime.temporal_server import TemporalDevServer
from service_runtime.tls import temporal_tls

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

    def workflow_url(self, workflow_id: str, run_id: str = "") -> str:
        return ui_link(self.ui_url, self.client.namespace, workflow_id, run_id)


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


@asynccontextmanager
async def running_stack(settings: Settings, *, usage_grace_s: int | None = None,
                        schedules: bool = True) -> AsyncIterator[RunningStack]:
    from invoice_service.server import create_invoice_server
    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from ledger_service.server import create_ledger_server
    from service_runtime.databases import TENANCY_MIGRATIONS
    from service_runtime.postgres import migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Observability from the environment, for the whole process: traces (CREDITS_OTLP_ENDPOINT ...),
    # Prometheus (CREDITS_METRICS_ADDR) and the Temporal SDK's metrics (CREDITS_TEMPORAL_METRICS_ADDR).
    tracing.configure("credits")
    metrics_port = metrics.start_endpoint()
    dbs = await asyncio.to_thread(resolve_databases, settings)
    temporal: TemporalDevServer | None = None
    servers: list[Any] = []
    pools: list[Any] = []
    keys: KeyStore | None = None
    try:
        temporal_addr, ui_url = settings.temporal_addr, ""
        if not temporal_addr:
            temporal = TemporalDevServer(port=7233 if settings.temporal_ui_port == 8233 else 0,
                                         ui_port=settings.temporal_ui_port, db_file=settings.data_dir / "temporal.db",
                                         search_attributes=sa.DEV_SERVER_FLAGS,
                                         log_path=settings.data_dir / "temporal.log",
                                         namespace=settings.temporal_namespace)
            await asyncio.to_thread(temporal.start)
            temporal_addr, ui_url = temporal.address, temporal.ui_url
        client = await Client.connect(temporal_addr, namespace=settings.temporal_namespace,
                                      runtime=temporal_runtime(),
                                      tls=temporal_tls() if settings.temporal_addr else False)
        await sa.register(client)
        ledger, ledger_port, ledger_pool = await create_ledger_server(dbs.ledger_dsn, settings.ledger_addr, settings)
        servers.append(ledger)
        pools.append(ledger_pool)
        await migrate(dbs.invoice_dsn, TENANCY_MIGRATIONS, INVOICE_MIGRATIONS)
        invoice, invoice_port, invoice_pool = await create_invoice_server(
            dbs.invoice_dsn, settings.invoice_addr, settings, usage_grace_s=usage_grace_s)
        servers.append(invoice)
        pools.append(invoice_pool)
        ledger_addr, invoice_addr = f"127.0.0.1:{ledger_port}", f"127.0.0.1:{invoice_port}"
        front, front_port, front_pool = await create_front_door(client, dbs.ledger_dsn, settings.task_queue,
                                                                settings.billing_addr, ui_url, invoice_addr,
                                                                ledger_addr)
        servers.append(front)
        pools.append(front_pool)
        keys = MintingKeyStore([dbs.ledger_dsn, dbs.invoice_dsn], key_ttl_from_env())
        config = WorkerConfig(ledger_addr, invoice_addr, settings.task_queue)
        async with running_worker(client, config, keys):
            if schedules:
                await ensure_schedules(client, settings.task_queue)
            stack = RunningStack(settings, client, ledger_addr, invoice_addr, f"127.0.0.1:{front_port}",
                                 temporal_addr, ui_url, dbs.ledger_dsn, dbs.invoice_dsn)
            stack.addresses = {
                "postgres (ledger)": _redact(dbs.ledger_dsn), "postgres (invoice)": _redact(dbs.invoice_dsn),
                "temporal": temporal_addr, "temporal UI": ui_url or "(external server)",
                "ledger gRPC": ledger_addr, "invoice gRPC": invoice_addr, "billing front door gRPC":
                stack.billing_addr, "task queue": settings.task_queue, "data directory": str(settings.data_dir),
            }
            if metrics_port:
                host = os.environ.get("CREDITS_METRICS_ADDR", "").rpartition(":")[0] or "127.0.0.1"
                stack.addresses["metrics"] = f"http://{host}:{metrics_port}/metrics"
            if os.environ.get("CREDITS_TEMPORAL_METRICS_ADDR"):
                stack.addresses["temporal worker metrics"] = f"http://{os.environ['CREDITS_TEMPORAL_METRICS_ADDR']}/metrics"
            yield stack
    finally:
        if keys is not None:  # the worker has stopped; the databases are still up
            await keys.close()
        for server in reversed(servers):
            await server.stop(2)
        for pool in pools:
            with contextlib.suppress(Exception):
                await pool.close()
        if temporal is not None:
            await asyncio.to_thread(temporal.stop)
        if dbs.embedded is not None:
            await asyncio.to_thread(dbs.embedded.stop)


def _redact(dsn: str) -> str:
    head, at, tail = dsn.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at and ":" in head.split("//")[-1] else dsn


async def serve_forever(settings: Settings) -> None:
    """`creditctl up`: runs until Ctrl-C / SIGTERM, then stops every part."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_stack(settings) as stack:
        print("credits stack is up:", flush=True)
        for name, value in stack.addresses.items():
            print(f"  {name:<26} {value}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        await stop.wait()
        print("stopping ...", flush=True)
    print("stopped.", flush=True)
