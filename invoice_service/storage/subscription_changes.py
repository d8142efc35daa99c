"""Subscriptions that change — UpdateSubscription, MigrateSubscription, CancelSubscription — and plan
versions (CreatePlanVersion); each verb one transaction (domain rules: invoice_service/domain/lifecycle.py).

A change is a phase from an instant on; the subscription row mirrors the last phase. A change may
not reach into a period whose invoice is frozen (PREPARED, FINALIZED, VOID_PENDING, ABANDONED): that is
FAILED_PRECONDITION naming the instant. Lock order, as everywhere in this service: the customer row
(FOR UPDATE: PrepareFinalize takes it too, so a change and a freeze never interleave), the subscription
row, then invoices. A cancellation also ends the DRAFT invoice of the period it cuts at the new end,
and abandons (ABANDONED, with the reason) the DRAFTs of periods entirely after it, in its transaction.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from invoice_service.domain.catalog import Plan, Subscription, overrides_from_json, overrides_json
from invoice_service.domain.invoices import ChargeKind
from invoice_service.domain.pricing import Price
from invoice_service.storage.catalog import (
    INSERT_PLAN_VERSION,
    SELECT_PLAN,
    SUBSCRIPTION_COLUMNS,
    CatalogOperations,
    check_overrides,
    check_quantities,
    plan_from_row,
    schedule_of,
    subscription_from_row,
)
from invoice_service.storage.double_pricing import refuse_double_pricing, shared_meters
from service_runtime.idempotency import Guard
from service_runtime.rejections import invalid, not_found, precondition

LOCK_SUBSCRIPTION_CUSTOMER = """
SELECT c.customer_id FROM customers c
WHERE c.tenant_id = $1
  AND c.customer_id = (SELECT s.customer_id FROM subscriptions s WHERE s.tenant_id = $1 AND s.subscription_id = $2)
FOR UPDATE OF c
"""
# A DRAFT of the period a cancellation cuts ends with it (its line items are recomputed on the next draft).
END_CUT_DRAFT = """
UPDATE invoices SET period_end = $3
WHERE tenant_id = $1 AND subscription_id = $2 AND status = 'DRAFT' AND period_start < $3 AND period_end > $3
"""
SELECT_SUBSCRIPTION_FOR_UPDATE = f"""
SELECT {", ".join("s." + c.strip() for c in SUBSCRIPTION_COLUMNS.split(","))}, p.billing_interval, p.currency
FROM subscriptions s JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
WHERE s.tenant_id = $1 AND s.subscription_id = $2 FOR UPDATE OF s
"""
SELECT_PHASE_AT = """
SELECT effective_at, plan_id, plan_version, quantities, overrides FROM subscription_phases
WHERE tenant_id = $1 AND subscription_id = $2 AND effective_at <= $3 ORDER BY effective_at DESC LIMIT 1
"""
SELECT_LAST_PHASE = """
SELECT plan_id, plan_version, quantities, overrides FROM subscription_phases
WHERE tenant_id = $1 AND subscription_id = $2 ORDER BY effective_at DESC LIMIT 1
"""
UPSERT_PHASE = """
INSERT INTO subscription_phases (tenant_id, subscription_id, effective_at, plan_id, plan_version, quantities,
                                 overrides)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, subscription_id, effective_at) DO UPDATE
SET plan_id = EXCLUDED.plan_id, plan_version = EXCLUDED.plan_version, quantities = EXCLUDED.quantities,
    overrides = EXCLUDED.overrides
