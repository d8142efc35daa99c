"""Support grant limits, grant requests awaiting approval, and the two-person rule.

The role model and the rules in prose are at the top of `service_runtime/permissions.py`. Here:
- `role_rules`: what a support or operator key may grant at all (COMPENSATORY, reason, incident).
- `SupportGate`: serialises one support key's grants (an in-process lock, then a Postgres
  advisory lock per tenant + key held in a transaction) so that the per-day sum it reads and the
  lot the AccountWriter then commits cannot interleave with another grant by the same key, in
  this process or another. The lock is released only after the lot's transaction committed.
  Holding it takes a pool connection while the writer takes another, so at most
  `MAX_CONCURRENT` gates are open per process (well under the pool size): no pool starvation.
- grant requests: immutable rows plus at most one decision row each (APPROVED with its lot, or
  REJECTED). An approval creates its lot through the AccountWriter under an idempotency key no
  client can send (it contains a tab), so an approval repeated after a crash finds the same lot.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ledger_service.domain.model import Lot, LotType
from service_runtime.amounts import parse_minor
from service_runtime.api_keys import Caller
from service_runtime.rejections import Reason, Rejection, invalid, not_found, precondition

DAY = timedelta(hours=24)
MAX_CONCURRENT = 4
DEFAULT_MAX_GRANT = "100"
DEFAULT_MAX_DAILY = "500"
PENDING, APPROVED, REJECTED = "PENDING_APPROVAL", "APPROVED", "REJECTED"
PER_GRANT, PER_DAY = "max_per_grant", "max_per_day"


def approval_key(request_id: str) -> str:
    """The AccountWriter idempotency key of an approval's lot: check_key refuses a tab from clients."""
    return f"grant-request\t{request_id}"


# --- who may grant what ------------------------------------------------------------------------

def role_rules(caller: Caller, lot: Lot) -> None:
    """Request-dependent limits of the support and operator roles (finance and admin: none)."""
    if caller.role == "support":
        if lot.lot_type is not LotType.COMPENSATORY:
            raise Rejection(Reason.FORBIDDEN, "support keys may grant only COMPENSATORY credits", "type")
        if not lot.reason_code:
            raise invalid("reason_code", "is required for support grants")
        if not lot.incident_id:
            raise invalid("incident_id", "is required for support grants")
        if lot.cost_basis:
            raise invalid("cost_basis", "must be 0 for support grants (compensatory credit is free)")
    elif caller.role == "operator":
        if lot.lot_type is not LotType.COMPENSATORY or not lot.incident_id:
            raise Rejection(Reason.FORBIDDEN,
                            "operator keys may grant only COMPENSATORY credits for an incident (outage compensation)",
                            "type")


def two_person_rule(requested_by: str, caller: Caller) -> None:
    if caller.key_id == requested_by:
        raise Rejection(Reason.FORBIDDEN, "two-person rule: a grant request must be decided by another key than "
                                          "the one that asked for it", "request_id")


# --- limits ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    max_per_grant: int  # minor units
    max_per_day: int
    is_default: bool


SELECT_LIMITS = "SELECT max_per_grant, max_per_day FROM support_grant_limits WHERE tenant_id = $1 AND unit = $2"
UPSERT_LIMITS = """
INSERT INTO support_grant_limits (tenant_id, unit, max_per_grant, max_per_day, updated_by, updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id, unit) DO UPDATE SET max_per_grant = EXCLUDED.max_per_grant,
    max_per_day = EXCLUDED.max_per_day, updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
"""
GRANTED_SINCE = """
SELECT COALESCE(sum(amount), 0) FROM lots
WHERE tenant_id = $1 AND granted_by = $2 AND unit = $3 AND lot_type = 'COMPENSATORY' AND created_at > $4
"""


def default_limits(scale: int) -> Limits:
    """CREDITS_SUPPORT_MAX_GRANT / CREDITS_SUPPORT_MAX_DAILY, in the unit's major units."""
    per_grant = os.environ.get("CREDITS_SUPPORT_MAX_GRANT", DEFAULT_MAX_GRANT)
    per_day = os.environ.get("CREDITS_SUPPORT_MAX_DAILY", DEFAULT_MAX_DAILY)
    return Limits(parse_minor(per_grant, scale, "CREDITS_SUPPORT_MAX_GRANT", allow_zero=True),
                  parse_minor(per_day, scale, "CREDITS_SUPPORT_MAX_DAILY", allow_zero=True), True)


async def limits_for(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, unit: str, scale: int) -> Limits:
    row = await conn.fetchrow(SELECT_LIMITS, tenant_id, unit)
    if row is None:
        return default_limits(scale)
    return Limits(row["max_per_grant"], row["max_per_day"], False)


async def set_limits(conn: asyncpg.Connection, tenant_id: str, unit: str, limits: Limits, actor: str,
                     now: datetime) -> Limits:
    await conn.execute(UPSERT_LIMITS, tenant_id, unit, limits.max_per_grant, limits.max_per_day, actor, now)
    return Limits(limits.max_per_grant, limits.max_per_day, False)


async def exceeded(conn: asyncpg.Connection, tenant_id: str, actor: str, lot: Lot, limits: Limits,
                   now: datetime) -> str:
    """The limit `lot` would break ("" if none): per grant, or this key's sum over the last 24 h."""
    if lot.amount > limits.max_per_grant:
        return PER_GRANT
    used = await conn.fetchval(GRANTED_SINCE, tenant_id, actor, lot.unit, now - DAY)
    if used + lot.amount > limits.max_per_day:
        return PER_DAY
    return ""


