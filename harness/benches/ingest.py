"""Ingest and draft benchmark: `creditctl bench ingest [--json]`.

Starts its own embedded Postgres (durable: fsync on) in a temporary directory, migrates, starts
the real invoice gRPC server in-process on port 0, then measures:
  * events/s through IngestEvents (batches of 1,000, event-id dedupe on, `concurrency` in flight);
  * the baseline: the same kind of events inserted one per transaction straight into Postgres,
    over the same number of connections;
  * CreateDraft time for one customer with 1,000,000 events in the period (loaded with
    INSERT ... SELECT generate_series as set-up), once right after the load and once after VACUUM.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass
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
CUSTOMERS = 20
BASELINE_INSERT = """
INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_code, ts, quantity, unique_key, properties)
VALUES ($1, $2, $3, $4, $5, $6::numeric, NULL, NULL) ON CONFLICT (tenant_id, event_id) DO NOTHING
"""
LOAD_EVENTS = """
INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_code, ts, quantity, unique_key)
SELECT $1, 'big-' || n, $2, CASE WHEN n % 10 = 0 THEN 'users' WHEN n % 2 = 0 THEN 'output_tokens'
                                 ELSE 'input_tokens' END,
       $3::timestamptz + (n % $4) * interval '1 second', (n % 997) + 1,
       CASE WHEN n % 10 = 0 THEN 'user-' || (n % 5000) END
FROM generate_series(1, $5) AS n
"""


@dataclass
class IngestBench:
    events_per_s: float
    baseline_events_per_s: float
    ratio_vs_baseline: float
    draft_1m_events_s: float         # right after loading (visibility map empty)
    draft_1m_vacuumed_s: float       # after VACUUM: index-only scans
    split_1m_events_s: float         # SplitDraft at 3 instants, after VACUUM
    events: int
    baseline_events: int
    draft_events: int
    batch_size: int
    concurrency: int


async def _seed(stub: pb_grpc.InvoiceServiceStub, md: list[tuple[str, str]], anchor: datetime) -> None:
    for code, agg, prop in (("input_tokens", pb.SUM, ""), ("output_tokens", pb.SUM, ""),
                            ("users", pb.UNIQUE_COUNT, "user_id")):
        await stub.CreateMeter(pb.CreateMeterRequest(idempotency_key=f"m-{code}", meter_code=code, aggregation=agg,
                                                     property=prop), metadata=md)
    tiers = [pb.Tier(up_to="1000000", unit_amount="0.00002"), pb.Tier(unit_amount="0.00001")]
    await stub.CreatePlan(pb.CreatePlanRequest(
        idempotency_key="plan", plan_id="chatppt", currency="USD",
        usage_charges=[
            pb.UsageCharge(meter_code="input_tokens", price=pb.Price(model=pb.GRADUATED, tiers=tiers)),
            pb.UsageCharge(meter_code="output_tokens", price=pb.Price(model=pb.PER_UNIT, unit_amount="0.00003")),
            pb.UsageCharge(meter_code="users", price=pb.Price(model=pb.VOLUME, tiers=tiers))],
        fixed_fees=[pb.FixedFee(code="platform", amount="20")]), metadata=md)
    for c in [*(f"c{n}" for n in range(CUSTOMERS)), "big"]:
        await stub.CreateCustomer(pb.CreateCustomerRequest(idempotency_key=f"c-{c}", customer_id=c,
                                                           ledger_account_id=f"acct-{c}"), metadata=md)
        await stub.CreateSubscription(pb.CreateSubscriptionRequest(
            idempotency_key=f"s-{c}", subscription_id=f"s-{c}", customer_id=c, plan_id="chatppt",
            anchor=to_timestamp(anchor)), metadata=md)


def _batches(prefix: str, count: int, batch_size: int, start: datetime, span_s: int) -> list[bytes]:
    """Pre-serialized IngestEvents requests, so the client's own work stays out of the measurement."""
    out: list[bytes] = []
    for b in range(0, count, batch_size):
        req = pb.IngestEventsRequest()
        for n in range(b, min(b + batch_size, count)):
            e = req.events.add(event_id=f"{prefix}-{n}", customer_id=f"c{n % CUSTOMERS}",
                               meter_code="input_tokens" if n % 2 else "output_tokens", quantity=str(n % 500 + 1))
            e.timestamp.CopyFrom(to_timestamp(start + timedelta(seconds=n % span_s)))
        out.append(req.SerializeToString())
    return out


async def _ingest(channel: grpc.aio.Channel, md: list[tuple[str, str]], batches: list[bytes],
                  concurrency: int) -> float:
    call = channel.unary_unary("/credits.invoice.v1.InvoiceService/IngestEvents",
                               request_serializer=lambda b: b, response_deserializer=pb.IngestEventsResponse.FromString)
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            response = await call(queue.pop(), metadata=md)
            assert response.duplicates == 0 or response.accepted == 0

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _baseline(dsn: str, count: int, concurrency: int, start: datetime, span_s: int) -> float:
    conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]
    per = count // concurrency

    async def worker(w: int, conn: asyncpg.Connection) -> None:
        for n in range(w * per, (w + 1) * per):
            await conn.execute(BASELINE_INSERT, TENANT, f"base-{n}", f"c{n % CUSTOMERS}",
                               "input_tokens" if n % 2 else "output_tokens", start + timedelta(seconds=n % span_s),
                               str(n % 500 + 1))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(w, c) for w, c in enumerate(conns)))
        return time.perf_counter() - started
    finally:
        for c in conns:
            await c.close()


