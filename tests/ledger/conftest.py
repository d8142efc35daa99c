"""Ledger fixtures: a fresh migrated database and a real gRPC server on port 0 per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.server import create_ledger_server
from ledger_service.storage import MIGRATIONS_DIR
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.settings import Settings
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key


@dataclass
class Ledger:
    """A running ledger: its stub, the DSN behind it, and an authenticated call helper."""

    stub: ledger_pb2_grpc.LedgerServiceStub
    dsn: str
    key: str
    port: int
    channel: grpc.aio.Channel

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-api-key", self.key)]

    async def call(self, method: str, request: object, key: str | None = None) -> object:
        return await getattr(self.stub, method)(request, metadata=[("x-api-key", key or self.key)])

    async def account(self, account_id: str, parent: str = "") -> None:
        await self.stub.CreateAccount(
            pb.CreateAccountRequest(idempotency_key=f"acct-{account_id}", account_id=account_id,
                                    parent_account_id=parent), metadata=self.md)

    async def grant(self, account_id: str, amount: str, unit: str = "USD", **kw: object) -> pb.Lot:
        key = kw.pop("key", None) or f"grant-{account_id}-{amount}-{len(kw)}-{id(kw)}"
        req = pb.GrantCreditsRequest(idempotency_key=str(key), account_id=account_id, unit=unit, amount=amount,
                                     type=kw.pop("type", pb.PURCHASED), **kw)  # type: ignore[arg-type]
        return await self.stub.GrantCredits(req, metadata=self.md)


@pytest.fixture
async def ledger() -> AsyncIterator[Ledger]:
    dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
    server, port, pool = await create_ledger_server(dsn, "127.0.0.1:0", Settings())
    key = await add_tenant_key(dsn, "tenant-a")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Ledger(ledger_pb2_grpc.LedgerServiceStub(channel), dsn, key, port, channel)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()
