"""`creditctl bench saga`: finalized invoices/s through the real saga vs a bare workflow baseline.

Starts a throw-away stack (embedded Postgres, Temporal dev server in memory, the services, one
worker), seeds N customers each with $100 of usage and a $50 credit, starts N finalization sagas
at once and measures each one's start-to-result latency; then runs N bare workflows with the same
number of sequential no-op activities on the same server and worker.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from coordinator import naming
from coordinator.messages import BenchInput, FinalizeInvoiceInput
from coordinator.workflows import BareWorkflow, FinalizeInvoiceWorkflow

SAGA_ACTIVITIES = 7  # get_invoice, boundaries, split, reserve, prepare, commit hold, commit invoice


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(start: Any, n: int, concurrency: int) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            handle = await start(i)
            await handle.result()
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, latencies


async def run_bench(invoices: int, concurrency: int) -> dict[str, Any]:
    from credits.invoice.v1 import invoice_pb2_grpc
    from credits.ledger.v1 import ledger_pb2_grpc

    from coordinator.scenario import Services, seed_catalog, seed_customer
    from coordinator.stack import running_stack
    from service_runtime.api_keys import mint_key, store_tenant_key
    from service_runtime.embedded_postgres import free_port
    from service_runtime.postgres import create_pool
    from service_runtime.settings import Settings

    with tempfile.TemporaryDirectory(prefix="credits-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), ledger_dsn="", invoice_dsn="", embedded_pg_port=free_port(),
                            ledger_addr="127.0.0.1:0", invoice_addr="127.0.0.1:0", billing_addr="127.0.0.1:0",
                            temporal_addr="", temporal_ui_port=free_port(), task_queue="credits-bench")
        async with running_stack(settings, usage_grace_s=400 * 86400, schedules=False) as stack:
            key_id, key, key_hash = mint_key()
            for dsn in (stack.ledger_dsn, stack.invoice_dsn):
                pool = await create_pool(dsn, min_size=1, max_size=1)
                try:
                    await store_tenant_key(pool, "bench", "Bench", key_id, key_hash, "admin")
                finally:
                    await pool.close()
            lch, ich = grpc.aio.insecure_channel(stack.ledger_addr), grpc.aio.insecure_channel(stack.invoice_addr)
            s = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), key)
            await seed_catalog(s)
            sem = asyncio.Semaphore(16)

            async def seed(i: int) -> str:
                async with sem:
                    return await seed_customer(s, f"bench-{i}")

            invoice_ids = await asyncio.gather(*(seed(i) for i in range(invoices)))
            client, queue = stack.client, settings.task_queue

            def start_saga(i: int) -> Any:
                return client.start_workflow(
                    FinalizeInvoiceWorkflow.run, FinalizeInvoiceInput("bench", invoice_ids[i]),
                    id=naming.finalize_workflow_id("bench", invoice_ids[i]), task_queue=queue)

            def start_bare(i: int) -> Any:
                return client.start_workflow(BareWorkflow.run, BenchInput(SAGA_ACTIVITIES), id=f"bench-bare/{i}",
                                             task_queue=queue)

            saga_s, saga_ms = await _timed(start_saga, invoices, concurrency)
            bare_s, _ = await _timed(start_bare, invoices, concurrency)
            await lch.close()
            await ich.close()
    saga_rate, bare_rate = invoices / saga_s, invoices / bare_s
    return {"invoices": invoices, "invoices_per_s": round(saga_rate, 1), "p50_ms": round(_pct(saga_ms, 0.5), 1),
            "p99_ms": round(_pct(saga_ms, 0.99), 1), "bare_workflows_per_s": round(bare_rate, 1),
            "ratio_vs_bare": round(saga_rate / bare_rate, 3)}
