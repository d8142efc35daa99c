"""Invoice test fixtures: a fresh migrated database, the real gRPC server on port 0, a real channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as pb
from credits.invoice.v1 import invoice_pb2_grpc as pb_grpc

from invoice_service.server import create_invoice_server
from invoice_service.storage import MIGRATIONS_DIR
from service_runtime.databases import TENANCY_MIGRATIONS
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key

# Tests bill fixed past periods (e.g. August 2026), so the late-event grace window is 50 years unless
# a test starts its own server with another one.
TEST_GRACE_S = 50 * 365 * 24 * 3600


@dataclass
class InvoiceEnv:
    dsn: str
    stub: pb_grpc.InvoiceServiceStub
    key: str
    pool: asyncpg.Pool
    channel: grpc.aio.Channel
    port: int
    owner: asyncpg.Pool  # the database owner: direct checks see every tenant (the service's pool is under RLS)

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-api-key", self.key)]

    async def call(self, method: str, request: Any, key: str | None = None) -> Any:
        return await getattr(self.stub, method)(request, metadata=[("x-api-key", key or self.key)])

    async def count(self, table: str) -> int:
        # table names come from the tests themselves, never from input
        return int(await self.owner.fetchval(f"SELECT count(*) FROM {table}"))

    async def close(self) -> None:
        await self.channel.close()
        await self.pool.close()
        await self.owner.close()


async def start_env(grace_s: int = TEST_GRACE_S) -> tuple[InvoiceEnv, grpc.aio.Server]:
    dsn = await fresh_database("invoice", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
    key = await add_tenant_key(dsn, "t1")
    server, port, pool = await create_invoice_server(dsn, usage_grace_s=grace_s)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    owner = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    return InvoiceEnv(dsn, pb_grpc.InvoiceServiceStub(channel), key, pool, channel, port, owner), server


@pytest.fixture
async def env() -> AsyncIterator[InvoiceEnv]:
    e, server = await start_env()
    try:
        yield e
    finally:
        await server.stop(None)
        await e.close()


def ts(value: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def when(day: int, hour: int = 0, month: int = 8, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


async def seed_catalog(env: InvoiceEnv, *, plan: pb.CreatePlanRequest | None = None,
                       customer_id: str = "john-wick", anchor: datetime | None = None,
                       add_ons: list[pb.Quantity] | None = None,
                       licenses: list[pb.Quantity] | None = None) -> None:
    """ChatPPT: two usage meters (input and output tokens, per unit), a customer and a subscription."""
    await env.call("CreateCustomer", pb.CreateCustomerRequest(
        idempotency_key=f"c-{customer_id}", customer_id=customer_id, name="John Wick",
        ledger_account_id=f"acct-{customer_id}"))
    if plan is None:
        for code in ("input_tokens", "output_tokens"):
            await env.call("CreateMeter", pb.CreateMeterRequest(
                idempotency_key=f"m-{code}", meter_code=code, aggregation=pb.SUM))
        plan = pb.CreatePlanRequest(
            idempotency_key="p-chatppt", plan_id="chatppt-pro", name="ChatPPT Pro", currency="USD",
            usage_charges=[
                pb.UsageCharge(meter_code="input_tokens", price=pb.Price(model=pb.PER_UNIT, unit_amount="0.00001")),
                pb.UsageCharge(meter_code="output_tokens", price=pb.Price(model=pb.PER_UNIT, unit_amount="0.00003")),
            ])
        await env.call("CreatePlan", plan)
    await env.call("CreateSubscription", pb.CreateSubscriptionRequest(
        idempotency_key=f"s-{customer_id}", subscription_id=f"sub-{customer_id}", customer_id=customer_id,
        plan_id=plan.plan_id, anchor=ts(anchor or when(1)), add_ons=add_ons or [], licenses=licenses or []))


def event(event_id: str, meter: str, quantity: str, at: datetime, customer_id: str = "john-wick",
          **properties: str) -> pb.UsageEvent:
    return pb.UsageEvent(event_id=event_id, customer_id=customer_id, meter_code=meter, quantity=quantity,
                         timestamp=ts(at), properties=properties)
