"""Usage ingestion: one transaction per batch, one INSERT ... ON CONFLICT DO NOTHING for all events.

Duplicates are detected by the primary key (tenant_id, event_id) inside the same statement that
inserts, so concurrent duplicate deliveries are counted once. Events are sorted by id so two
batches sharing ids lock them in the same order (no deadlock).

Late events: an event counts toward its period while period_end + grace > now and the period's
invoice is not frozen (PREPARED, FINALIZED, VOID_PENDING). Otherwise the whole batch is refused
with FAILED_PRECONDITION naming events[i].timestamp; nothing is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from invoice_service.domain.catalog import Meter
from invoice_service.domain.invoices import QUANTITY_PATTERN, Aggregation
from invoice_service.domain.periods import INTERVAL_MONTHS, period, period_containing
from invoice_service.domain.usage_costs import BilledLine
from invoice_service.storage.catalog import CatalogOperations
from service_runtime.idempotency import Guard
from service_runtime.rejections import invalid, not_found, precondition

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Customers are key-share locked: PrepareFinalize takes FOR UPDATE on the customer, so no batch can
# add events to a period while it is being frozen.
LOCK_CUSTOMERS = """
SELECT c.customer_id, s.anchor, p.billing_interval FROM customers c
LEFT JOIN subscriptions s ON s.tenant_id = c.tenant_id AND s.customer_id = c.customer_id
LEFT JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE c.tenant_id = $1 AND c.customer_id = ANY($2::text[])
FOR KEY SHARE OF c
"""
# A period abandoned because a cancellation removed it (it starts at or after its subscription's end)
# freezes nothing: no subscription of it bills there, another may.
SELECT_FROZEN_PERIODS = """
SELECT i.customer_id, i.period_start, i.period_end, i.status FROM invoices i
WHERE i.tenant_id = $1 AND i.customer_id = ANY($2::text[])
  AND i.status IN ('PREPARED', 'FINALIZED', 'VOID_PENDING', 'ABANDONED')
  AND i.period_end > $3
  AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.tenant_id = i.tenant_id
                  AND s.subscription_id = i.subscription_id AND s.ends_at <= i.period_start)
"""
INSERT_EVENTS = """
INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_code, ts, quantity, unique_key, properties)
SELECT $1, e.id, e.customer, e.meter, '1970-01-01T00:00:00Z'::timestamptz + e.us * interval '1 microsecond',
       e.qty::numeric, e.ukey, e.props::jsonb
FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::text[])
     AS e(id, customer, meter, us, qty, ukey, props)
