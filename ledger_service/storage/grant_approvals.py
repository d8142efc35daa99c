"""Support grant limits, grant requests and their decisions: rows, and the gate serialising them.

The rules (who may grant what, the limits, the two-person rule, one decision per request) are in
`ledger_service.domain.grants`; the operations in `ledger_service.operations.grants`. Here:
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
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ledger_service.domain.grants import GrantRequestStatus, LimitExceeded, Limits
from ledger_service.domain.model import Lot
from service_runtime.rejections import not_found

MAX_CONCURRENT = 4


def approval_key(request_id: str) -> str:
    """The AccountWriter idempotency key of an approval's lot: check_key refuses a tab from clients."""
    return f"grant-request\t{request_id}"


def request_digest(row: GrantRequestRow) -> bytes:
    """The request hash of an approval's lot write: the stored grant request's bytes."""
    return hashlib.sha256(row.request).digest()


# --- limits ------------------------------------------------------------------------------------

SELECT_LIMITS = """
SELECT max_per_grant, max_per_day, approval_threshold FROM support_grant_limits WHERE tenant_id = $1 AND unit = $2
"""
UPSERT_LIMITS = """
INSERT INTO support_grant_limits (tenant_id, unit, max_per_grant, max_per_day, approval_threshold, updated_by,
                                  updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, unit) DO UPDATE SET max_per_grant = EXCLUDED.max_per_grant,
    max_per_day = EXCLUDED.max_per_day, approval_threshold = EXCLUDED.approval_threshold,
    updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
"""
GRANTED_SINCE = """
SELECT COALESCE(sum(amount), 0) FROM lots
WHERE tenant_id = $1 AND granted_by = $2 AND unit = $3 AND lot_type = 'COMPENSATORY' AND created_at > $4
"""


async def limits_for(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, unit: str) -> Limits | None:
    """The tenant's limits of `unit`, None if it set none (the environment's defaults apply)."""
    row = await conn.fetchrow(SELECT_LIMITS, tenant_id, unit)
    if row is None:
        return None
    return Limits(row["max_per_grant"], row["max_per_day"], False, row["approval_threshold"])


async def set_limits(conn: asyncpg.Connection, tenant_id: str, unit: str, limits: Limits, actor: str,
                     now: datetime) -> Limits:
    await conn.execute(UPSERT_LIMITS, tenant_id, unit, limits.max_per_grant, limits.max_per_day,
                       limits.approval_threshold, actor, now)
    return Limits(limits.max_per_grant, limits.max_per_day, False, limits.approval_threshold)


async def granted_since(conn: asyncpg.Connection, tenant_id: str, actor: str, unit: str, since: datetime) -> int:
    """The COMPENSATORY credit the key `actor` granted directly in `unit` since `since` (minor units)."""
    return int(await conn.fetchval(GRANTED_SINCE, tenant_id, actor, unit, since))


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
    limit_exceeded: LimitExceeded
    request: bytes
    created_at: datetime
    status: GrantRequestStatus = GrantRequestStatus.PENDING_APPROVAL
    decided_by: str = ""
    reason: str = ""
    lot_id: str = ""
    decided_at: datetime | None = None
    requested_by_owner: str = ""  # principals (owner or key:<id>); "" on rows made before owners
    decided_by_owner: str = ""

    @property
    def requester(self) -> str:
        """Who asked, for the two-person rule (a row made before owners: its key)."""
        return self.requested_by_owner or f"key:{self.requested_by}"


INSERT_REQUEST = """
INSERT INTO grant_requests (tenant_id, request_id, idempotency_key, account_id, unit, amount, lot_type, reason_code,
                            incident_id, requested_by, limit_exceeded, request, created_at, requested_by_owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
RETURNING seq
"""
_SELECT = """
SELECT r.request_id, r.seq, r.account_id, r.unit, r.amount, r.requested_by, r.limit_exceeded, r.request,
       r.created_at, COALESCE(d.status, 'PENDING_APPROVAL') AS status, COALESCE(d.decided_by, '') AS decided_by,
       COALESCE(d.reason, '') AS reason, COALESCE(d.lot_id, '') AS lot_id, d.decided_at, r.requested_by_owner,
       COALESCE(d.decided_by_owner, '') AS decided_by_owner
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
INSERT INTO grant_request_decisions (tenant_id, request_id, status, decided_by, reason, lot_id, decided_at,
                                     decided_by_owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


def _row(r: asyncpg.Record) -> GrantRequestRow:
    return GrantRequestRow(
        request_id=r["request_id"], seq=r["seq"], account_id=r["account_id"], unit=r["unit"], amount=r["amount"],
        requested_by=r["requested_by"], limit_exceeded=LimitExceeded(r["limit_exceeded"]),
        request=bytes(r["request"]), created_at=r["created_at"], status=GrantRequestStatus(r["status"]),
        decided_by=r["decided_by"], reason=r["reason"],
        lot_id=r["lot_id"], decided_at=r["decided_at"], requested_by_owner=r["requested_by_owner"],
        decided_by_owner=r["decided_by_owner"],
    )


async def insert_request(conn: asyncpg.Connection, tenant_id: str, request_id: str, idempotency_key: str, lot: Lot,
                         requested_by: str, limit: LimitExceeded, request: bytes, now: datetime,
                         requested_by_owner: str) -> GrantRequestRow:
    """A new request; `requested_by` is the asking key, `requested_by_owner` the principal behind it."""
    seq = await conn.fetchval(INSERT_REQUEST, tenant_id, request_id, idempotency_key, lot.account_id, lot.unit,
                              lot.amount, lot.lot_type.value, lot.reason_code, lot.incident_id, requested_by,
                              limit.value, request, now, requested_by_owner)
    return GrantRequestRow(request_id, seq, lot.account_id, lot.unit, lot.amount, requested_by, limit, request, now,
                           requested_by_owner=requested_by_owner)


async def get_request(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, request_id: str) -> GrantRequestRow:
    row = await conn.fetchrow(SELECT_REQUEST, tenant_id, request_id)
    if row is None:
        raise not_found("request_id", f"grant request {request_id!r} not found")
    return _row(row)


async def list_requests(pool: asyncpg.Pool, tenant_id: str, status: GrantRequestStatus | None, account_id: str,
                        after: int, limit: int) -> list[GrantRequestRow]:
    wanted = status.value if status is not None else ""
    return [_row(r) for r in await pool.fetch(LIST_REQUESTS, tenant_id, after, account_id, wanted, limit)]


async def record_decision(conn: asyncpg.Connection, tenant_id: str, row: GrantRequestRow,
                          status: GrantRequestStatus, decided_by: str, reason: str, lot_id: str | None,
                          now: datetime, decided_by_owner: str) -> GrantRequestRow:
    """Writes the one decision of a pending request (the caller holds its lock and checked it is pending)."""
    await conn.execute(INSERT_DECISION, tenant_id, row.request_id, status.value, decided_by, reason, lot_id, now,
                       decided_by_owner)
    row.status, row.decided_by, row.reason, row.decided_at = status, decided_by, reason, now
    row.decided_by_owner = decided_by_owner
    row.lot_id = lot_id or ""
    return row


async def approval_started(conn: asyncpg.Connection, tenant_id: str, request_id: str) -> bool:
    """True if an approval already wrote its lot (a crash may have kept it from recording the decision)."""
    return bool(await conn.fetchval("SELECT 1 FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
                                    tenant_id, approval_key(request_id)))
