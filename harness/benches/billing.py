"""`creditctl bench billing`: month-end billing runs through the BillingCycle workflow, on the stack
as `creditctl up` runs it (Temporal dev server on its database file), vs a bare workflow baseline.

Postgres (fsync on), the ledger and invoice services and the worker each in their own process
(harness.processes). Two tenants are seeded, a small one (`small` customers, default a quarter) and a
large one (`customers`), each customer with $100 of August usage and a $50 credit and no draft yet:
the cycle drafts and finalizes every due period itself. The small cycle runs first, then the large
one, each timed from start to result (`ms_per_invoice_small` vs `_large`: linear when equal). Then,
on the same server, task queue and worker, as many bare workflows as the large cycle finalized, each
with SAGA_ACTIVITIES sequential no-op regular activities, `concurrency` in flight
(`bare_invoices_per_s`). Finally the reconciler checks both tenants (ledger, invoices, Temporal) and
a sample of saga histories is counted (`temporal_events_per_saga`), and the large cycle's own history
over all its runs per invoice it finalized (`cycle_events_per_invoice`: what the parent adds to each
saga). CPU time per saga of the large cycle is measured per process (`cpu_ms_per_saga`, with
`temporal_cpu_ms_per_saga` for the server).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client

from coordinator import naming
from coordinator.messages import BillingCycleInput, BillingCycleResult
from coordinator.workflows import SAGA_ACTIVITIES, BillingCycleWorkflow
from harness.bare import BareWorkflow, BenchInput
from harness.benches.saga import _timed
from harness.processes import ProcessStack
from service_runtime.temporal_client import connect_temporal
from stack.scenario import Services, seed_catalog, seed_customer

QUEUE = "credits-bench-billing"
SMALL, LARGE = "bench-small", "bench-large"
AS_OF = "2027-10-10T00:00:00+00:00"  # August 2026 periods are due (period end + the harness's 400-day grace)
JSON_KEYS = ("invoices_per_s", "ms_per_invoice_small", "ms_per_invoice_large", "failed", "reconcile_violations",
             "temporal_events_per_saga", "temporal_cpu_ms_per_saga", "bare_invoices_per_s", "ratio_vs_bare")
TARGETS: dict[str, tuple[str, float]] = {"invoices_per_s": (">=", 11.0), "failed": ("<=", 0.0),
                                         "reconcile_violations": ("<=", 0.0), "ratio_vs_bare": (">=", 1.5)}


def meets(key: str, value: float) -> bool | None:
    target = TARGETS.get(key)
    if target is None:
        return None
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


async def run_bench(customers: int, concurrency: int = 16, small: int = 0,
                    progress: Callable[[str], None] | None = None, child_sagas: bool = False) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    small = small or max(1, customers // 4)
    with tempfile.TemporaryDirectory(prefix="credits-bench-billing-") as tmp_name:
        stack = ProcessStack(Path(tmp_name), QUEUE, temporal_db_file=True)
        try:
            say("starting postgres, temporal (database file), ledger, invoice and worker processes")
            await stack.start_infrastructure([SMALL, LARGE])
            stack.add_services(uvloop_invoice=True)
            stack.add_worker()
            await stack.start_processes()
            return await _measure(stack, customers, small, concurrency, say, child_sagas)
        finally:
            await stack.stop()


async def _seed(stack: ProcessStack, tenant: str, customers: int) -> None:
    async with grpc.aio.insecure_channel(stack.ledger_addr) as lch, \
            grpc.aio.insecure_channel(stack.invoice_addr) as ich:
        s = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich),
                     stack.tenants[tenant].admin)
        await seed_catalog(s)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await seed_customer(s, f"c-{i:06d}", draft=False)

        await asyncio.gather(*(one(i) for i in range(customers)))


async def _cycle(client: Client, tenant: str, concurrency: int, child_sagas: bool,
                 ) -> tuple[BillingCycleResult, float]:
    t0 = time.perf_counter()
    result: BillingCycleResult = await client.execute_workflow(
        BillingCycleWorkflow.run, BillingCycleInput(tenant, AS_OF, concurrency, child_sagas=child_sagas),
        id=naming.cycle_workflow_id(tenant, AS_OF), task_queue=QUEUE)
    return result, time.perf_counter() - t0


async def _events_per_saga(stack: ProcessStack, client: Client, tenant: str, sample: int = 20) -> float:
    """History events of a sample of the cycle's FinalizeInvoice child workflows (`--child-sagas`)."""
    async with grpc.aio.insecure_channel(stack.invoice_addr) as ich:
        listed = await invoice_pb2_grpc.InvoiceServiceStub(ich).ListInvoices(
            ipb.ListInvoicesRequest(page_size=sample), metadata=[("x-api-key", stack.tenants[tenant].admin)])
    counts = []
    for inv in listed.invoices:
        handle = client.get_workflow_handle(naming.finalize_workflow_id(tenant, inv.invoice_id))
        counts.append(len([e async for e in handle.fetch_history_events()]))
    return sum(counts) / len(counts) if counts else 0.0