async def run(events: int = 200_000, baseline_events: int = 20_000, draft_events: int = 1_000_000,
              batch_size: int = 1000, concurrency: int = 4, work_dir: Path | None = None) -> IngestBench:
    with contextlib.ExitStack() as stack:
        root = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="invoice-bench-")))
        pg = EmbeddedPostgres(root / "pg").start()
        stack.callback(pg.stop, "immediate")
        dsn = await asyncio.to_thread(pg.create_database, "bench_invoice")
        await migrate_service(dsn, MIGRATIONS_DIR)  # before the key is stored (create_invoice_server migrates too)
        key_id, key, key_hash = mint_key()
        conn = await asyncpg.connect(dsn)
        await store_tenant_key(conn, TENANT, TENANT, key_id, key_hash, "admin")
        await conn.close()
        settings = Settings(pool_max_size=max(8, concurrency * 2))
        server, port, pool = await create_invoice_server(dsn, settings=settings, usage_grace_s=400 * 86400)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
        try:
            return await _measure(dsn, channel, [("x-api-key", key)], events, baseline_events, draft_events,
                                  batch_size, concurrency)
        finally:
            await channel.close()
            await server.stop(None)
            await pool.close()


async def _measure(dsn: str, channel: grpc.aio.Channel, md: list[tuple[str, str]], events: int, baseline_events: int,
                   draft_events: int, batch_size: int, concurrency: int) -> IngestBench:
    stub = pb_grpc.InvoiceServiceStub(channel)
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = (now - timedelta(days=40)).replace(day=1, hour=0, minute=0, second=0)
    await _seed(stub, md, anchor)
    span_s = int((now - anchor).total_seconds()) - 60
    warmup = _batches("warm", batch_size * concurrency, batch_size, anchor, span_s)
    await _ingest(channel, md, warmup, concurrency)
    batch_s = await _ingest(channel, md, _batches("ev", events, batch_size, anchor, span_s), concurrency)
    base_s = await _baseline(dsn, baseline_events, concurrency, anchor, span_s)

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(LOAD_EVENTS, TENANT, "big", anchor, span_s, draft_events)
        await conn.execute("ANALYZE usage_events")
        # First draft right after the load: the visibility map is still empty (worst case).
        draft_s, draft = await _draft(stub, md, anchor, "big-draft-1")
        await conn.execute("VACUUM usage_events")  # what autovacuum does soon after a load
        vacuumed_s, _ = await _draft(stub, md, anchor, "big-draft-2")
    finally:
        await conn.close()
    assert sum(Decimal(i.quantity) for i in draft.line_items if i.kind == pb.USAGE) > 0
    cuts = [to_timestamp(anchor + timedelta(days=d)) for d in (5, 12, 20)]
    started = time.perf_counter()
    await stub.SplitDraft(pb.SplitDraftRequest(invoice_id=draft.invoice_id, split_at=cuts), metadata=md)
    split_s = time.perf_counter() - started
    events_per_s = events / batch_s
    baseline_per_s = baseline_events / base_s
    return IngestBench(round(events_per_s), round(baseline_per_s), round(events_per_s / baseline_per_s, 2),
                       round(draft_s, 3), round(vacuumed_s, 3), round(split_s, 3), events, baseline_events,
                       draft_events, batch_size, concurrency)


async def _draft(stub: pb_grpc.InvoiceServiceStub, md: list[tuple[str, str]], anchor: datetime,
                 key: str) -> tuple[float, pb.Invoice]:
    started = time.perf_counter()
    draft = await stub.CreateDraft(pb.CreateDraftRequest(idempotency_key=key, customer_id="big",
                                                         period_start=to_timestamp(anchor)), metadata=md)
    return time.perf_counter() - started, draft


def as_dict(result: IngestBench) -> dict[str, float]:
    return asdict(result)


def describe(r: IngestBench) -> str:
    return (f"ingest via IngestEvents ({r.batch_size}/batch, {r.concurrency} in flight): "
            f"{r.events_per_s:,.0f} events/s\n"
            f"baseline, one event per transaction ({r.concurrency} connections): {r.baseline_events_per_s:,.0f} "
            f"events/s\nratio: {r.ratio_vs_baseline:.2f}x\n"
            f"draft for {r.draft_events:,} events in the period: {r.draft_1m_events_s:.3f} s right after loading, "
            f"{r.draft_1m_vacuumed_s:.3f} s after VACUUM (split at 3 instants: {r.split_1m_events_s:.3f} s)")
