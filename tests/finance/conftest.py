"""Finance fixtures: the ledger's (a fresh database and a real ledger server on port 0 per test), and a
ledger server on a clock the test moves (`books`), with an admin key per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from credits.finance.v1 import finance_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.server import create_ledger_server
from ledger_service.storage import MIGRATIONS_DIR
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.settings import Settings
from tests.ledger.conftest import ledger
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key

__all__ = ["Books", "Clock", "books", "ledger"]
TENANTS = ("at-expiry", "proportional")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Books:
    ledger: ledger_pb2_grpc.LedgerServiceStub
    finance: finance_pb2_grpc.FinanceServiceStub
    keys: dict[str, str]
    clock: Clock
    dsn: str

    def md(self, tenant: str) -> list[tuple[str, str]]:
        return [("x-api-key", self.keys[tenant])]


@pytest.fixture
async def books() -> AsyncIterator[Books]:
    dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
    clock = Clock()
    server, port, pool = await create_ledger_server(dsn, "127.0.0.1:0", Settings(), clock=clock)
    keys = {t: await add_tenant_key(dsn, t) for t in TENANTS}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Books(ledger_pb2_grpc.LedgerServiceStub(channel), finance_pb2_grpc.FinanceServiceStub(channel),
                    keys, clock, dsn)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()