ON CONFLICT (tenant_id, event_id) DO NOTHING
RETURNING event_id
"""


@dataclass(frozen=True)
class EventIn:
    """A syntactically valid event: ids checked, quantity a decimal string, time in microseconds."""

    event_id: str
    customer_id: str
    meter_code: str
    ts_us: int
    quantity: str
    properties: dict[str, str]
    properties_json: str | None


def event_field(field: str, count: int) -> Callable[[int], str]:
    """Names event i in rejections: "events[3]" in a batch, "event" for the single-event RPC."""
    if field == "event":
        return lambda i: field
    return lambda i: f"{field}[{i}]"


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


class UsageOperations:
    def __init__(self, pool: asyncpg.Pool, catalog: CatalogOperations, grace_s: int) -> None:
        self._pool = pool
        self._catalog = catalog
        self._grace = timedelta(seconds=grace_s)

    async def series(self, tenant_id: str, customer_id: str, start: datetime, end: datetime, granularity: str,
                     meter_code: str) -> list[tuple[str, datetime, str, int]]:
        await self._catalog.get_customer(tenant_id, customer_id)
        if meter_code:
            await self._catalog.get_meter(tenant_id, meter_code)
        return await usage_series(self._pool, tenant_id, customer_id, start, end, granularity, meter_code)

    async def billed(self, tenant_id: str, customer_id: str, start: datetime, end: datetime, granularity: str,
                     meter_code: str) -> list[BilledLine]:
        return await billed_lines(self._pool, tenant_id, customer_id, start, end, granularity, meter_code)

    async def top(self, tenant_id: str, meter_code: str, start: datetime, end: datetime,
                  limit: int) -> list[tuple[str, str, int]]:
        await self._catalog.get_meter(tenant_id, meter_code)
        return await top_customers(self._pool, tenant_id, meter_code, start, end, limit)

    async def ingest(self, guard: Guard, events: Sequence[EventIn], field: str = "events") -> list[bool]:
        """Stores new events; returns, in request order, True for accepted and False for duplicate.

        Rejections name `field[i]` (or just `field` for a single event)."""
        at = event_field(field, len(events))
        for attempt in range(3):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await guard.claim(conn)
                    accepted = await self._ingest(conn, guard.tenant_id, events, at)
                    await guard.record(conn, accepted)
                    return accepted
            except asyncpg.DeadlockDetectedError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _ingest(self, conn: asyncpg.Connection, tenant_id: str, events: Sequence[EventIn],
                      at: Callable[[int], str]) -> list[bool]:
        customers = list({e.customer_id for e in events})
        meters = await self._catalog.meters(conn, tenant_id, list({e.meter_code for e in events}))
        rows = await conn.fetch(LOCK_CUSTOMERS, tenant_id, customers)
        open_since = self._open_since(rows)
        frozen: dict[str, list[tuple[int, int, str]]] = {}
        min_ts = _EPOCH + timedelta(microseconds=min(e.ts_us for e in events))
        for r in await conn.fetch(SELECT_FROZEN_PERIODS, tenant_id, customers, min_ts):
            frozen.setdefault(r["customer_id"], []).append((_us(r["period_start"]), _us(r["period_end"]),
                                                            r["status"]))
        unique_keys: list[str | None] = []
        values: list[str] = []
        for i, e in enumerate(events):
            meter = meters.get(e.meter_code)
            if meter is None:
                raise not_found(f"{at(i)}.meter_code", f"no meter {e.meter_code!r}")
            since = open_since.get(e.customer_id)
            if since is None:
                raise not_found(f"{at(i)}.customer_id", f"no customer {e.customer_id!r}")
            if since < 0:
                raise precondition(f"{at(i)}.customer_id",
                                   f"customer {e.customer_id!r} has no subscription to bill usage to")
            values.append(_value(at(i), e, meter))
            self._check_open(at(i), e, since, frozen.get(e.customer_id, ()))
            unique_keys.append(_unique_key(at(i), e, meter))
        order = sorted(range(len(events)), key=lambda i: events[i].event_id)
        ev = [events[i] for i in order]
        inserted = await conn.fetch(
            INSERT_EVENTS, tenant_id, [e.event_id for e in ev], [e.customer_id for e in ev],
            [e.meter_code for e in ev], [e.ts_us for e in ev], [values[i] for i in order],
            [unique_keys[i] for i in order], [e.properties_json for e in ev])
        fresh = {r["event_id"] for r in inserted}
        accepted: list[bool] = []
        for e in events:
            accepted.append(e.event_id in fresh)
            fresh.discard(e.event_id)  # a repeat inside the batch is a duplicate of the first
        return accepted

    def _open_since(self, rows: Sequence[asyncpg.Record]) -> dict[str, int]:
        """Per customer, the earliest instant (µs) still accepting events, across its subscriptions; -1
        without subscription."""
        now = datetime.now(UTC)
        out: dict[str, int] = {}
        for r in rows:
            anchor = r["anchor"]
            if anchor is None:
                out[r["customer_id"]] = -1
                continue
            months = INTERVAL_MONTHS[r["billing_interval"]]
            p = period_containing(anchor, months, max(now, anchor))
            while p.index > 0 and p.start + self._grace > now:
                p = period(anchor, months, p.index - 1)
            since = _us(p.start)
            out[r["customer_id"]] = min(since, out[r["customer_id"]]) if out.get(r["customer_id"], -1) >= 0 else since
        return out

    def _check_open(self, name: str, e: EventIn, since: int, frozen: Sequence[tuple[int, int, str]]) -> None:
        if e.ts_us < since:
            when = (_EPOCH + timedelta(microseconds=since)).isoformat()
            raise precondition(f"{name}.timestamp",
                               f"its billing period is closed (late events are accepted until period end + "
                               f"grace {self._grace.total_seconds():.0f}s; open since {when})")
        for start, end, status in frozen:
            if start <= e.ts_us < end:
                raise precondition(f"{name}.timestamp",
                                   f"falls in a period whose invoice is {status}; it can no longer change")


def _value(name: str, e: EventIn, meter: Meter) -> str:
    """The number the meter aggregates: the event quantity, or the numeric property it names."""
    value, field = e.quantity, f"{name}.quantity"
    if meter.property and meter.aggregation in (Aggregation.SUM, Aggregation.MAX):
        value, field = e.properties.get(meter.property, ""), f"{name}.properties"
        if not QUANTITY_PATTERN.fullmatch(value):
            raise invalid(field, f"property {meter.property!r} must be a decimal with at most 9 places")
    if value.startswith("-") and not meter.allow_negative:
        raise invalid(field, f"meter {meter.meter_code!r} does not allow negative quantities")
    return value


def _unique_key(name: str, e: EventIn, meter: Meter) -> str | None:
    if meter.aggregation is not Aggregation.UNIQUE_COUNT:
        return None
    value = e.properties.get(meter.property)
    if not value:
        raise invalid(f"{name}.properties",
                      f"property {meter.property!r} is required by UNIQUE_COUNT meter {meter.meter_code!r}")
    if len(value) > 200:
        raise invalid(f"{name}.properties", f"property {meter.property!r} is longer than 200 characters")
    return value


# --- usage analytics ------------------------------------------------------------------------------

# Each meter's own aggregation per bucket (numeric as text keeps it exact).
_VALUE = """CASE m.aggregation WHEN 'SUM' THEN sum(e.quantity) WHEN 'COUNT' THEN count(*)
            WHEN 'MAX' THEN max(e.quantity) ELSE count(DISTINCT e.unique_key) END"""
SELECT_SERIES = f"""
SELECT e.meter_code, date_trunc($5, e.ts, 'UTC') AS bucket, ({_VALUE})::text AS value, count(*) AS events
FROM usage_events e JOIN meters m ON m.tenant_id = e.tenant_id AND m.meter_code = e.meter_code
WHERE e.tenant_id = $1 AND e.customer_id = $2 AND e.ts >= $3 AND e.ts < $4 AND ($6 = '' OR e.meter_code = $6)
GROUP BY e.meter_code, m.aggregation, bucket
ORDER BY e.meter_code, bucket
"""
SELECT_TOP = f"""
SELECT e.customer_id, ({_VALUE}) AS v, count(*) AS events
FROM usage_events e JOIN meters m ON m.tenant_id = e.tenant_id AND m.meter_code = e.meter_code
WHERE e.tenant_id = $1 AND e.meter_code = $2 AND e.ts >= $3 AND e.ts < $4
GROUP BY e.customer_id, m.aggregation
ORDER BY v DESC, e.customer_id LIMIT $5
"""


# The USAGE lines of the customer's frozen invoices (PREPARED, FINALIZED, VOID_PENDING: what was billed)
# overlapping the window, with the credits applied to each and the weight of each of its buckets
# (domain/usage_costs.py), split at the window's edges so only the window's part is kept.
SELECT_BILLED_BUCKETS = """
WITH lines AS (
  SELECT i.invoice_id, i.currency, l.line_item_id, l.code, l.amount_minor, l.service_start, l.service_end,
         COALESCE((SELECT sum(a.amount_minor) FROM credit_applications a
                   JOIN invoice_charges c ON c.tenant_id = a.tenant_id AND c.invoice_id = a.invoice_id
                                         AND c.charge_id = a.charge_id
                   WHERE a.tenant_id = i.tenant_id AND a.invoice_id = i.invoice_id
                     AND c.line_item_id = l.line_item_id), 0)::bigint AS credits_minor
  FROM invoices i JOIN invoice_line_items l ON l.tenant_id = i.tenant_id AND l.invoice_id = i.invoice_id
  WHERE i.tenant_id = $1 AND i.customer_id = $2 AND i.status IN ('PREPARED', 'FINALIZED', 'VOID_PENDING')
    AND l.kind = 'USAGE' AND l.service_end > $3 AND l.service_start < $4 AND ($6 = '' OR l.code = $6)
)
SELECT l.invoice_id, l.line_item_id, l.code, l.currency, l.amount_minor, l.credits_minor, w.bucket, w.inside, w.weight
FROM lines l JOIN LATERAL (
  SELECT date_trunc($5, e.ts, 'UTC') AS bucket, (e.ts >= $3 AND e.ts < $4) AS inside,
         CASE m.aggregation WHEN 'SUM' THEN sum(e.quantity) ELSE count(*)::numeric END AS weight
  FROM usage_events e JOIN meters m ON m.tenant_id = e.tenant_id AND m.meter_code = e.meter_code
  WHERE e.tenant_id = $1 AND e.customer_id = $2 AND e.meter_code = l.code
    AND e.ts >= l.service_start AND e.ts < l.service_end
  GROUP BY 1, 2, m.aggregation
) w ON true
ORDER BY l.invoice_id, l.line_item_id, w.bucket, w.inside
"""


async def billed_lines(pool: asyncpg.Pool, tenant_id: str, customer_id: str, start: datetime, end: datetime,
                       granularity: str, meter_code: str) -> list[BilledLine]:
    """The frozen invoices' usage lines overlapping the window, each with its buckets' weights."""
    rows = await pool.fetch(SELECT_BILLED_BUCKETS, tenant_id, customer_id, start, end, granularity, meter_code)
    lines: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for r in rows:
        lines.setdefault((r["invoice_id"], r["line_item_id"]), []).append(r)
    return [BilledLine(rs[0]["code"], rs[0]["currency"], rs[0]["amount_minor"], rs[0]["credits_minor"],
                       tuple((r["bucket"], r["inside"], r["weight"]) for r in rs)) for rs in lines.values()]


async def usage_series(pool: asyncpg.Pool, tenant_id: str, customer_id: str, start: datetime, end: datetime,
                       granularity: str, meter_code: str) -> list[tuple[str, datetime, str, int]]:
    """(meter, bucket start, value, events) of one customer, by meter then time."""
    rows = await pool.fetch(SELECT_SERIES, tenant_id, customer_id, start, end, granularity, meter_code)
    return [(r["meter_code"], r["bucket"], r["value"], r["events"]) for r in rows]


async def top_customers(pool: asyncpg.Pool, tenant_id: str, meter_code: str, start: datetime, end: datetime,
                        limit: int) -> list[tuple[str, str, int]]:
    """(customer, value, events) of the meter's biggest users over the period, highest first."""
    rows = await pool.fetch(SELECT_TOP, tenant_id, meter_code, start, end, limit)
    return [(r["customer_id"], str(r["v"]), r["events"]) for r in rows]
