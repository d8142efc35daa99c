"""Catalog verbs: customers, meters, plans, subscriptions — each create in one transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from invoice_service.domain.catalog import Customer, Meter, Plan, Subscription
from invoice_service.domain.invoices import Aggregation, ChargeKind
from invoice_service.domain.periods import INTERVAL_MONTHS, SETTLED_STATUSES, Period, invoiced_through
from service_runtime.idempotency import Guard
from service_runtime.rejections import conflict, invalid, not_found

INSERT_CUSTOMER = """
INSERT INTO customers (tenant_id, customer_id, name, ledger_account_id) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING created_at
"""
SELECT_CUSTOMER = """
SELECT customer_id, name, ledger_account_id, created_at, tax_region FROM customers
WHERE tenant_id = $1 AND customer_id = $2
"""
INSERT_METER = """
INSERT INTO meters (tenant_id, meter_code, name, aggregation, property, allow_negative, unit)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING created_at
"""
SELECT_METERS = """
SELECT meter_code, name, aggregation, property, allow_negative, created_at, unit FROM meters
WHERE tenant_id = $1 AND meter_code = ANY($2::text[])
"""
INSERT_PLAN = """
INSERT INTO plans (tenant_id, plan_id, name, currency, billing_interval, terms) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING RETURNING created_at
"""
SELECT_PLAN = """
SELECT plan_id, name, currency, billing_interval, terms, created_at FROM plans WHERE tenant_id = $1 AND plan_id = $2
"""
INSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, plan_id, anchor, quantities)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING created_at
"""
SELECT_SUBSCRIPTION = """
SELECT subscription_id, customer_id, plan_id, anchor, quantities, created_at FROM subscriptions
WHERE tenant_id = $1 AND subscription_id = $2
"""
SELECT_SUBSCRIPTION_EXISTS = """
SELECT subscription_id FROM subscriptions WHERE tenant_id = $1 AND (subscription_id = $2 OR customer_id = $3)
"""
# Due periods are listed by (customer, period start) — one subscription per customer — a chunk of
# subscriptions at a time from the cursor's customer on, and only those customers' invoices: a page
# costs what it lists, not the tenant's whole catalog.
SELECT_DUE_SUBSCRIPTIONS = """
SELECT s.subscription_id, s.customer_id, s.anchor, p.billing_interval FROM subscriptions s
JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE s.tenant_id = $1 AND s.anchor <= $2 AND s.customer_id >= $3 AND s.customer_id <> $4
ORDER BY s.customer_id LIMIT $5
"""
SELECT_PERIOD_INVOICES = """
SELECT customer_id, period_start, invoice_id, status FROM invoices
WHERE tenant_id = $1 AND customer_id = ANY($2::text[]) AND period_start <= $3
"""

MAX_PERIODS_PER_SUBSCRIPTION = 1200
# One page of ledger accounts billed by a subscription, then their subscriptions and final periods.
SELECT_BILLED_ACCOUNTS = """
SELECT DISTINCT c.ledger_account_id FROM customers c
JOIN subscriptions s ON s.tenant_id = c.tenant_id AND s.customer_id = c.customer_id
WHERE c.tenant_id = $1 AND c.ledger_account_id > $2 ORDER BY c.ledger_account_id LIMIT $3
"""
SELECT_ACCOUNT_SUBSCRIPTIONS = """
SELECT c.ledger_account_id, s.customer_id, s.anchor, p.billing_interval FROM customers c
JOIN subscriptions s ON s.tenant_id = c.tenant_id AND s.customer_id = c.customer_id
JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE c.tenant_id = $1 AND c.ledger_account_id = ANY($2::text[])
"""
SELECT_SETTLED_PERIODS = """
SELECT customer_id, period_start FROM invoices
WHERE tenant_id = $1 AND customer_id = ANY($2::text[]) AND status = ANY($3::text[])
"""


def meter_from_row(row: asyncpg.Record) -> Meter:
    return Meter(row["meter_code"], row["name"], Aggregation(row["aggregation"]), row["property"],
                 row["allow_negative"], row["created_at"], row["unit"])


def plan_from_row(row: asyncpg.Record) -> Plan:
    return Plan(row["plan_id"], row["name"], row["currency"], row["billing_interval"],
                Plan.components_from_json(json.loads(row["terms"])), row["created_at"])


def subscription_from_row(row: asyncpg.Record) -> Subscription:
    q = json.loads(row["quantities"])
    return Subscription(row["subscription_id"], row["customer_id"], row["plan_id"], row["anchor"],
                        q["add_ons"], q["licenses"], row["created_at"])