# --- serialisation -----------------------------------------------------------------------------

_ADVISORY = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


class SupportGate:
    """Per (tenant, key) serialisation of support grants and per-request serialisation of decisions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # name -> (lock, users)
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    @asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction holding the advisory lock `name` (released at its end)."""
        lock, users = self._locks.get(name) or (asyncio.Lock(), 0)
        self._locks[name] = (lock, users + 1)
        try:
            async with lock, self._slots, self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_ADVISORY, name)
                yield conn
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    def actor(self, tenant_id: str, key_id: str) -> str:
        return f"support-grant/{tenant_id}/{key_id}"

    def request(self, tenant_id: str, request_id: str) -> str:
        return f"grant-request/{tenant_id}/{request_id}"


# --- grant requests ----------------------------------------------------------------------------

@dataclass
class GrantRequestRow:
    request_id: str
    seq: int
    account_id: str
    unit: str
    amount: int
    requested_by: str
    limit_exceeded: str
    request: bytes
    created_at: datetime
    status: str = PENDING
    decided_by: str = ""
    reason: str = ""
    lot_id: str = ""
    decided_at: datetime | None = None


INSERT_REQUEST = """
INSERT INTO grant_requests (tenant_id, request_id, idempotency_key, account_id, unit, amount, lot_type, reason_code,
                            incident_id, requested_by, limit_exceeded, request, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
RETURNING seq
"""
_SELECT = """
SELECT r.request_id, r.seq, r.account_id, r.unit, r.amount, r.requested_by, r.limit_exceeded, r.request,
       r.created_at, COALESCE(d.status, 'PENDING_APPROVAL') AS status, COALESCE(d.decided_by, '') AS decided_by,
       COALESCE(d.reason, '') AS reason, COALESCE(d.lot_id, '') AS lot_id, d.decided_at
FROM grant_requests r
LEFT JOIN grant_request_decisions d ON d.tenant_id = r.tenant_id AND d.request_id = r.request_id
"""
SELECT_REQUEST = _SELECT + "WHERE r.tenant_id = $1 AND r.request_id = $2"
LIST_REQUESTS = _SELECT + """
WHERE r.tenant_id = $1 AND r.seq > $2 AND ($3 = '' OR r.account_id = $3)
  AND ($4 = '' OR COALESCE(d.status, 'PENDING_APPROVAL') = $4)
ORDER BY r.seq LIMIT $5
"""
INSERT_DECISION = """
INSERT INTO grant_request_decisions (tenant_id, request_id, status, decided_by, reason, lot_id, decided_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


def _row(r: asyncpg.Record) -> GrantRequestRow:
    return GrantRequestRow(
        request_id=r["request_id"], seq=r["seq"], account_id=r["account_id"], unit=r["unit"], amount=r["amount"],
        requested_by=r["requested_by"], limit_exceeded=r["limit_exceeded"], request=bytes(r["request"]),
        created_at=r["created_at"], status=r["status"], decided_by=r["decided_by"], reason=r["reason"],
        lot_id=r["lot_id"], decided_at=r["decided_at"],
    )


async def insert_request(conn: asyncpg.Connection, tenant_id: str, request_id: str, idempotency_key: str, lot: Lot,
                         requested_by: str, limit: str, request: bytes, now: datetime) -> GrantRequestRow:
    seq = await conn.fetchval(INSERT_REQUEST, tenant_id, request_id, idempotency_key, lot.account_id, lot.unit,
                              lot.amount, lot.lot_type.value, lot.reason_code, lot.incident_id, requested_by, limit,
                              request, now)
    return GrantRequestRow(request_id, seq, lot.account_id, lot.unit, lot.amount, requested_by, limit, request, now)


async def get_request(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, request_id: str) -> GrantRequestRow:
    row = await conn.fetchrow(SELECT_REQUEST, tenant_id, request_id)
    if row is None:
        raise not_found("request_id", f"grant request {request_id!r} not found")
    return _row(row)


async def list_requests(pool: asyncpg.Pool, tenant_id: str, status: str, account_id: str, after: int,
                        limit: int) -> list[GrantRequestRow]:
    return [_row(r) for r in await pool.fetch(LIST_REQUESTS, tenant_id, after, account_id, status, limit)]


async def decide(conn: asyncpg.Connection, tenant_id: str, row: GrantRequestRow, status: str, caller: Caller,
                 reason: str, lot_id: str | None, now: datetime) -> GrantRequestRow:
    """Records the one decision of a PENDING request (the caller holds its lock)."""
    if row.status != PENDING:
        raise precondition("request_id", f"grant request {row.request_id!r} is {row.status}")
    await conn.execute(INSERT_DECISION, tenant_id, row.request_id, status, caller.key_id, reason, lot_id, now)
    row.status, row.decided_by, row.reason, row.decided_at = status, caller.key_id, reason, now
    row.lot_id = lot_id or ""
    return row


async def approval_started(conn: asyncpg.Connection, tenant_id: str, request_id: str) -> bool:
    """True if an approval already wrote its lot (a crash may have kept it from recording the decision)."""
    return bool(await conn.fetchval("SELECT 1 FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
                                    tenant_id, approval_key(request_id)))
