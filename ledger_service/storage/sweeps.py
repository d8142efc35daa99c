"""What the sweeps find across a tenant's accounts: accounts with settled lots due to expire, holds past their TTL;
and the per-account settlement pointer they read (RecordSettlement / GetSettlement)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

# Due: available credit on a lot whose usable window ended by $2 and which has settled (the account
# is not billed by invoices, or its invoiced_through reached the window's end).
SELECT_DUE_ACCOUNTS = """
SELECT DISTINCT b.account_id
FROM lot_balances b JOIN lots l ON l.tenant_id = b.tenant_id AND l.lot_id = b.lot_id
CROSS JOIN LATERAL (SELECT COALESCE(GREATEST(l.expires_at, (SELECT max(g.usable_until) FROM lot_grace g
                                   WHERE g.tenant_id = l.tenant_id AND g.lot_id = l.lot_id)), l.expires_at) AS until) w
LEFT JOIN account_settlements s ON s.tenant_id = b.tenant_id AND s.account_id = b.account_id
WHERE b.tenant_id = $1 AND b.available > 0 AND l.expires_at IS NOT NULL AND w.until <= $2
  AND (s.invoiced_through IS NULL OR w.until <= s.invoiced_through)
"""
SELECT_TTL_HOLDS = """
SELECT h.account_id, h.hold_key FROM holds h
LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
WHERE h.tenant_id = $1 AND r.hold_key IS NULL AND h.release_on_ttl AND h.ttl_expires_at <= $2
"""


async def accounts_with_lots_due(pool: asyncpg.Pool, tenant_id: str, as_of: datetime) -> list[str]:
    """Accounts holding available credit on a settled lot whose usable window ended by `as_of`."""
    return [r["account_id"] for r in await pool.fetch(SELECT_DUE_ACCOUNTS, tenant_id, as_of)]


async def holds_past_ttl(pool: asyncpg.Pool, tenant_id: str, as_of: datetime) -> dict[str, list[str]]:
    """Unresolved real-time holds whose TTL passed by `as_of`: hold keys by account."""
    by_account: dict[str, list[str]] = {}
    for r in await pool.fetch(SELECT_TTL_HOLDS, tenant_id, as_of):
        by_account.setdefault(r["account_id"], []).append(r["hold_key"])
    return by_account


UPSERT_SETTLEMENT = """
INSERT INTO account_settlements AS s (tenant_id, account_id, invoiced_through, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, account_id) DO UPDATE
SET invoiced_through = GREATEST(s.invoiced_through, EXCLUDED.invoiced_through),
    updated_at = CASE WHEN EXCLUDED.invoiced_through > s.invoiced_through THEN EXCLUDED.updated_at
                      ELSE s.updated_at END
RETURNING invoiced_through
"""
SELECT_SETTLEMENT = "SELECT invoiced_through FROM account_settlements WHERE tenant_id = $1 AND account_id = $2"


async def record_settlement(conn: asyncpg.Connection, tenant_id: str, account_id: str, invoiced_through: datetime,
                            now: datetime) -> datetime:
    """Moves the account's invoiced_through forward (never back); returns the recorded instant."""
    recorded: datetime = await conn.fetchval(UPSERT_SETTLEMENT, tenant_id, account_id, invoiced_through, now)
    return recorded


async def settlement_of(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, account_id: str) -> datetime | None:
    """The account's recorded invoiced_through (None: not billed by invoices)."""
    found: datetime | None = await conn.fetchval(SELECT_SETTLEMENT, tenant_id, account_id)
    return found