"""
MIRROR_LAST_PHASE = f"""
UPDATE subscriptions SET plan_id = $3, plan_version = $4, quantities = $5, overrides = $6
WHERE tenant_id = $1 AND subscription_id = $2 RETURNING {SUBSCRIPTION_COLUMNS}
"""
MARK_CANCELED = f"""
UPDATE subscriptions SET ends_at = $3, canceled_at = now()
WHERE tenant_id = $1 AND subscription_id = $2 RETURNING {SUBSCRIPTION_COLUMNS}
"""
# DRAFTs of periods a cancellation removes (starting at or after the new end) are abandoned with it:
# those periods no longer exist, so nothing would ever finalize them.
ABANDON_REMOVED_DRAFTS = """
UPDATE invoices SET status = 'ABANDONED', abandoned_at = now(), abandon_reason = $4
WHERE tenant_id = $1 AND subscription_id = $2 AND status = 'DRAFT' AND period_start >= $3
"""
# The first frozen invoice of the subscription whose period ends after an instant (and starts before
# the subscription's end, $4: invoices abandoned by a cancellation lie beyond it and block nothing).
SELECT_FROZEN_AFTER = """
SELECT invoice_id, period_start, status FROM invoices
WHERE tenant_id = $1 AND subscription_id = $2 AND period_end > $3
  AND ($4::timestamptz IS NULL OR period_start < $4)
  AND status IN ('PREPARED', 'FINALIZED', 'VOID_PENDING', 'ABANDONED')
