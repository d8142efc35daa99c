"""Past balances at scale, a phase of `creditctl bench ledger`: `GetBalance(as_of)` one day back on an
account with 1,000,000 journal entries while other tenants hold another 1,000,000, and the same on
an account with 10,000 (issue #20: the two within 2x of each other, the big one <= 20 ms at p99).

The history is written with bulk SQL (INSERT ... SELECT generate_series), not through the API, so
setting up two million entries takes seconds. The rows are what the ledger itself writes: per
account one PURCHASED lot, its GRANT, then DEBIT entries of 1 spread evenly over `span` up to now,
the projection row that replays them (with its entry count), and the lot's balance checkpoints
every CHECKPOINT_EVERY entries (when the schema has them) exactly where the ledger's flush would
have written them — VerifyJournal passes on the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

UNIT = "token"
GRANT = 10**15
INSERT_ACCOUNT = """
INSERT INTO accounts (tenant_id, account_id, root_account_id, name) VALUES ($1, $2, $2, 'as-of bench')
"""
INSERT_LOT = """
INSERT INTO lots (tenant_id, lot_id, account_id, lot_type, unit, amount, priority, effective_at, created_at)
VALUES ($1, $3, $2, 'PURCHASED', $4, $5, 50, $6, $6)
"""
# Entry 0 is the GRANT, entries 1..n-1 debit 1 each; evenly spaced from $6 by $7.
INSERT_ENTRIES = """
INSERT INTO journal (tenant_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor, reason)
SELECT $1, $2, $3, CASE WHEN i = 0 THEN 'GRANT' ELSE 'DEBIT' END, CASE WHEN i = 0 THEN $5::bigint ELSE 1 END, $4,
       $6::timestamptz + i * $7::interval, $6::timestamptz + i * $7::interval, 'bench', 'as-of bench history'
FROM generate_series(0, $8::bigint - 1) AS i ORDER BY i
"""
INSERT_BALANCE = """
INSERT INTO lot_balances (tenant_id, lot_id, account_id, granted, available, consumed{entries_col})
VALUES ($1, $3, $2, $4::bigint, $4::bigint - ($5::bigint - 1), $5::bigint - 1{entries_val})
"""
# Where the flush writes them: after the entry that takes the lot's count to a multiple of N.
INSERT_CHECKPOINTS = """
INSERT INTO lot_checkpoints (tenant_id, lot_id, account_id, through_entry_id, at, entries, granted, reinstated,
                             available, held, consumed, expired, voided, transferred_out)
SELECT $1, $3, $2, entry_id, recorded_at, n, $4::bigint, 0, $4::bigint - (n - 1), 0, n - 1, 0, 0, 0
FROM (SELECT entry_id, recorded_at, row_number() OVER (ORDER BY entry_id) AS n FROM journal
      WHERE tenant_id = $1 AND lot_id = $3) s
WHERE n % $5::bigint = 0
"""


@dataclass
class History:
    tenant_id: str
    account_id: str
    entries: int


def _checkpoint_every() -> int:
    """The ledger's checkpoint interval; 0 on a schema without checkpoints (a baseline run)."""
    try:
        from ledger_service.storage.effects import CHECKPOINT_EVERY
    except ImportError:
        return 0
    return int(CHECKPOINT_EVERY)


async def write_history(conn: asyncpg.Connection, h: History, now: datetime, span: timedelta) -> None:
    """One account's history, ending at `now` (as the database owner: row security does not apply)."""
    lot_id = f"lot-{h.account_id}"
    start = now - span
    step = span / max(h.entries, 1)
    has_counter = await conn.fetchval(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'lot_balances' AND column_name = 'entries'")
    every = _checkpoint_every() if await conn.fetchval("SELECT to_regclass('lot_checkpoints')") else 0
    async with conn.transaction():
        await conn.execute(INSERT_ACCOUNT, h.tenant_id, h.account_id)
        await conn.execute(INSERT_LOT, h.tenant_id, h.account_id, lot_id, UNIT, GRANT, start)
        await conn.execute(INSERT_ENTRIES, h.tenant_id, h.account_id, lot_id, UNIT, GRANT, start, step, h.entries)
        await conn.execute(INSERT_BALANCE.format(entries_col=", entries" if has_counter else "",
                                                 entries_val=", $5" if has_counter else ""),
                           h.tenant_id, h.account_id, lot_id, GRANT, h.entries)
        if every:
            await conn.execute(INSERT_CHECKPOINTS, h.tenant_id, h.account_id, lot_id, GRANT, every)


@dataclass
class AsOfResult:
    setup_s: float = 0.0
    p50_ms: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    plan: str = ""


async def seed(dsn: str, tenant_id: str, *, big: int, small: int, others: int, other_tenants: int,
               span: timedelta = timedelta(days=30)) -> tuple[dict[str, History], float]:
    """The measured accounts ("1m", "10k") in `tenant_id`, and `others` entries spread over
    `other_tenants` tenants. Returns the histories and the seconds the setup took."""
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    measured = {"1m": History(tenant_id, "as-of-1m", big), "10k": History(tenant_id, "as-of-10k", small)}
    conn = await asyncpg.connect(dsn)
    try:
        for h in measured.values():
            await write_history(conn, h, now, span)
        per = max(others // max(other_tenants, 1), 1)
        for t in range(other_tenants):
            await write_history(conn, History(f"as-of-other-{t}", "busy-account", per), now, span)
        await conn.execute("ANALYZE journal; ANALYZE lot_checkpoints" if _checkpoint_every() else "ANALYZE journal")
    finally:
        await conn.close()
    return measured, time.perf_counter() - t0


async def measure(channel: grpc.aio.Channel, md: tuple[tuple[str, str], ...], histories: dict[str, History],
                  *, calls: int = 200, back: timedelta = timedelta(days=1)) -> AsOfResult:
    """`calls` sequential GetBalance(as_of = now - back) per account, after 10 not counted."""
    get_balance = channel.unary_unary("/credits.ledger.v1.LedgerService/GetBalance",
                                      request_serializer=pb.GetBalanceRequest.SerializeToString,
                                      response_deserializer=pb.Balance.FromString)
    out = AsOfResult()
    for name, h in histories.items():
        stamp = Timestamp()
        stamp.FromDatetime(datetime.now(UTC) - back)
        request = pb.GetBalanceRequest(account_id=h.account_id, as_of=stamp)
        latencies = []
        for i in range(calls + 10):
            t0 = time.perf_counter()
            reply: Any = await get_balance(request, metadata=md)
            if i >= 10:
                latencies.append((time.perf_counter() - t0) * 1000.0)
        if not reply.totals or int(reply.totals[0].consumed) <= 0:
            raise RuntimeError(f"as-of balance of {h.account_id} shows nothing consumed: {reply}")
        latencies.sort()
        out.p50_ms[name] = latencies[len(latencies) // 2]
        out.p99_ms[name] = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return out