class CatalogOperations:
    """Creates and reads catalog records; meters and plans are immutable, so they are cached."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._meters: dict[tuple[str, str], Meter] = {}

    async def create_customer(self, guard: Guard, customer: Customer) -> Customer:
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            created = await conn.fetchval(INSERT_CUSTOMER, guard.tenant_id, customer.customer_id,
                                          customer.name, customer.ledger_account_id)
            if created is None:
                raise conflict("customer_id", f"customer {customer.customer_id!r} already exists")
            result = Customer(customer.customer_id, customer.name, customer.ledger_account_id, created)
            await guard.record(conn, result)
            return result

    async def get_customer(self, tenant_id: str, customer_id: str) -> Customer:
        row = await self._pool.fetchrow(SELECT_CUSTOMER, tenant_id, customer_id)
        if row is None:
            raise not_found("customer_id", f"no customer {customer_id!r}")
        return Customer(row["customer_id"], row["name"], row["ledger_account_id"], row["created_at"],
                        row["tax_region"])

    async def create_meter(self, guard: Guard, meter: Meter) -> Meter:
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            created = await conn.fetchval(INSERT_METER, guard.tenant_id, meter.meter_code, meter.name,
                                          meter.aggregation.value, meter.property, meter.allow_negative,
                                          meter.unit)
            if created is None:
                raise conflict("meter_code", f"meter {meter.meter_code!r} already exists")
            result = Meter(meter.meter_code, meter.name, meter.aggregation, meter.property,
                           meter.allow_negative, created, meter.unit)
            await guard.record(conn, result)
            return result

    async def meters(self, conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str,
                     codes: Sequence[str]) -> dict[str, Meter]:
        """The known meters among `codes` (unknown ones are simply absent)."""
        found = {c: m for c in codes if (m := self._meters.get((tenant_id, c))) is not None}
        missing = [c for c in codes if c not in found]
        if missing:
            for row in await conn.fetch(SELECT_METERS, tenant_id, missing):
                meter = meter_from_row(row)
                self._meters[(tenant_id, meter.meter_code)] = meter
                found[meter.meter_code] = meter
        return found

    async def get_meter(self, tenant_id: str, meter_code: str) -> Meter:
        meter = (await self.meters(self._pool, tenant_id, [meter_code])).get(meter_code)
        if meter is None:
            raise not_found("meter_code", f"no meter {meter_code!r}")
        return meter

    async def create_plan(self, guard: Guard, plan: Plan) -> Plan:
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            codes = [c.code for c in plan.components if c.kind is ChargeKind.USAGE]
            known = await self.meters(conn, guard.tenant_id, codes)
            for i, code in enumerate(codes):
                if code not in known:
                    raise not_found(f"usage_charges[{i}].meter_code", f"no meter {code!r}")
            _check_dimensions(plan, known)
            created = await conn.fetchval(INSERT_PLAN, guard.tenant_id, plan.plan_id, plan.name, plan.currency,
                                          plan.interval, json.dumps(plan.components_json()))
            if created is None:
                raise conflict("plan_id", f"plan {plan.plan_id!r} already exists")
            result = Plan(plan.plan_id, plan.name, plan.currency, plan.interval, plan.components, created)
            await guard.record(conn, result)
            return result

    async def get_plan(self, tenant_id: str, plan_id: str) -> Plan:
        row = await self._pool.fetchrow(SELECT_PLAN, tenant_id, plan_id)
        if row is None:
            raise not_found("plan_id", f"no plan {plan_id!r}")
        return plan_from_row(row)

    async def create_subscription(self, guard: Guard, sub: Subscription) -> Subscription:
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            if await conn.fetchval(SELECT_CUSTOMER, guard.tenant_id, sub.customer_id) is None:
                raise not_found("customer_id", f"no customer {sub.customer_id!r}")
            plan_row = await conn.fetchrow(SELECT_PLAN, guard.tenant_id, sub.plan_id)
            if plan_row is None:
                raise not_found("plan_id", f"no plan {sub.plan_id!r}")
            _check_quantities(plan_from_row(plan_row), sub)
            if await conn.fetchval(SELECT_SUBSCRIPTION_EXISTS, guard.tenant_id, sub.subscription_id,
                                   sub.customer_id) is not None:
                raise conflict("customer_id", f"customer {sub.customer_id!r} (or subscription "
                                              f"{sub.subscription_id!r}) already has a subscription")
            quantities = json.dumps({"add_ons": sub.add_ons, "licenses": sub.licenses})
            created = await conn.fetchval(INSERT_SUBSCRIPTION, guard.tenant_id, sub.subscription_id,
                                          sub.customer_id, sub.plan_id, sub.anchor, quantities)
            if created is None:
                raise conflict("subscription_id", f"subscription {sub.subscription_id!r} already exists")
            result = Subscription(sub.subscription_id, sub.customer_id, sub.plan_id, sub.anchor,
                                  sub.add_ons, sub.licenses, created)
            await guard.record(conn, result)
            return result

    async def get_subscription(self, tenant_id: str, subscription_id: str) -> Subscription:
        row = await self._pool.fetchrow(SELECT_SUBSCRIPTION, tenant_id, subscription_id)
        if row is None:
            raise not_found("subscription_id", f"no subscription {subscription_id!r}")
        return subscription_from_row(row)

    async def list_due(self, tenant_id: str, as_of: datetime, grace_s: int, limit: int,
                       after: tuple[str, datetime] | None = None) -> tuple[list[DueRow], bool]:
        """One page of (customer, subscription, period, invoice_id, status), by customer then period
        start, after the `after` (customer, period start) cursor: every period ended by as_of - grace
        whose invoice is missing or not yet FINALIZED (a VOIDED one is not re-billed, an ABANDONED one
        is never billed). Returns the page and whether more may follow."""
        cutoff = as_of - timedelta(seconds=grace_s)
        from_customer = after[0] if after is not None else ""
        skip_customer = ""  # a customer whose periods all precede the cursor
        due: list[DueRow] = []
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            while len(due) < limit:
                subs = await conn.fetch(SELECT_DUE_SUBSCRIPTIONS, tenant_id, cutoff, from_customer, skip_customer,
                                        limit)
                if not subs:
                    return due, False
                invoices = await conn.fetch(SELECT_PERIOD_INVOICES, tenant_id, [s["customer_id"] for s in subs],
                                            cutoff)
                due.extend(_due_periods(subs, _period_invoices(invoices), cutoff, after, limit - len(due)))
                after = None  # the cursor's customer is behind us now
                from_customer = skip_customer = subs[-1]["customer_id"]
                if len(subs) < limit:
                    return due, len(due) >= limit
        return due, True

    async def list_settlements(self, tenant_id: str, after_account: str, limit: int) -> list[tuple[str, datetime]]:
        """(ledger account, invoiced_through) for one page of accounts billed by a subscription, by account:
        the earliest start, across the account's subscriptions, of a period not settled (periods.SETTLED_STATUSES)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            accounts = [r["ledger_account_id"] for r in
                        await conn.fetch(SELECT_BILLED_ACCOUNTS, tenant_id, after_account, limit)]
            subs = await conn.fetch(SELECT_ACCOUNT_SUBSCRIPTIONS, tenant_id, accounts)
            settled = await conn.fetch(SELECT_SETTLED_PERIODS, tenant_id, [s["customer_id"] for s in subs],
                                       sorted(SETTLED_STATUSES))
        starts: dict[str, set[datetime]] = {}
        for r in settled:
            starts.setdefault(r["customer_id"], set()).add(r["period_start"])
        through: dict[str, datetime] = {}
        for s in subs:
            months = INTERVAL_MONTHS[s["billing_interval"]]
            t = invoiced_through(s["anchor"], months, starts.get(s["customer_id"], set()), MAX_PERIODS_PER_SUBSCRIPTION)
            account = s["ledger_account_id"]
            through[account] = min(t, through.get(account, t))
        return [(a, through[a]) for a in accounts]


