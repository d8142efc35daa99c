"""One meter, one subscription at a time (domain rule and invariant: domain/lifecycle.py, `double_pricing`).

Called inside the transaction of CreateSubscription, UpdateSubscription and MigrateSubscription after
the write, with the customer row locked FOR UPDATE (so two changes of one customer never check
concurrently): a change that makes the subscription price a meter another subscription of the
customer prices at the same instant is FAILED_PRECONDITION naming the meter and the other
subscription, and the transaction (the write included) rolls back.
"""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from invoice_service.domain.catalog import Plan
from invoice_service.domain.invoices import ChargeKind
from invoice_service.domain.lifecycle import PricedSpan, Schedule, priced_spans
from invoice_service.domain.lifecycle import double_pricing as _double_pricing
from invoice_service.domain.periods import INTERVAL_MONTHS
from service_runtime.rejections import precondition

LOCK_CUSTOMER = "SELECT customer_id FROM customers WHERE tenant_id = $1 AND customer_id = $2 FOR UPDATE"
SELECT_CUSTOMER_PHASES = """
SELECT s.subscription_id, s.anchor, s.trial_end, s.calendar_aligned, s.ends_at, p.billing_interval,
       ph.effective_at, v.terms
FROM subscriptions s
JOIN plans p ON p.tenant_id = s.tenant_id AND p.plan_id = s.plan_id
JOIN subscription_phases ph ON ph.tenant_id = s.tenant_id AND ph.subscription_id = s.subscription_id
JOIN plan_versions v ON v.tenant_id = ph.tenant_id AND v.plan_id = ph.plan_id AND v.version = ph.plan_version
WHERE s.tenant_id = $1 AND s.customer_id = $2
ORDER BY s.subscription_id, ph.effective_at
"""


async def customer_spans(conn: asyncpg.Connection, tenant: str, customer_id: str) -> list[PricedSpan]:
    """Where each subscription of the customer prices each meter."""
    rows = await conn.fetch(SELECT_CUSTOMER_PHASES, tenant, customer_id)
    by_sub: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_sub.setdefault(r["subscription_id"], []).append(r)
    spans: list[PricedSpan] = []
    for sub_id, phase_rows in by_sub.items():
        phases = [(r["effective_at"], frozenset(c.code for c in Plan.components_from_json(json.loads(r["terms"]))
                                                if c.kind is ChargeKind.USAGE)) for r in phase_rows]
        r = phase_rows[0]
        schedule = Schedule(r["anchor"], INTERVAL_MONTHS[r["billing_interval"]], r["trial_end"],
                            r["calendar_aligned"], r["ends_at"])
        spans += priced_spans(sub_id, schedule, phases)
    return spans


def conflicts(spans: list[PricedSpan], subscription_id: str) -> list[tuple[str, str, datetime]]:
    """(meter, other subscription, first shared instant) the subscription shares with the others."""
    mine = [s for s in spans if s.subscription_id == subscription_id]
    return _double_pricing(mine, [s for s in spans if s.subscription_id != subscription_id])


async def shared_meters(conn: asyncpg.Connection, tenant: str, customer_id: str,
                        subscription_id: str) -> set[tuple[str, str]]:
    """(meter, other subscription) pairs the subscription shares now (before a change)."""
    found = conflicts(await customer_spans(conn, tenant, customer_id), subscription_id)
    return {(m, other) for m, other, _ in found}


async def refuse_double_pricing(conn: asyncpg.Connection, tenant: str, customer_id: str, subscription_id: str,
                                before: set[tuple[str, str]], field: str) -> None:
    """FAILED_PRECONDITION `field` if, after this transaction's write, the subscription prices a meter
    that another subscription of the customer prices at the same instant, where it did not `before`
    (an overlap written before this rule existed does not block unrelated changes)."""
    new = [c for c in conflicts(await customer_spans(conn, tenant, customer_id), subscription_id)
           if c[:2] not in before]
    if new:
        meter, other, at = new[0]
        raise precondition(field, f"subscription {other!r} of customer {customer_id!r} already prices meter "
                                  f"{meter!r} from {at.isoformat()}: usage events belong to the customer, so "
                                  f"both would bill them (end or change {other!r} first)")
