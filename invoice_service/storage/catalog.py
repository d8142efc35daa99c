"""Catalog verbs: customers, meters, plans, subscriptions — each create in one transaction."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg

from invoice_service.domain.catalog import (
    Customer,
    Meter,
    Plan,
    Subscription,
    SubscriptionPhase,
    overrides_from_json,
    overrides_json,
)
from invoice_service.domain.invoices import Aggregation, ChargeKind
from invoice_service.domain.lifecycle import Schedule
from invoice_service.domain.periods import INTERVAL_MONTHS, SETTLED_STATUSES, Period
from invoice_service.domain.pricing import Price
from invoice_service.storage.double_pricing import LOCK_CUSTOMER, refuse_double_pricing
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
SELECT plan_id, name, currency, billing_interval, terms, created_at, version FROM plans
WHERE tenant_id = $1 AND plan_id = $2
"""
INSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, plan_id, anchor, quantities, plan_version,
                           overrides, trial_end, calendar_aligned)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING RETURNING created_at
"""
INSERT_FIRST_PHASE = """
INSERT INTO subscription_phases (tenant_id, subscription_id, effective_at, plan_id, plan_version, quantities,
                                 overrides)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
INSERT_PLAN_VERSION = """
INSERT INTO plan_versions (tenant_id, plan_id, version, name, terms) VALUES ($1, $2, $3, $4, $5)
"""
SUBSCRIPTION_COLUMNS = """
subscription_id, customer_id, plan_id, anchor, quantities, created_at, plan_version, overrides, trial_end,
calendar_aligned, ends_at, canceled_at
"""
SELECT_SUBSCRIPTION = f"""
SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE tenant_id = $1 AND subscription_id = $2
"""
SELECT_PHASES = """
SELECT effective_at, plan_id, plan_version, quantities, overrides, created_at FROM subscription_phases
WHERE tenant_id = $1 AND subscription_id = $2 ORDER BY effective_at
"""
# Pages by (customer, subscription) after the cursor; $2 = '' lists every customer's.
LIST_SUBSCRIPTIONS = f"""
SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions
WHERE tenant_id = $1 AND ($2 = '' OR customer_id = $2) AND (customer_id, subscription_id) > ($3, $4)
ORDER BY customer_id, subscription_id LIMIT $5
"""
LIST_PLAN_VERSIONS = """
SELECT v.plan_id, v.name, p.currency, p.billing_interval, v.terms, v.created_at, v.version
FROM plan_versions v JOIN plans p ON p.tenant_id = v.tenant_id AND p.plan_id = v.plan_id
WHERE v.tenant_id = $1 AND v.plan_id = $2 AND v.version > $3 ORDER BY v.version LIMIT $4
"""
# Due periods are listed by (customer, subscription, period start), a chunk of subscriptions at a time
# from the cursor's subscription on, and only those customers' invoices: a page costs what it lists,
# not the tenant's whole catalog.
SELECT_DUE_SUBSCRIPTIONS = """
SELECT s.subscription_id, s.customer_id, s.anchor, s.trial_end, s.calendar_aligned, s.ends_at, p.billing_interval
FROM subscriptions s
JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE s.tenant_id = $1 AND s.anchor <= $2 AND (s.customer_id, s.subscription_id) >= ($3, $4)
  AND (s.customer_id, s.subscription_id) <> ($5, $6)
ORDER BY s.customer_id, s.subscription_id LIMIT $7
"""
SELECT_PERIOD_INVOICES = """
SELECT subscription_id, period_start, invoice_id, status FROM invoices
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
SELECT c.ledger_account_id, s.customer_id, s.subscription_id, s.anchor, s.trial_end, s.calendar_aligned, s.ends_at,
       p.billing_interval FROM customers c
JOIN subscriptions s ON s.tenant_id = c.tenant_id AND s.customer_id = c.customer_id
JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE c.tenant_id = $1 AND c.ledger_account_id = ANY($2::text[])
"""
SELECT_SETTLED_PERIODS = """
SELECT subscription_id, period_start FROM invoices
WHERE tenant_id = $1 AND customer_id = ANY($2::text[]) AND status = ANY($3::text[])
"""


def meter_from_row(row: asyncpg.Record) -> Meter:
    return Meter(row["meter_code"], row["name"], Aggregation(row["aggregation"]), row["property"],
                 row["allow_negative"], row["created_at"], row["unit"])


def plan_from_row(row: asyncpg.Record) -> Plan:
    return Plan(row["plan_id"], row["name"], row["currency"], row["billing_interval"],
                Plan.components_from_json(json.loads(row["terms"])), row["created_at"], row["version"])


def subscription_from_row(row: asyncpg.Record) -> Subscription:
    q = json.loads(row["quantities"])
    return Subscription(row["subscription_id"], row["customer_id"], row["plan_id"], row["anchor"],
                        q["add_ons"], q["licenses"], row["created_at"], row["plan_version"], row["trial_end"],
                        row["calendar_aligned"], row["ends_at"], row["canceled_at"],
                        overrides_from_json(json.loads(row["overrides"])))