DueRow = tuple[str, str, Period, str, str]


def _period_invoices(rows: list[asyncpg.Record]) -> dict[tuple[str, datetime], tuple[str, str]]:
    """(customer, period start) -> (invoice, status); a VOIDED invoice only where no other exists."""
    by_period: dict[tuple[str, datetime], tuple[str, str]] = {}
    for r in rows:
        key = (r["customer_id"], r["period_start"])
        if r["status"] != "VOIDED" or key not in by_period:
            by_period[key] = (r["invoice_id"], r["status"])
    return by_period


def _due_periods(subs: list[asyncpg.Record], invoices: dict[tuple[str, datetime], tuple[str, str]],
                 cutoff: datetime, after: tuple[str, datetime] | None, limit: int) -> list[DueRow]:
    """Up to `limit` due periods of `subs`, in order; of the cursor's customer only those starting
    after the cursor's period."""
    due: list[DueRow] = []
    for s in subs:
        sub = Subscription(s["subscription_id"], s["customer_id"], "", s["anchor"])
        months = INTERVAL_MONTHS[s["billing_interval"]]
        for index in range(MAX_PERIODS_PER_SUBSCRIPTION):
            p = sub.period(months, index)
            if p.end > cutoff or len(due) >= limit:
                break
            if after is not None and sub.customer_id == after[0] and p.start <= after[1]:
                continue
            invoice_id, status = invoices.get((sub.customer_id, p.start), ("", ""))
            if status in ("", "DRAFT", "PREPARED"):
                due.append((sub.customer_id, sub.subscription_id, p, invoice_id, status))
    return due


def _check_quantities(plan: Plan, sub: Subscription) -> None:
    kinds = {c.code: c.kind for c in plan.components}
    for field, wanted, chosen in (("add_ons", ChargeKind.ADD_ON, sub.add_ons),
                                  ("licenses", ChargeKind.LICENSE, sub.licenses)):
        for i, code in enumerate(chosen):
            if kinds.get(code) is not wanted:
                raise invalid(f"{field}[{i}].code", f"plan {plan.plan_id!r} has no {wanted.value} {code!r}")


def _check_dimensions(plan: Plan, meters: dict[str, Meter]) -> None:
    """Dimensions (filters, group-by, time of use) split a meter's events; distinct counts do not split."""
    usage = [c for c in plan.components if c.kind is ChargeKind.USAGE]
    for i, c in enumerate(usage):
        if c.dimensions is not None and meters[c.code].aggregation is Aggregation.UNIQUE_COUNT:
            raise invalid(f"usage_charges[{i}].group_by", f"meter {c.code!r} counts distinct values (UNIQUE_COUNT); "
                                                          "filters, group_by and time_of_use need SUM, COUNT or MAX")
