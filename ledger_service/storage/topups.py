"""Top-up policies and the top-up history: SQL in, records out (the crossing is storage/topup_watch.py,
the saga's steps ledger_service/topups/steps.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ledger_service.domain.topups import TopUpPolicy, TopUpStatus
from ledger_service.storage.topup_watch import policy_from_row
from service_runtime.rejections import not_found

# Replacing a policy keeps its crossing count (top-up ids stay unique) and its state; re-enables it.
UPSERT_POLICY = """
INSERT INTO topup_policies (tenant_id, account_id, unit, scale, threshold, amount, target, cost_basis, payment_method,
                            max_daily, max_monthly, failure_limit, disabled_at, disabled_reason, updated_by, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (tenant_id, account_id, unit) DO UPDATE SET
  scale = EXCLUDED.scale, threshold = EXCLUDED.threshold, amount = EXCLUDED.amount, target = EXCLUDED.target,
  cost_basis = EXCLUDED.cost_basis, payment_method = EXCLUDED.payment_method, max_daily = EXCLUDED.max_daily,
  max_monthly = EXCLUDED.max_monthly, failure_limit = EXCLUDED.failure_limit, consecutive_failures = 0,
  disabled_at = EXCLUDED.disabled_at, disabled_reason = EXCLUDED.disabled_reason,
  updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
RETURNING *
"""
SELECT_POLICY = "SELECT * FROM topup_policies WHERE tenant_id = $1 AND account_id = $2 AND unit = $3"
SELECT_TOPUPS = """
SELECT topup_id, account_id, unit, crossing, amount, status, charge_id, lot_id, attempts, last_error, created_at,
       updated_at,
       (SELECT scale FROM topup_policies p WHERE p.tenant_id = t.tenant_id AND p.account_id = t.account_id
          AND p.unit = t.unit) AS scale
FROM topups t WHERE tenant_id = $1 AND account_id = $2 AND (created_at, topup_id) > ($3, $4)
ORDER BY created_at, topup_id LIMIT $5
"""


@dataclass
class TopUpRecord:
    topup_id: str
    account_id: str
    unit: str
    crossing: int
    amount: int
    status: TopUpStatus
    charge_id: str
    lot_id: str
    attempts: int
    last_error: str
    created_at: datetime
    updated_at: datetime
    scale: int


async def set_policy(conn: asyncpg.Connection, tenant_id: str, p: TopUpPolicy, enabled: bool, actor: str,
                     now: datetime) -> TopUpPolicy:
    row = await conn.fetchrow(UPSERT_POLICY, tenant_id, p.account_id, p.unit, p.scale, p.threshold, p.amount, p.target,
                              p.cost_basis, p.payment_method, p.max_daily, p.max_monthly, p.failure_limit,
                              None if enabled else now, "" if enabled else f"disabled by {actor}", actor, now)
    return policy_from_row(row)


async def get_policy(pool: asyncpg.Pool, tenant_id: str, account_id: str, unit: str) -> TopUpPolicy:
    row = await pool.fetchrow(SELECT_POLICY, tenant_id, account_id, unit)
    if row is None:
        raise not_found("account_id", f"no top-up policy for account {account_id!r} in {unit}")
    return policy_from_row(row)


async def list_topups(pool: asyncpg.Pool, tenant_id: str, account_id: str, after: tuple[datetime, str],
                      limit: int) -> list[TopUpRecord]:
    rows = await pool.fetch(SELECT_TOPUPS, tenant_id, account_id, after[0], after[1], limit)
    return [TopUpRecord(**{**dict(r), "status": TopUpStatus(r["status"]), "scale": r["scale"] or 0}) for r in rows]