async def _cycle_events(client: Client, tenant: str) -> int:
    """Events in every run of the tenant's cycle (the continue-as-new chain, newest back to the first)."""
    total, run_id = 0, ""
    while True:
        handle = client.get_workflow_handle(naming.cycle_workflow_id(tenant, AS_OF), run_id=run_id or None)
        events = [e async for e in handle.fetch_history_events()]
        total += len(events)
        run_id = events[0].workflow_execution_started_event_attributes.continued_execution_run_id if events else ""
        if not run_id:
            return total


async def _measure(stack: ProcessStack, customers: int, small: int, concurrency: int,
                   say: Callable[[str], None], child_sagas: bool) -> dict[str, Any]:
    from reconciler.run import reconcile

    client = await connect_temporal(stack.temporal_addr, tls=False)
    say(f"seeding {small} + {customers} customers")
    await _seed(stack, SMALL, small)
    await _seed(stack, LARGE, customers)
    say(f"billing cycle of {small} customers, {concurrency} sagas in flight")
    small_result, small_s = await _cycle(client, SMALL, concurrency, child_sagas)
    say(f"billing cycle of {customers} customers, {concurrency} sagas in flight")
    cpu = _CpuMeter(stack.pids())
    large_result, large_s = await _cycle(client, LARGE, concurrency, child_sagas)
    cpu_s = cpu.seconds()
    n_bare = max(1, large_result.finalized)
    say(f"{n_bare} bare workflows ({SAGA_ACTIVITIES} regular activities each), {concurrency} in flight")

    def start_bare(i: int) -> Any:
        return client.start_workflow(BareWorkflow.run, BenchInput(SAGA_ACTIVITIES), id=f"bench-bare/{i}",
                                     task_queue=QUEUE)

    bare_s, _ = await _timed(start_bare, n_bare, concurrency)
    say("reconciling both tenants; counting saga history events")
    report = await reconcile(stack.ledger_dsn, stack.invoice_dsn, client, tenants=[SMALL, LARGE])
    events = await _events_per_saga(stack, client, LARGE) if child_sagas else 0.0  # inline: no workflow each
    cycle_events = await _cycle_events(client, LARGE)
    rate = large_result.finalized / large_s
    bare_rate = n_bare / bare_s
    return {"invoices_per_s": round(rate, 2),
            "ms_per_invoice_small": round(small_s * 1000 / max(1, small), 1),
            "ms_per_invoice_large": round(large_s * 1000 / max(1, customers), 1),
            "failed": small_result.failed + large_result.failed,
            "reconcile_violations": len(report.violations),
            # every history event per finalized invoice: its saga's own workflow (child sagas) plus
            # what the cycle's history holds per invoice (all of it when the sagas run inline)
            "temporal_events_per_saga": round(events + cycle_events / max(1, large_result.finalized), 1),
            "saga_workflow_events": round(events, 1),
            "cycle_events_per_invoice": round(cycle_events / max(1, large_result.finalized), 1),
            # CPU time per finalized invoice of the large cycle, by process (temporal, worker, ledger, ...)
            "cpu_ms_per_saga": {name: round(secs * 1000 / max(1, large_result.finalized), 1)
                                for name, secs in sorted(cpu_s.items())},
            "temporal_cpu_ms_per_saga": round(cpu_s.get("temporal", 0.0) * 1000 / max(1, large_result.finalized), 1),
            "bare_invoices_per_s": round(bare_rate, 2),
            "ratio_vs_bare": round(rate / bare_rate, 3) if bare_rate else 0.0,
            "customers": customers, "customers_small": small, "concurrency": concurrency,
            "sagas": "child workflows" if child_sagas else "inline",
            "finalized": small_result.finalized + large_result.finalized,
            # (getattr: the bench also runs against code before BillingCycle reported them, for a baseline)
            "pages": getattr(large_result, "pages", 0), "runs": getattr(large_result, "runs", 0),
            "temporal_store": "file"}


class _CpuMeter:
    """User + system CPU seconds each part of the stack spent since the meter was made: the process
    and its live descendants (Postgres' backends)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self._start = {name: self._cpu(proc) for name, proc in self._procs.items()}

    @staticmethod
    def _cpu(proc: psutil.Process) -> dict[int, float]:
        out: dict[int, float] = {}
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return out
        for p in family:
            try:
                times = p.cpu_times()
                out[p.pid] = float(times.user + times.system)
            except psutil.Error:
                continue
        return out

    def seconds(self) -> dict[str, float]:
        """Per part, the CPU its processes spent since the start (a process born since counts whole)."""
        spent: dict[str, float] = {}
        for name, proc in self._procs.items():
            before = self._start[name]
            spent[name] = sum(max(0.0, now - before.get(pid, 0.0)) for pid, now in self._cpu(proc).items())
        return spent
