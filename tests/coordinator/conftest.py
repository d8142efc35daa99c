"""Coordinator fixtures: one real Temporal dev server per test process, and per test the real
ledger and invoice servers on fresh databases, a tenant, and a worker on a fresh task queue."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.front_door import create_front_door
from coordinator.keys import StaticKeyStore
from coordinator.messages import FinalizeInvoiceInput, FinalizeInvoiceResult, SagaTimeouts
from coordinator.starter import start_or_attach
from coordinator.worker import WorkerConfig, running_worker
from coordinator.workflows import FinalizeInvoiceWorkflow
from harness.faults import FaultPlan
from harness.worker import running_harness_worker
from invoice_service.server import create_invoice_server
from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
from ledger_service.server import create_ledger_server
from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.settings import Settings
from service_runtime.temporal_server import TemporalDevServer
from stack.scenario import Services, seed_catalog
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key

T = TypeVar("T")
TENANT = "acme"
GRACE_S = 400 * 24 * 3600  # the seed scenario bills August 2026 usage
FAST = SagaTimeouts(step_start_to_close_s=10, prepare_phase_step_limit_s=30, retry_initial_s=0.05, retry_max_s=0.5)
_queues = itertools.count()


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(headless=True, search_attributes=sa.DEV_SERVER_FLAGS).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def temporal_client(temporal_server: TemporalDevServer) -> Client:
    client = await Client.connect(temporal_server.address)
    await sa.register(client)  # idempotent: the flags already declared them
    return client


async def eventually(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout_s: float = 30) -> T:
    """Polls `probe` until `ok` (no sleeps for synchronisation: a deadline and short polls)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if ok(value) or time.monotonic() > deadline:
            assert ok(value), f"condition not met within {timeout_s}s: {value}"
            return value
        await asyncio.sleep(0.05)


@dataclass
class Stack:
    client: Client
    services: Services
    ledger_addr: str
    invoice_addr: str
    coordinator_key: str
    task_queue: str
    ledger_dsn: str
    invoice_dsn: str

    @property
    def md(self) -> list[tuple[str, str]]:
        return self.services.md

    def worker(self, faults: FaultPlan | None = None) -> AbstractAsyncContextManager[Worker]:
        """The production worker; with a fault plan, the harness worker (faults through its channels)."""
        config = WorkerConfig(self.ledger_addr, self.invoice_addr, self.task_queue)
        keys = StaticKeyStore({TENANT: self.coordinator_key})
        if faults is None:
            return running_worker(self.client, config, keys)
        return running_harness_worker(self.client, config, keys, faults)

    @asynccontextmanager
    async def front_door(self, client: Client | None = None) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
        """The billing front door on this stack (it knows both participants), as a client stub."""
        server, port, pool = await create_front_door(client or self.client, self.ledger_dsn, self.task_queue,
                                                     invoice_addr=self.invoice_addr, ledger_addr=self.ledger_addr)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield billing_pb2_grpc.BillingServiceStub(channel)
        finally:
            await channel.close()
            await server.stop(0)
            await pool.close()

    async def start_finalize(self, invoice_id: str, timeouts: SagaTimeouts = FAST) -> WorkflowHandle[Any, Any]:
        return await start_or_attach(self.client, FinalizeInvoiceWorkflow.run,
                                     FinalizeInvoiceInput(TENANT, invoice_id, timeouts, local_reads=True),
                                     id=naming.finalize_workflow_id(TENANT, invoice_id), task_queue=self.task_queue,
                                     result_type=FinalizeInvoiceResult)

    async def invoice(self, invoice_id: str) -> ipb.Invoice:
        return await self.services.invoice.GetInvoice(ipb.GetInvoiceRequest(invoice_id=invoice_id), metadata=self.md)

    async def holds(self, invoice_id: str) -> list[lpb.Hold]:
        resp = await self.services.ledger.ListHolds(lpb.ListHoldsRequest(
            hold_key_prefix=f"{naming.HOLD_PREFIX}{invoice_id}/"), metadata=self.md)
        return list(resp.holds)

    async def balance(self, account_id: str) -> lpb.BalanceBucket:
        bal = await self.services.ledger.GetBalance(lpb.GetBalanceRequest(account_id=account_id), metadata=self.md)
        return bal.totals[0]

    async def verify_journal(self) -> None:
        v = await self.services.ledger.VerifyJournal(lpb.VerifyJournalRequest(), metadata=self.md)
        assert v.ok, v.violations

    async def assert_both_or_neither(self, invoice_id: str, account_id: str) -> str:
        """FINALIZED <=> its credits POSTED; otherwise DRAFT with nothing held or consumed."""
        inv = await self.invoice(invoice_id)
        holds = await self.holds(invoice_id)
        bal = await self.balance(account_id)
        await self.verify_journal()
        assert not [h for h in holds if h.status == lpb.PENDING], holds
        committed = [h for h in holds if h.status == lpb.COMMITTED]
        if inv.status == ipb.FINALIZED:
            assert len(committed) == 1
            assert committed[0].posted == inv.credits_applied == bal.consumed
            assert bal.held == "0.00"
            return "finalized"
        assert inv.status == ipb.DRAFT, ipb.InvoiceStatus.Name(inv.status)
        assert not committed and not inv.applications
        assert (bal.held, bal.consumed) == ("0.00", "0.00")
        return "neither"


@pytest.fixture
async def stack(temporal_client: Client) -> AsyncIterator[Stack]:
    ledger_dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, LEDGER_MIGRATIONS])
    invoice_dsn = await fresh_database("invoice", [TENANCY_MIGRATIONS, INVOICE_MIGRATIONS])
    admin_key = await add_tenant_key([ledger_dsn, invoice_dsn], TENANT, "admin")
    coordinator_key = await add_tenant_key([ledger_dsn, invoice_dsn], TENANT, "operator")
    ledger_server, ledger_port, ledger_pool = await create_ledger_server(ledger_dsn, "127.0.0.1:0", Settings())
    invoice_server, invoice_port, invoice_pool = await create_invoice_server(invoice_dsn, "127.0.0.1:0",
                                                                             Settings(ledger_addr=f"127.0.0.1:{ledger_port}"),
                                                                             usage_grace_s=GRACE_S)
    ledger_addr, invoice_addr = f"127.0.0.1:{ledger_port}", f"127.0.0.1:{invoice_port}"
    lch, ich = grpc.aio.insecure_channel(ledger_addr), grpc.aio.insecure_channel(invoice_addr)
    services = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), admin_key)
    await seed_catalog(services)
    try:
        yield Stack(temporal_client, services, ledger_addr, invoice_addr, coordinator_key,
                    f"coordinator-test-{next(_queues)}-{time.monotonic_ns()}", ledger_dsn, invoice_dsn)
    finally:
        await lch.close()
        await ich.close()
        await ledger_server.stop(0)
        await invoice_server.stop(0)
        await ledger_pool.close()
        await invoice_pool.close()
