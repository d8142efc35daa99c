"""Draft time by price kind: `creditctl bench pricing [--json]`.

Starts its own embedded Postgres in a temporary directory and the real invoice server in-process,
then loads the same `events` usage events (INSERT ... SELECT generate_series, each with a `model`
and a `region` property) for three customers on three plans over one meter, VACUUM ANALYZE, and
times CreateDraft for each, best of `rounds`:
  * plain: one PER_UNIT price (the baseline: the covering-index aggregation);
  * group_by: a price per `model` (3 priced values) with a `region` filter;
  * time_of_use: peak / off-peak in Europe/Berlin.
Each draft's usage lines must add up to the events loaded (the filter: to the matching ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import grpc
from credits.invoice.v1 import invoice_pb2 as pb
from credits.invoice.v1 import invoice_pb2_grpc as pb_grpc

from invoice_service.server import create_invoice_server
from invoice_service.storage import MIGRATIONS_DIR
from service_runtime.api_keys import mint_key, store_tenant_key
from service_runtime.databases import migrate_service
from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.proto_time import to_timestamp
from service_runtime.settings import Settings

TENANT = "bench"
KINDS = ("plain", "group_by", "time_of_use")
JSON_KEYS = ("events", "draft_plain_s", "draft_group_by_s", "draft_time_of_use_s", "group_by_vs_plain",
             "time_of_use_vs_plain")
# Every 4th event is region=us (filtered out by the group_by plan); models cycle large, small, medium.
LOAD_EVENTS = """
INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_code, ts, quantity, properties)
SELECT $1, $2 || '-' || n, $2, 'tokens', $3::timestamptz + (n % $4) * interval '1 second', (n % 997) + 1,
       jsonb_build_object('model', (ARRAY['large', 'small', 'medium'])[n % 3 + 1],
                          'region', CASE WHEN n % 4 = 0 THEN 'us' ELSE 'eu' END)
FROM generate_series(1, $5) AS n
"""
EXPECTED = """
SELECT coalesce(sum(quantity) FILTER (WHERE $3 OR properties ->> 'region' = 'eu'), 0) FROM usage_events
WHERE tenant_id = $1 AND customer_id = $2
"""


class BenchError(RuntimeError):
    """The bench did not do what it measures (a draft that does not add up to the events loaded)."""


def _per_unit(amount: str) -> pb.Price:
    return pb.Price(model=pb.PER_UNIT, unit_amount=amount)


def _plans() -> dict[str, pb.CreatePlanRequest]:
    charges = {
        "plain": pb.UsageCharge(meter_code="tokens", price=_per_unit("0.00001")),
        "group_by": pb.UsageCharge(
            meter_code="tokens", price=_per_unit("0.00001"), group_by="model",
            filters=[pb.PropertyFilter(property="region", values=["eu"])],
            dimension_prices=[pb.DimensionPrice(value=v, price=_per_unit(p))
                              for v, p in (("large", "0.00003"), ("small", "0.000002"), ("medium", "0.00001"))]),
        "time_of_use": pb.UsageCharge(meter_code="tokens", price=_per_unit("0.00001"), time_of_use=pb.TimeOfUse(
            time_zone="Europe/Berlin", peak_hours=list(range(8, 20)), peak_days=[1, 2, 3, 4, 5],
            peak_price=_per_unit("0.00003"))),
    }
    return {k: pb.CreatePlanRequest(idempotency_key=f"p-{k}", plan_id=k, currency="USD", usage_charges=[c])
            for k, c in charges.items()}


async def run(events: int = 200_000, rounds: int = 3, work_dir: Path | None = None) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        root = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pricing-bench-")))
        pg = EmbeddedPostgres(root / "pg").start()
        stack.callback(pg.stop, "immediate")
        dsn = await asyncio.to_thread(pg.create_database, "bench_pricing")
        await migrate_service(dsn, MIGRATIONS_DIR)
        key_id, key, key_hash = mint_key()
        conn = await asyncpg.connect(dsn)
        await store_tenant_key(conn, TENANT, TENANT, key_id, key_hash, "admin")
        await conn.close()
        server, port, pool = await create_invoice_server(dsn, settings=Settings(), usage_grace_s=400 * 86400)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            return await _measure(dsn, pb_grpc.InvoiceServiceStub(channel), [("x-api-key", key)], events, rounds)
        finally:
            await channel.close()
            await server.stop(None)
            await pool.close()


async def _measure(dsn: str, stub: pb_grpc.InvoiceServiceStub, md: list[tuple[str, str]], events: int,
                   rounds: int) -> dict[str, float]:
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = (now - timedelta(days=40)).replace(day=1, hour=0, minute=0, second=0)
    span_s = int((now - anchor).total_seconds()) - 60
    await stub.CreateMeter(pb.CreateMeterRequest(idempotency_key="m", meter_code="tokens", aggregation=pb.SUM),
                           metadata=md)
    conn = await asyncpg.connect(dsn)
    try:
        for kind, plan in _plans().items():
            await stub.CreatePlan(plan, metadata=md)
            await stub.CreateCustomer(pb.CreateCustomerRequest(idempotency_key=f"c-{kind}", customer_id=kind,
                                                               ledger_account_id=f"acct-{kind}"), metadata=md)
            await stub.CreateSubscription(pb.CreateSubscriptionRequest(
                idempotency_key=f"s-{kind}", subscription_id=f"s-{kind}", customer_id=kind, plan_id=kind,
                anchor=to_timestamp(anchor)), metadata=md)
            await conn.execute(LOAD_EVENTS, TENANT, kind, anchor, span_s, events)
        await conn.execute("VACUUM ANALYZE usage_events")
        figures: dict[str, float] = {"events": events}
        for kind in KINDS:
            best = float("inf")
            for n in range(rounds):
                started = time.perf_counter()
                draft = await stub.CreateDraft(pb.CreateDraftRequest(
                    idempotency_key=f"d-{kind}-{n}", customer_id=kind, period_start=to_timestamp(anchor)), metadata=md)
                best = min(best, time.perf_counter() - started)
            counted = sum((Decimal(i.quantity) for i in draft.line_items), Decimal(0))
            expected = await conn.fetchval(EXPECTED, TENANT, kind, kind != "group_by")
            if counted != expected:
                raise BenchError(f"{kind}: the draft counts {counted} tokens, the events hold {expected}")
            figures[f"draft_{kind}_s"] = round(best, 4)
    finally:
        await conn.close()
    figures["group_by_vs_plain"] = round(figures["draft_group_by_s"] / figures["draft_plain_s"], 2)
    figures["time_of_use_vs_plain"] = round(figures["draft_time_of_use_s"] / figures["draft_plain_s"], 2)
    return figures


def describe(f: dict[str, float]) -> str:
    return (f"CreateDraft over {f['events']:,.0f} events (best of the rounds):\n"
            f"plain per-unit price (baseline): {f['draft_plain_s']:.3f} s\n"
            f"price per model + region filter: {f['draft_group_by_s']:.3f} s ({f['group_by_vs_plain']:.2f}x)\n"
            f"peak/off-peak in Europe/Berlin:  {f['draft_time_of_use_s']:.3f} s ({f['time_of_use_vs_plain']:.2f}x)")
