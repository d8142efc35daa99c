"""Ingest and draft benchmark: `creditctl bench ingest [--json]`.

Starts its own embedded Postgres (durable: fsync on) in a temporary directory, migrates, starts
the real invoice gRPC server in-process on port 0, then measures:
  * events/s through IngestEvents (batches of 1,000, event-id dedupe on, `concurrency` in flight);
    every batch must come back fully accepted (no duplicates), and the events are counted in the
    table at the end: the rate is stored events over the time it took;
  * the baseline a fair engineer would write without the service: the same number of events, in
    batches of the same size, one multi-row INSERT (unnest) and one commit per batch, over the same
    number of connections — no idempotency guard, no customer locks, no meter lookup, no ON CONFLICT;
    rows counted the same way;
  * both sides get the same warm-up (`concurrency` batches, not counted), and run in two alternating
    rounds (service half, baseline half, service half, baseline half) so neither always meets the bigger
    table;
  * CreateDraft time for one customer with 1,000,000 events in the period (loaded with
    INSERT ... SELECT generate_series as set-up), once right after the load and once after VACUUM.
A check that fails raises BenchError (not `assert`, which `python -O` removes).
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
from typing import Any, TypeVar

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

T = TypeVar("T")
TENANT = "bench"
CUSTOMERS = 20
BASELINE_INSERT = """
INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_code, ts, quantity)
SELECT $1, e.id, e.customer, e.meter, e.ts, e.qty::numeric
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]) AS e(id, customer, meter, ts, qty)
"""
COUNT_STORED = "SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND event_id LIKE $2"
LOAD_EVENTS = """
INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_code, ts, quantity, unique_key)
SELECT $1, 'big-' || n, $2, CASE WHEN n % 10 = 0 THEN 'users' WHEN n % 2 = 0 THEN 'output_tokens'
                                 ELSE 'input_tokens' END,
       $3::timestamptz + (n % $4) * interval '1 second', (n % 997) + 1,
       CASE WHEN n % 10 = 0 THEN 'user-' || (n % 5000) END
FROM generate_series(1, $5) AS n
"""


class BenchError(RuntimeError):
    """The bench did not do what it measures (a batch not fully accepted, rows missing at the end)."""


@dataclass
class IngestBench:
    events_per_s: float
    baseline_events_per_s: float
    ratio_vs_baseline: float
    draft_1m_events_s: float         # right after loading (visibility map empty)
    draft_1m_vacuumed_s: float       # after VACUUM: index-only scans
    split_1m_events_s: float         # SplitDraft at 3 instants, after VACUUM
    events: int
    events_stored: int               # counted in usage_events at the end; == events
    baseline_events: int
    baseline_events_stored: int
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


def _event(prefix: str, n: int, start: datetime, span_s: int) -> tuple[str, str, str, datetime, str]:
    """Event n of a run: (event id, customer, meter, time, quantity) — the same on both sides."""
    return (f"{prefix}-{n}", f"c{n % CUSTOMERS}", "input_tokens" if n % 2 else "output_tokens",
            start + timedelta(seconds=n % span_s), str(n % 500 + 1))


def _batches(prefix: str, count: int, batch_size: int, start: datetime, span_s: int) -> list[tuple[bytes, int]]:
    """Pre-serialized IngestEvents requests and their sizes, so the client's own work stays out of the
    measurement."""
    out: list[tuple[bytes, int]] = []
    for b in range(0, count, batch_size):
        req = pb.IngestEventsRequest()
        for n in range(b, min(b + batch_size, count)):
            event_id, customer, meter, at, quantity = _event(prefix, n, start, span_s)
            e = req.events.add(event_id=event_id, customer_id=customer, meter_code=meter, quantity=quantity)
            e.timestamp.CopyFrom(to_timestamp(at))
        out.append((req.SerializeToString(), len(req.events)))
    return out


async def _ingest(channel: grpc.aio.Channel, md: list[tuple[str, str]], batches: list[tuple[bytes, int]],
                  concurrency: int) -> float:
    """Sends every batch; each must come back with all its events accepted (none duplicate)."""
    call = channel.unary_unary("/credits.invoice.v1.InvoiceService/IngestEvents",
                               request_serializer=lambda b: b, response_deserializer=pb.IngestEventsResponse.FromString)
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            payload, size = queue.pop()
            response = await call(payload, metadata=md)
            if (response.accepted, response.duplicates) != (size, 0):
                raise BenchError(f"a batch of {size} came back accepted={response.accepted} "
                                 f"duplicates={response.duplicates}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def _columns(prefix: str, count: int, batch_size: int, start: datetime, span_s: int) -> list[list[list[Any]]]:
    """The baseline's batches: per batch, the five columns of its events (prepared before the clock starts)."""
    out = []
    for b in range(0, count, batch_size):
        rows = [_event(prefix, n, start, span_s) for n in range(b, min(b + batch_size, count))]
        out.append([list(col) for col in zip(*rows, strict=True)])
    return out


