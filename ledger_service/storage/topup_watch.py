"""Auto top-up's consumer of ledger changes: a policy's crossing, in the transaction of the change.

Called by `alert_watch.watch_changes` (so by every `Effects.flush`) for each live policy of an account
the batch changed in the policy's unit. The account's lock (held by the batch) serialises it; the
crossing and its top-up row (primary key: the crossing's topup_id) commit with the change or not at all.
A CAPPED crossing also writes a `topup.capped` event to the outbox.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from ledger_service.domain.topups import IN_FLIGHT, TopUpPolicy, TopUpStatus, on_change, topup_id
from service_runtime.amounts import format_minor

NOTIFY_TOPUPS = "credits_topups"
RECENT = """
SELECT coalesce(sum(amount) FILTER (WHERE created_at > $4 AND status NOT IN ('DECLINED', 'CAPPED')), 0)::bigint AS day,
       coalesce(sum(amount) FILTER (WHERE status NOT IN ('DECLINED', 'CAPPED')), 0)::bigint AS month,
       count(*) FILTER (WHERE status = ANY($6::text[])) AS in_flight
FROM topups WHERE tenant_id = $1 AND account_id = $2 AND unit = $3 AND created_at > $5
"""
UPDATE_STATE = """
UPDATE topup_policies SET firing = $4, crossings = $5
WHERE tenant_id = $1 AND account_id = $2 AND unit = $3
"""
INSERT_TOPUP = """
INSERT INTO topups (tenant_id, topup_id, account_id, unit, crossing, amount, status, payment_method, cost_basis,
                    next_attempt_at, last_error, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $10) ON CONFLICT DO NOTHING
"""
INSERT_EVENT = """
WITH events AS (
  INSERT INTO alert_events (tenant_id, event_id, event_type, rule_id, account_id, subject, crossing, payload,
                            occurred_at)
  VALUES ($1, $2, $3, '', $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, event_id) DO NOTHING
  RETURNING event_id, event_type
)
INSERT INTO webhook_deliveries (tenant_id, event_id, endpoint_id, event_type, status, next_attempt_at, created_at)
SELECT $1, e.event_id, p.endpoint_id, e.event_type, 'PENDING', $8, $8
FROM events e JOIN webhook_endpoints p
  ON p.tenant_id = $1 AND (cardinality(p.event_types) = 0 OR e.event_type = ANY(p.event_types))
ON CONFLICT DO NOTHING
"""


def policy_from_row(r: dict[str, Any] | asyncpg.Record) -> TopUpPolicy:
    disabled = r["disabled_at"]
    return TopUpPolicy(
        account_id=r["account_id"], unit=r["unit"], scale=r["scale"], threshold=r["threshold"], amount=r["amount"],
        target=r["target"], cost_basis=Decimal(str(r["cost_basis"])), payment_method=r["payment_method"],
        max_daily=r["max_daily"], max_monthly=r["max_monthly"], failure_limit=r["failure_limit"],
        firing=r["firing"], crossings=r["crossings"], consecutive_failures=r["consecutive_failures"],
        disabled_at=datetime.fromisoformat(disabled) if isinstance(disabled, str) else disabled,
        disabled_reason=r["disabled_reason"],
    )


async def emit_event(conn: asyncpg.Connection, tenant_id: str, event_id: str, event_type: str, account_id: str,
                     subject: str, crossing: int, data: dict[str, Any], now: datetime) -> None:
    """An event not made by an alert rule (top-ups), with its webhook deliveries, in the caller's transaction."""
    body = {"id": event_id, "type": event_type, "created_at": now.isoformat(), "tenant_id": tenant_id,
            "account_id": account_id, "rule_id": "", "subject": subject, "crossing": crossing, "data": data}
    await conn.execute(INSERT_EVENT, tenant_id, event_id, event_type, account_id, subject, crossing,
                       json.dumps(body, separators=(",", ":"), sort_keys=True), now)
    await conn.execute("SELECT pg_notify('credits_webhooks', '')")


async def watch_topup(conn: asyncpg.Connection, tenant_id: str, now: datetime, row: dict[str, Any],
                      available: int) -> None:
    """Advances one policy after a change; writes the crossing's top-up (or its CAPPED record)."""
    policy = policy_from_row(row)
    was = (policy.firing, policy.crossings)
    recent = None
    if available < policy.threshold and not policy.firing:  # only a crossing needs the history
        recent = await conn.fetchrow(RECENT, tenant_id, policy.account_id, policy.unit, now - timedelta(days=1),
                                     now - timedelta(days=30), [s.value for s in IN_FLIGHT])
    crossing = on_change(policy, available, recent["day"] if recent else 0, recent["month"] if recent else 0,
                         bool(recent and recent["in_flight"]))
    if (policy.firing, policy.crossings) != was:
        await conn.execute(UPDATE_STATE, tenant_id, policy.account_id, policy.unit, policy.firing, policy.crossings)
    if crossing is None:
        return
    tid = topup_id(policy.account_id, policy.unit, crossing.crossing)
    await conn.execute(INSERT_TOPUP, tenant_id, tid, policy.account_id, policy.unit, crossing.crossing,
                       crossing.amount, crossing.status.value, policy.payment_method, policy.cost_basis, now,
                       crossing.reason)
    if crossing.status is TopUpStatus.CAPPED:
        await emit_event(conn, tenant_id, tid + "/capped", "topup.capped", policy.account_id, tid, crossing.crossing,
                         {"reason": crossing.reason, "amount": format_minor(crossing.amount, policy.scale),
                          "available": format_minor(available, policy.scale)}, now)
    else:
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_TOPUPS)
