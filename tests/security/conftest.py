"""Security fixtures: a real ledger and invoice server, and one key per role for two tenants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc

from invoice_service.server import create_invoice_server
from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
from ledger_service.server import create_ledger_server
from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from service_runtime.api_keys import ROLES
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.settings import Settings
from tests.ledger.conftest import ledger  # noqa: F401 - re-exported fixture (test_row_security)
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key

TENANT_A, TENANT_B = "tenant-a", "tenant-b"


@dataclass
class Stack:
    """Ledger and invoice servers sharing tenants: keys[tenant][role] is valid in both databases."""

    ledger_dsn: str
    invoice_dsn: str
    ledger: ledger_pb2_grpc.LedgerServiceStub
    invoice: invoice_pb2_grpc.InvoiceServiceStub
    channels: dict[str, grpc.aio.Channel]
    keys: dict[str, dict[str, str]] = field(default_factory=dict)

    def stub(self, service: str) -> Any:
        return self.ledger if service.endswith("LedgerService") else self.invoice

    async def key(self, tenant: str, role: str, owner: str = "") -> str:
        """A fresh key of `role` (belonging to `owner`) for `tenant`, in both databases."""
        return await add_tenant_key([self.ledger_dsn, self.invoice_dsn], tenant, role, owner)


async def start_stack() -> tuple[Stack, list[tuple[grpc.aio.Server, asyncpg.Pool]]]:
    ledger_dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, LEDGER_MIGRATIONS])
    invoice_dsn = await fresh_database("invoice", [TENANCY_MIGRATIONS, INVOICE_MIGRATIONS])
    lserver, lport, lpool = await create_ledger_server(ledger_dsn, "127.0.0.1:0", Settings())
    iserver, iport, ipool = await create_invoice_server(invoice_dsn, usage_grace_s=50 * 365 * 86400)
    lchan = grpc.aio.insecure_channel(f"127.0.0.1:{lport}")
    ichan = grpc.aio.insecure_channel(f"127.0.0.1:{iport}")
    stack = Stack(ledger_dsn, invoice_dsn, ledger_pb2_grpc.LedgerServiceStub(lchan),
                  invoice_pb2_grpc.InvoiceServiceStub(ichan), {"ledger": lchan, "invoice": ichan})
    for tenant in (TENANT_A, TENANT_B):
        stack.keys[tenant] = {role: await stack.key(tenant, role) for role in ROLES}
    return stack, [(lserver, lpool), (iserver, ipool)]


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    s, servers = await start_stack()
    try:
        yield s
    finally:
        for chan in s.channels.values():
            await chan.close()
        for server, pool in servers:
            await server.stop(0)
            await pool.close()


async def code_of(call: Any) -> tuple[grpc.StatusCode, str, Any]:
    """(status, details, response or None) of an awaited call; of a server stream, its first message."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        try:
            first = await asyncio.wait_for(call.read(), 20)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or "", None
        call.cancel()
        return grpc.StatusCode.OK, "", None if first is grpc.aio.EOF else first
    try:
        response = await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or "", None
    return grpc.StatusCode.OK, "", response