def phase_from_row(row: asyncpg.Record) -> SubscriptionPhase:
    q = json.loads(row["quantities"])
    return SubscriptionPhase(row["effective_at"], row["plan_id"], row["plan_version"], q["add_ons"], q["licenses"],
                             overrides_from_json(json.loads(row["overrides"])), row["created_at"])


def schedule_of(row: asyncpg.Record) -> Schedule:
    """The billing schedule of a subscription row (with its plan's billing_interval)."""
    return Schedule(row["anchor"], INTERVAL_MONTHS[row["billing_interval"]], row["trial_end"],
                    row["calendar_aligned"], row["ends_at"])


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
            await conn.execute(INSERT_PLAN_VERSION, guard.tenant_id, plan.plan_id, 1, plan.name,
                               json.dumps(plan.components_json()))
            result = Plan(plan.plan_id, plan.name, plan.currency, plan.interval, plan.components, created)
            await guard.record(conn, result)
            return result

    async def get_plan(self, tenant_id: str, plan_id: str) -> Plan:
        row = await self._pool.fetchrow(SELECT_PLAN, tenant_id, plan_id)
        if row is None:
            raise not_found("plan_id", f"no plan {plan_id!r}")
        return plan_from_row(row)

    async def create_subscription(self, guard: Guard, sub: Subscription) -> Subscription:
        """A subscription and its first phase (at the anchor, on the plan's latest version). A customer
        may have several; the subscription id is unique."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            if await conn.fetchval(LOCK_CUSTOMER, guard.tenant_id, sub.customer_id) is None:
                raise not_found("customer_id", f"no customer {sub.customer_id!r}")
            plan_row = await conn.fetchrow(SELECT_PLAN, guard.tenant_id, sub.plan_id)
            if plan_row is None:
                raise not_found("plan_id", f"no plan {sub.plan_id!r}")
            plan = plan_from_row(plan_row)
            check_quantities(plan, sub.add_ons, sub.licenses)
            check_overrides(plan, sub.overrides)
            quantities = json.dumps({"add_ons": sub.add_ons, "licenses": sub.licenses})
            overrides = json.dumps(overrides_json(sub.overrides))
            created = await conn.fetchval(INSERT_SUBSCRIPTION, guard.tenant_id, sub.subscription_id,
                                          sub.customer_id, sub.plan_id, sub.anchor, quantities, plan.version,
                                          overrides, sub.trial_end, sub.calendar_aligned)
            if created is None:
                raise conflict("subscription_id", f"subscription {sub.subscription_id!r} already exists")
            await conn.execute(INSERT_FIRST_PHASE, guard.tenant_id, sub.subscription_id, sub.anchor, sub.plan_id,
                               plan.version, quantities, overrides)
            await refuse_double_pricing(conn, guard.tenant_id, sub.customer_id, sub.subscription_id, set(), "plan_id")
            result = dataclasses.replace(sub, created_at=created, plan_version=plan.version)
            await guard.record(conn, result)
            return result

    async def get_subscription(self, tenant_id: str, subscription_id: str) -> Subscription:
        """The subscription with its phases (the change history), oldest first."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(SELECT_SUBSCRIPTION, tenant_id, subscription_id)
            if row is None:
                raise not_found("subscription_id", f"no subscription {subscription_id!r}")
            phases = await conn.fetch(SELECT_PHASES, tenant_id, subscription_id)
        return dataclasses.replace(subscription_from_row(row), phases=tuple(phase_from_row(r) for r in phases))

    async def list_subscriptions(self, tenant_id: str, customer_id: str, after: tuple[str, str] | None,
                                 limit: int) -> list[Subscription]:
        """One page by (customer, subscription) after the `after` cursor; customer_id "" = every customer."""
        if customer_id and await self._pool.fetchval(SELECT_CUSTOMER, tenant_id, customer_id) is None:
            raise not_found("customer_id", f"no customer {customer_id!r}")
        cursor = after or ("", "")
        rows = await self._pool.fetch(LIST_SUBSCRIPTIONS, tenant_id, customer_id, *cursor, limit)
        return [subscription_from_row(r) for r in rows]

    async def list_plan_versions(self, tenant_id: str, plan_id: str, after_version: int, limit: int) -> list[Plan]:
        """One page of the plan's versions, oldest first, after `after_version`."""
        rows = await self._pool.fetch(LIST_PLAN_VERSIONS, tenant_id, plan_id, after_version, limit)
        if not rows and after_version == 0:
            await self.get_plan(tenant_id, plan_id)  # NOT_FOUND plan_id
        return [plan_from_row(r) for r in rows]

    async def list_due(self, tenant_id: str, as_of: datetime, grace_s: int, limit: int,
                       after: tuple[str, str, datetime] | None = None) -> tuple[list[DueRow], bool]:
        """One page of (customer, subscription, period, invoice_id, status), by customer, subscription,
        then period start, after the `after` (customer, subscription, period start) cursor: every period
        ended by as_of - grace whose invoice is missing or not yet FINALIZED (a VOIDED one is not
        re-billed, an ABANDONED one is never billed). Returns the page and whether more may follow."""
        cutoff = as_of - timedelta(seconds=grace_s)
        start_at = (after[0], after[1]) if after is not None else ("", "")
        skip = ("", "")  # a subscription whose periods all precede the cursor
        due: list[DueRow] = []
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            while len(due) < limit:
                subs = await conn.fetch(SELECT_DUE_SUBSCRIPTIONS, tenant_id, cutoff, *start_at, *skip, limit)
                if not subs:
                    return due, False
                invoices = await conn.fetch(SELECT_PERIOD_INVOICES, tenant_id, [s["customer_id"] for s in subs],
                                            cutoff)
                due.extend(_due_periods(subs, _period_invoices(invoices), cutoff, after, limit - len(due)))
                after = None  # the cursor's subscription is behind us now
                start_at = skip = (subs[-1]["customer_id"], subs[-1]["subscription_id"])
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
            starts.setdefault(r["subscription_id"], set()).add(r["period_start"])
        through: dict[str, datetime] = {}
        for s in subs:
            t = schedule_of(s).invoiced_through(starts.get(s["subscription_id"], set()), MAX_PERIODS_PER_SUBSCRIPTION)
            account = s["ledger_account_id"]
            through[account] = min(t, through.get(account, t))
        return [(a, through[a]) for a in accounts]