ORDER BY period_start LIMIT 1
"""
SELECT_PLAN_VERSION = """
SELECT v.plan_id, v.name, p.currency, p.billing_interval, v.terms, v.created_at, v.version
FROM plan_versions v JOIN plans p ON p.tenant_id = v.tenant_id AND p.plan_id = v.plan_id
WHERE v.tenant_id = $1 AND v.plan_id = $2 AND v.version = $3
"""
SELECT_PLAN_FOR_UPDATE = SELECT_PLAN + " FOR UPDATE"
UPDATE_PLAN_LATEST = """
UPDATE plans SET name = $3, terms = $4, version = $5 WHERE tenant_id = $1 AND plan_id = $2 RETURNING created_at
"""


@dataclass(frozen=True)
class Change:
    """An UpdateSubscription: None (or "") keeps what is in force at `effective_at`."""

    effective_at: datetime
    plan_id: str = ""
    add_ons: dict[str, int] | None = None
    licenses: dict[str, int] | None = None
    overrides: dict[str, Decimal | Price] | None = None


class SubscriptionChanges:
    def __init__(self, pool: asyncpg.Pool, catalog: CatalogOperations) -> None:
        self._pool = pool
        self._catalog = catalog

    async def create_plan_version(self, guard: Guard, plan: Plan) -> Plan:
        """The plan's next version (same currency and interval); subscriptions stay on theirs until migrated."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            row = await conn.fetchrow(SELECT_PLAN_FOR_UPDATE, guard.tenant_id, plan.plan_id)
            if row is None:
                raise not_found("plan_id", f"no plan {plan.plan_id!r}")
            current = plan_from_row(row)
            if plan.currency != current.currency:
                raise invalid("currency", f"a plan version keeps the plan's currency {current.currency}")
            if plan.interval != current.interval:
                raise invalid("interval", f"a plan version keeps the plan's interval {current.interval}")
            codes = [c.code for c in plan.components if c.kind is ChargeKind.USAGE]
            known = await self._catalog.meters(conn, guard.tenant_id, codes)
            for i, code in enumerate(codes):
                if code not in known:
                    raise not_found(f"usage_charges[{i}].meter_code", f"no meter {code!r}")
            version = current.version + 1
            terms = json.dumps(plan.components_json())
            await conn.execute(INSERT_PLAN_VERSION, guard.tenant_id, plan.plan_id, version, plan.name, terms)
            await conn.execute(UPDATE_PLAN_LATEST, guard.tenant_id, plan.plan_id, plan.name, terms, version)
            result = dataclasses.replace(plan, created_at=current.created_at, version=version)
            await guard.record(conn, result)
            return result

    async def get_plan_version(self, tenant: str, plan_id: str, version: int) -> Plan:
        row = await self._pool.fetchrow(SELECT_PLAN_VERSION, tenant, plan_id, version)
        if row is None:
            await self._catalog.get_plan(tenant, plan_id)  # NOT_FOUND plan_id first
            raise not_found("version", f"plan {plan_id!r} has no version {version}")
        return plan_from_row(row)

    async def update(self, guard: Guard, subscription_id: str, change: Change) -> Subscription:
        """A new phase from `change.effective_at`: another plan (its latest version), units, seats, prices."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            sub_row = await self._lock(conn, guard.tenant_id, subscription_id, change.effective_at, "effective_at")
            before = await shared_meters(conn, guard.tenant_id, sub_row["customer_id"], subscription_id)
            phase = await conn.fetchrow(SELECT_PHASE_AT, guard.tenant_id, subscription_id, change.effective_at)
            assert phase is not None  # the first phase is at the anchor, and effective_at >= anchor
            quantities = json.loads(phase["quantities"])
            overrides = overrides_from_json(json.loads(phase["overrides"]))
            if change.plan_id and change.plan_id != phase["plan_id"]:
                row = await conn.fetchrow(SELECT_PLAN, guard.tenant_id, change.plan_id)
                if row is None:
                    raise not_found("plan_id", f"no plan {change.plan_id!r}")
                plan = plan_from_row(row)
                if (plan.currency, plan.interval) != (sub_row["currency"], sub_row["billing_interval"]):
                    raise invalid("plan_id", f"plan {plan.plan_id!r} bills {plan.currency} {plan.interval}; the "
                                             f"subscription bills {sub_row['currency']} {sub_row['billing_interval']}")
                quantities, overrides = _carried_over(plan, quantities, overrides)
            else:
                plan = await self._version(conn, guard.tenant_id, phase["plan_id"], phase["plan_version"])
            add_ons = change.add_ons if change.add_ons is not None else quantities["add_ons"]
            licenses = change.licenses if change.licenses is not None else quantities["licenses"]
            overrides = change.overrides if change.overrides is not None else overrides
            result = await self._new_phase(conn, guard.tenant_id, subscription_id, change.effective_at, plan,
                                           add_ons, licenses, overrides)
            await refuse_double_pricing(conn, guard.tenant_id, result.customer_id, subscription_id, before, "plan_id")
            await guard.record(conn, result)
            return result

    async def migrate(self, guard: Guard, subscription_id: str, effective_at: datetime, version: int) -> Subscription:
        """The subscription's plan at `version` (0: the latest) from `effective_at` on, same units and prices."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            sub_row = await self._lock(conn, guard.tenant_id, subscription_id, effective_at, "effective_at")
            before = await shared_meters(conn, guard.tenant_id, sub_row["customer_id"], subscription_id)
            phase = await conn.fetchrow(SELECT_PHASE_AT, guard.tenant_id, subscription_id, effective_at)
            assert phase is not None
            if version == 0:
                row = await conn.fetchrow(SELECT_PLAN, guard.tenant_id, phase["plan_id"])
                version = row["version"]
            plan = await self._version(conn, guard.tenant_id, phase["plan_id"], version, "version")
            quantities, overrides = _carried_over(plan, json.loads(phase["quantities"]),
                                                  overrides_from_json(json.loads(phase["overrides"])))
            result = await self._new_phase(conn, guard.tenant_id, subscription_id, effective_at, plan,
                                           quantities["add_ons"], quantities["licenses"], overrides)
            await refuse_double_pricing(conn, guard.tenant_id, result.customer_id, subscription_id, before, "version")
            await guard.record(conn, result)
            return result

    async def cancel(self, guard: Guard, subscription_id: str, at: datetime | None,
                     at_period_end: bool) -> Subscription:
        """Ends the subscription at `at`, or at the end of the period holding `at` (default now) with
        `at_period_end`. The last period ends there and is billed pro rata by the final invoice."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            instant = at or datetime.now(UTC)
            row = await self._lock(conn, guard.tenant_id, subscription_id, instant, "at")
            schedule = schedule_of(row)
            ends_at = instant
            if at_period_end:
                p = schedule.period_containing(instant)
                if p is not None:
                    ends_at = p.end
            if ends_at <= row["anchor"]:
                raise invalid("at", f"{ends_at.isoformat()} is not after the subscription's anchor")
            frozen = await conn.fetchrow(SELECT_FROZEN_AFTER, guard.tenant_id, subscription_id, ends_at,
                                         row["ends_at"])
            if frozen is not None:
                raise precondition("at", f"invoice {frozen['invoice_id']} ({frozen['status']}) of the period from "
                                         f"{frozen['period_start'].isoformat()} is frozen: end after it")
            result = subscription_from_row(await conn.fetchrow(MARK_CANCELED, guard.tenant_id, subscription_id,
                                                               ends_at))
            await conn.execute(END_CUT_DRAFT, guard.tenant_id, subscription_id, ends_at)
            await conn.execute(ABANDON_REMOVED_DRAFTS, guard.tenant_id, subscription_id, ends_at,
                               f"subscription canceled: it ends at {ends_at.isoformat()}, before this period")
            await guard.record(conn, result)
            return result

    async def _lock(self, conn: asyncpg.Connection, tenant: str, subscription_id: str, instant: datetime,
                    field: str) -> asyncpg.Record:
        """Locks the subscription; `instant` must be on or after its anchor, before its end, and in no
        frozen period."""
        await conn.fetchval(LOCK_SUBSCRIPTION_CUSTOMER, tenant, subscription_id)
        row = await conn.fetchrow(SELECT_SUBSCRIPTION_FOR_UPDATE, tenant, subscription_id)
        if row is None:
            raise not_found("subscription_id", f"no subscription {subscription_id!r}")
        if instant < row["anchor"]:
            raise invalid(field, f"{instant.isoformat()} is before the subscription's anchor "
                                 f"{row['anchor'].isoformat()}")
        if row["ends_at"] is not None and instant >= row["ends_at"]:
            raise precondition(field, f"the subscription ended at {row['ends_at'].isoformat()}")
        frozen = await conn.fetchrow(SELECT_FROZEN_AFTER, tenant, subscription_id, instant, row["ends_at"])
        if frozen is not None:
            raise precondition(field, f"invoice {frozen['invoice_id']} ({frozen['status']}) of the period from "
                                      f"{frozen['period_start'].isoformat()} is frozen; a change may start after it")
        return row

    async def _version(self, conn: asyncpg.Connection, tenant: str, plan_id: str, version: int,
                       field: str = "plan_id") -> Plan:
        row = await conn.fetchrow(SELECT_PLAN_VERSION, tenant, plan_id, version)
        if row is None:
            raise not_found(field, f"plan {plan_id!r} has no version {version}")
        return plan_from_row(row)

    async def _new_phase(self, conn: asyncpg.Connection, tenant: str, subscription_id: str, effective_at: datetime,
                         plan: Plan, add_ons: dict[str, int], licenses: dict[str, int],
                         overrides: dict[str, Decimal | Price]) -> Subscription:
        check_quantities(plan, add_ons, licenses)
        check_overrides(plan, overrides)
        await conn.execute(UPSERT_PHASE, tenant, subscription_id, effective_at, plan.plan_id, plan.version,
                           json.dumps({"add_ons": add_ons, "licenses": licenses}),
                           json.dumps(overrides_json(overrides)))
        last = await conn.fetchrow(SELECT_LAST_PHASE, tenant, subscription_id)
        row = await conn.fetchrow(MIRROR_LAST_PHASE, tenant, subscription_id, last["plan_id"], last["plan_version"],
                                  last["quantities"], last["overrides"])
        return subscription_from_row(row)


_Quantities = dict[str, dict[str, int]]


def _carried_over(plan: Plan, quantities: _Quantities,
                  overrides: dict[str, Decimal | Price]) -> tuple[_Quantities, dict[str, Decimal | Price]]:
    """Units, seats and price overrides whose code the plan still has with the same kind; others drop."""
    kinds = {c.code: c.kind for c in plan.components}
    kept = {
        "add_ons": {k: v for k, v in quantities["add_ons"].items() if kinds.get(k) is ChargeKind.ADD_ON},
        "licenses": {k: v for k, v in quantities["licenses"].items() if kinds.get(k) is ChargeKind.LICENSE},
    }
    kept_overrides = {k: o for k, o in overrides.items()
                      if k in kinds and (kinds[k] is ChargeKind.USAGE) == isinstance(o, Price)}
    return kept, kept_overrides
