"""Revoked customer portal links (migration 0017): recorded once, looked up on every portal call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from service_runtime.portal_sessions import PortalSession

INSERT_REVOCATION = """
INSERT INTO portal_link_revocations (tenant_id, session_id, customer_id, account_id, expires_at, reason, revoked_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, session_id) DO NOTHING
"""
SELECT_REVOCATION = """
SELECT session_id, customer_id, account_id, expires_at, reason, revoked_by, revoked_at
FROM portal_link_revocations WHERE tenant_id = $1 AND session_id = $2
"""
IS_REVOKED = "SELECT EXISTS (SELECT 1 FROM portal_link_revocations WHERE tenant_id = $1 AND session_id = $2)"


@dataclass(frozen=True, slots=True)
class Revocation:
    session_id: str
    customer_id: str
    account_id: str
    expires_at: datetime
    reason: str
    revoked_by: str
    revoked_at: datetime


async def revoke(conn: asyncpg.Connection, session: PortalSession, reason: str, revoked_by: str) -> Revocation:
    """Records the revocation (a second one of the same link keeps the first) and returns it."""
    await conn.execute(INSERT_REVOCATION, session.tenant_id, session.session_id, session.customer_id,
                       session.account_id, datetime.fromtimestamp(session.expires_at, UTC), reason, revoked_by)
    row = await conn.fetchrow(SELECT_REVOCATION, session.tenant_id, session.session_id)
    return Revocation(**dict(row))


async def is_revoked(pool: asyncpg.Pool, session: PortalSession) -> bool:
    """Whether the session's link was revoked. Asked before the call's tenant is set: the connection is
    scoped to the session's own tenant (row security) for this one read."""
    async with pool.acquire() as conn:
        scope = getattr(conn, "scope_to", None)
        if scope is not None:
            await scope(session.tenant_id)
        return bool(await conn.fetchval(IS_REVOKED, session.tenant_id, session.session_id))
