"""BillingRun: every tenant's billing cycle as of one instant, in parallel under one global limit of
finalization sagas in flight (per-tenant shares), each invoice finalized once."""

from __future__ import annotations

from datetime import datetime

import grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import WorkflowExecutionStatus

from coordinator import naming
from coordinator.keys import StaticKeyStore
from coordinator.messages import BillingRunInput, BillingRunResult
from coordinator.worker import WorkerConfig, running_worker
from coordinator.workflows import BillingRunWorkflow
from stack.scenario import Services, seed_catalog, seed_customer
from tests.coordinator.conftest import TENANT, Stack
from tests.tenancy import add_tenant_key

AS_OF = "2027-10-14T00:00:00+00:00"
CUSTOMERS = {TENANT: 4, "beta": 3, "gamma": 2}
LIMIT, PER_TENANT = 3, 2


def _max_overlap(spans: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (a close at t comes before an open at t)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def test_every_tenants_cycle_runs_in_parallel_under_one_global_limit(stack: Stack) -> None:
    keys = {TENANT: stack.coordinator_key}
    channels = [grpc.aio.insecure_channel(stack.ledger_addr), grpc.aio.insecure_channel(stack.invoice_addr)]
    services = {TENANT: stack.services}
    for tenant in ("beta", "gamma"):
        admin = await add_tenant_key([stack.ledger_dsn, stack.invoice_dsn], tenant, "admin")
        keys[tenant] = await add_tenant_key([stack.ledger_dsn, stack.invoice_dsn], tenant, "operator")
        services[tenant] = Services(ledger_pb2_grpc.LedgerServiceStub(channels[0]),
                                    invoice_pb2_grpc.InvoiceServiceStub(channels[1]), admin)
        await seed_catalog(services[tenant])
    try:
        for tenant, count in CUSTOMERS.items():
            for n in range(count):
                await seed_customer(services[tenant], f"{tenant}-c{n}", draft=n % 2 == 0)
        config = WorkerConfig(stack.ledger_addr, stack.invoice_addr, stack.task_queue)
        async with running_worker(stack.client, config, StaticKeyStore(keys)):
            handle = await stack.client.start_workflow(
                BillingRunWorkflow.run, BillingRunInput(AS_OF, limit=LIMIT, per_tenant=PER_TENANT, max_per_run=2),
                id=naming.billing_run_workflow_id(AS_OF), task_queue=stack.task_queue)
            result: BillingRunResult = await handle.result()
        total = sum(CUSTOMERS.values())
        assert (result.cycles, result.finalized, result.failed, result.failures, result.running_elsewhere) == (
            3, total, 0, [], [])
        assert result.runs == 2  # two tenant cycles per run: the third after continue-as-new

        spans: list[tuple[datetime, datetime]] = []
        tenants_of_span: list[str] = []
        for tenant, count in CUSTOMERS.items():
            for n in range(count):
                listed = await services[tenant].invoice.ListInvoices(
                    ipb.ListInvoicesRequest(customer_id=f"{tenant}-c{n}"), metadata=services[tenant].md)
                [inv] = listed.invoices
                assert inv.status == ipb.FINALIZED and inv.credits_applied == "50.00", inv
                # The saga ran inline in its tenant's cycle: from its reserve to its commit (the hold's
                # created and resolved times) it was open.
                [hold] = (await services[tenant].ledger.ListHolds(lpb.ListHoldsRequest(
                    hold_key_prefix=naming.invoice_holds_prefix(inv.invoice_id)), metadata=services[tenant].md)).holds
                spans.append((hold.created_at.ToDatetime(), hold.resolved_at.ToDatetime()))
                tenants_of_span.append(tenant)
            cycle = await stack.client.get_workflow_handle(naming.cycle_workflow_id(tenant, AS_OF)).describe()
            assert cycle.status == WorkflowExecutionStatus.COMPLETED
        # The global limit held: never more than LIMIT finalization sagas open at once, across tenants.
        assert _max_overlap(spans) <= LIMIT, spans
        # And the tenants' cycles ran in parallel: sagas of two tenants were open at the same time.
        assert any(a_start < b_end and b_start < a_end
                   for i, (a_start, a_end) in enumerate(spans) for j, (b_start, b_end) in enumerate(spans)
                   if tenants_of_span[i] != tenants_of_span[j])
        await stack.verify_journal()
    finally:
        for channel in channels:
            await channel.close()
