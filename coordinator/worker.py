"""The coordinator worker: workflows plus activity classes holding channels to the two services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import grpc
from temporalio.client import Client
from temporalio.worker import Worker

from coordinator.activities import BenchActivities, CoordinatorActivities, InvoiceActivities, LedgerActivities
from coordinator.faults import FaultPlan
from coordinator.keys import KeyStore
from coordinator.workflows import WORKFLOWS

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    ledger_addr: str
    invoice_addr: str
    task_queue: str
    max_concurrent_activities: int = 200
    max_concurrent_workflow_tasks: int = 200


def activity_functions(ledger: LedgerActivities, invoice: InvoiceActivities,
                       coordinator: CoordinatorActivities) -> list[object]:
    bench = BenchActivities()
    return [
        ledger.get_lot_boundaries, ledger.reserve_credits, ledger.commit_hold, ledger.release_hold,
        ledger.reverse_reference, ledger.list_holds, ledger.expire_lots, ledger.grant_credits,
        invoice.get_invoice, invoice.split_draft, invoice.prepare_finalize, invoice.commit_finalize,
        invoice.abort_finalize, invoice.prepare_void, invoice.commit_void, invoice.abort_void,
        invoice.create_draft, invoice.list_due, invoice.list_in_doubt,
        coordinator.list_tenants, coordinator.owner_decision, bench.noop,
    ]


@asynccontextmanager
async def running_worker(client: Client, config: WorkerConfig, keys: KeyStore,
                         faults: FaultPlan | None = None) -> AsyncIterator[Worker]:
    """Runs a worker until the block exits; channels are opened once and closed after shutdown."""
    ledger_channel = grpc.aio.insecure_channel(config.ledger_addr)
    invoice_channel = grpc.aio.insecure_channel(config.invoice_addr)
    worker = Worker(
        client, task_queue=config.task_queue, workflows=WORKFLOWS,
        activities=activity_functions(LedgerActivities(ledger_channel, keys, faults),
                                      InvoiceActivities(invoice_channel, keys, faults),
                                      CoordinatorActivities(client, keys)),  # type: ignore[arg-type]
        max_concurrent_activities=config.max_concurrent_activities,
        max_concurrent_workflow_tasks=config.max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=1),
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        if not task.done():
            await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        await ledger_channel.close()
        await invoice_channel.close()
