"""What the sweeps find across a tenant's accounts: accounts with lots due to expire, holds past their TTL."""

from __future__ import annotations

from datetime import datetime

import asyncpg

SELECT_DUE_ACCOUNTS = """
SELECT DISTINCT b.account_id FROM lot_balances b JOIN lots l ON l.tenant_id = b.tenant_id AND l.lot_id = b.lot_id
WHERE b.tenant_id = $1 AND b.available > 0 AND l.expires_at IS NOT NULL
  AND COALESCE(GREATEST(l.expires_at, (SELECT max(g.usable_until) FROM lot_grace g
                                       WHERE g.tenant_id = l.tenant_id AND g.lot_id = l.lot_id)), l.expires_at) <= $2
"""
SELECT_TTL_HOLDS = """
SELECT h.account_id, h.hold_key FROM holds h
LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
WHERE h.tenant_id = $1 AND r.hold_key IS NULL AND h.release_on_ttl AND h.ttl_expires_at <= $2
"""


async def accounts_with_lots_due(pool: asyncpg.Pool, tenant_id: str, as_of: datetime) -> list[str]:
    """Accounts holding available credit on a lot whose usable window ended by `as_of`."""
    return [r["account_id"] for r in await pool.fetch(SELECT_DUE_ACCOUNTS, tenant_id, as_of)]


async def holds_past_ttl(pool: asyncpg.Pool, tenant_id: str, as_of: datetime) -> dict[str, list[str]]:
    """Unresolved real-time holds whose TTL passed by `as_of`: hold keys by account."""
    by_account: dict[str, list[str]] = {}
    for r in await pool.fetch(SELECT_TTL_HOLDS, tenant_id, as_of):
        by_account.setdefault(r["account_id"], []).append(r["hold_key"])
    return by_account