async def _baseline(conns: list[asyncpg.Connection], batches: list[list[list[Any]]]) -> float:
    """One multi-row INSERT and one commit per batch, `len(conns)` batches in flight."""
    queue = list(reversed(batches))

    async def worker(conn: asyncpg.Connection) -> None:
        while queue:
            columns = queue.pop()
            await conn.execute(BASELINE_INSERT, TENANT, *columns)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return time.perf_counter() - started


def _halves(items: list[T]) -> list[list[T]]:
    return [items[:len(items) // 2], items[len(items) // 2:]]


async def _stored(conn: asyncpg.Connection, prefix: str, expected: int) -> int:
    stored = int(await conn.fetchval(COUNT_STORED, TENANT, f"{prefix}-%"))
    if stored != expected:
        raise BenchError(f"{expected} {prefix!r} events sent but {stored} stored")
    return stored


async def run(events: int = 200_000, baseline_events: int = 0, draft_events: int = 1_000_000,
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
            return await _measure(dsn, channel, [("x-api-key", key)], events, baseline_events or events,
                                  draft_events, batch_size, concurrency)
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
    warm = batch_size * concurrency  # the same warm-up on both sides, not counted
    await _ingest(channel, md, _batches("warm", warm, batch_size, anchor, span_s), concurrency)
    service = _batches("ev", events, batch_size, anchor, span_s)
    conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]
    try:
        await _baseline(conns, _columns("basewarm", warm, batch_size, anchor, span_s))
        baseline = _columns("base", baseline_events, batch_size, anchor, span_s)
        # Two alternating rounds, so neither side always meets the bigger table.
        batch_s = base_s = 0.0
        for service_half, baseline_half in zip(_halves(service), _halves(baseline), strict=True):
            batch_s += await _ingest(channel, md, service_half, concurrency)
            base_s += await _baseline(conns, baseline_half)
        stored = await _stored(conns[0], "ev", events)
        base_stored = await _stored(conns[0], "base", baseline_events)
    finally:
        for c in conns:
            await c.close()
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
    if not sum(Decimal(i.quantity) for i in draft.line_items if i.kind == pb.USAGE) > 0:
        raise BenchError("the 1M-event draft has no usage")
    cuts = [to_timestamp(anchor + timedelta(days=d)) for d in (5, 12, 20)]
    started = time.perf_counter()
    await stub.SplitDraft(pb.SplitDraftRequest(invoice_id=draft.invoice_id, split_at=cuts), metadata=md)
    split_s = time.perf_counter() - started
    events_per_s = stored / batch_s
    baseline_per_s = base_stored / base_s
    return IngestBench(round(events_per_s), round(baseline_per_s), round(events_per_s / baseline_per_s, 2),
                       round(draft_s, 3), round(vacuumed_s, 3), round(split_s, 3), events, stored, baseline_events,
                       base_stored, draft_events, batch_size, concurrency)


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
            f"{r.events_stored:,} of {r.events:,} events stored\n"
            f"baseline, plain multi-row INSERTs of {r.batch_size} per transaction ({r.concurrency} connections): "
            f"{r.baseline_events_per_s:,.0f} events/s ({r.baseline_events_stored:,} stored)\n"
            f"ratio: {r.ratio_vs_baseline:.2f}x\n"
            f"draft for {r.draft_events:,} events in the period: {r.draft_1m_events_s:.3f} s right after loading, "
            f"{r.draft_1m_vacuumed_s:.3f} s after VACUUM (split at 3 instants: {r.split_1m_events_s:.3f} s)")