DueRow = tuple[str, str, Period, str, str]


def _period_invoices(rows: list[asyncpg.Record]) -> dict[tuple[str, datetime], tuple[str, str]]:
    """(subscription, period start) -> (invoice, status); a VOIDED invoice only where no other exists."""
    by_period: dict[tuple[str, datetime], tuple[str, str]] = {}
    for r in rows:
        key = (r["subscription_id"], r["period_start"])
        if r["status"] != "VOIDED" or key not in by_period:
            by_period[key] = (r["invoice_id"], r["status"])
    return by_period


def _due_periods(subs: list[asyncpg.Record], invoices: dict[tuple[str, datetime], tuple[str, str]],
                 cutoff: datetime, after: tuple[str, str, datetime] | None, limit: int) -> list[DueRow]:
    """Up to `limit` due periods of `subs`, in order; of the cursor's subscription only those starting
    after the cursor's period."""
    due: list[DueRow] = []
    for s in subs:
        customer_id, subscription_id = s["customer_id"], s["subscription_id"]
        for p in schedule_of(s).periods_until(cutoff, MAX_PERIODS_PER_SUBSCRIPTION):
            if len(due) >= limit:
                break
            if after is not None and (customer_id, subscription_id) == after[:2] and p.start <= after[2]:
                continue
            invoice_id, status = invoices.get((subscription_id, p.start), ("", ""))
            if status in ("", "DRAFT", "PREPARED"):
                due.append((customer_id, subscription_id, Period(p.index, p.start, p.end), invoice_id, status))
    return due


def check_quantities(plan: Plan, add_ons: dict[str, int], licenses: dict[str, int]) -> None:
    kinds = {c.code: c.kind for c in plan.components}
    for field, wanted, chosen in (("add_ons", ChargeKind.ADD_ON, add_ons),
                                  ("licenses", ChargeKind.LICENSE, licenses)):
        for i, code in enumerate(chosen):
            if kinds.get(code) is not wanted:
                raise invalid(f"{field}[{i}].code", f"plan {plan.plan_id!r} has no {wanted.value} {code!r}")


def check_overrides(plan: Plan, overrides: dict[str, Decimal | Price]) -> None:
    """A usage override is a price, any other an amount; each names a component of the plan."""
    kinds = {c.code: c.kind for c in plan.components}
    for i, (code, o) in enumerate(overrides.items()):
        kind = kinds.get(code)
        if kind is None:
            raise invalid(f"price_overrides[{i}].code", f"plan {plan.plan_id!r} has no component {code!r}")
        if (kind is ChargeKind.USAGE) != isinstance(o, Price):
            wanted = "a price" if kind is ChargeKind.USAGE else "an amount"
            raise invalid(f"price_overrides[{i}]", f"{code!r} is a {kind.value} component: override it with {wanted}")


def _check_dimensions(plan: Plan, meters: dict[str, Meter]) -> None:
    """Dimensions (filters, group-by, time of use) split a meter's events; distinct counts do not split."""
    usage = [c for c in plan.components if c.kind is ChargeKind.USAGE]
    for i, c in enumerate(usage):
        if c.dimensions is not None and meters[c.code].aggregation is Aggregation.UNIQUE_COUNT:
            raise invalid(f"usage_charges[{i}].group_by", f"meter {c.code!r} counts distinct values (UNIQUE_COUNT); "
                                                          "filters, group_by and time_of_use need SUM, COUNT or MAX")
