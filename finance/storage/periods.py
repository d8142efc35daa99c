"""Period close: closing a period locks everything before its end; later entries post in the first open one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from finance.domain.periods import Period
from finance.storage.projector import lock_cursor, project
from service_runtime.rejections import precondition

UNPROJECTED = "SELECT count(*) FROM journal WHERE tenant_id = $1 AND entry_id > $2"
RECORD_CLOSE = """
INSERT INTO finance_period_closes (tenant_id, period_start, period_end, closed_by) VALUES ($1, $2, $3, $4)
"""
MOVE_CLOSE = "UPDATE finance_cursors SET closed_through = $2, updated_at = now() WHERE tenant_id = $1"


@dataclass(frozen=True, slots=True)
class Closed:
    period: Period
    closed_through: datetime
    already_closed: bool


async def close_period(pool: asyncpg.Pool, tenant_id: str, period: Period, actor: str, now: datetime) -> Closed:
    """Closes `period` (and everything before it). Refused while the period has not ended, or while
    the ledger has entries the books have not projected yet (they could belong to it). Closing a
    closed period again answers as before and changes nothing."""
    if period.end > now:
        raise precondition("period", f"{period.name} has not ended yet (it ends {period.end.isoformat()})")
    await project(pool, tenant_id)
    async with pool.acquire() as conn, conn.transaction():
        cursor = await lock_cursor(conn, tenant_id)
        if cursor.closed_through is not None and cursor.closed_through >= period.end:
            return Closed(period, cursor.closed_through, True)
        behind = await conn.fetchval(UNPROJECTED, tenant_id, cursor.entry_id)
        if behind:
            raise precondition("period", f"{behind} ledger entries are not projected into the books yet; "
                                         "retry when they are (a transaction still running holds them back)")
        await conn.execute(RECORD_CLOSE, tenant_id, cursor.closed_through or period.start, period.end, actor)
        await conn.execute(MOVE_CLOSE, tenant_id, period.end)
        return Closed(period, period.end, False)
