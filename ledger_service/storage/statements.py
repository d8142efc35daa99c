"""SQL of statements and exports: per-lot sums of the journal, the projection, keyset pages of
entries and the charges behind consumption. Callers run them in one REPEATABLE READ transaction,
so every figure of a statement comes from the same snapshot."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg

from ledger_service.domain.journal import Entry, EntryKind
from ledger_service.domain.model import LotType
from ledger_service.domain.statements import LotInfo
from service_runtime.rejections import invalid, not_found

SELECT_UNITS = """
SELECT (SELECT count(*) FROM accounts WHERE tenant_id = $1 AND account_id = $2) AS found,
       ARRAY(SELECT DISTINCT unit FROM lots WHERE tenant_id = $1 AND account_id = $2 ORDER BY unit) AS units
"""
SELECT_LOTS = """
SELECT l.lot_id, l.lot_type,
       GREATEST(l.expires_at, (SELECT max(g.usable_until) FROM lot_grace g
                               WHERE g.tenant_id = l.tenant_id AND g.lot_id = l.lot_id)) AS usable_until
FROM lots l WHERE l.tenant_id = $1 AND l.account_id = $2 AND l.unit = $3
"""
# (lot, kind, sum) of the account's entries in one unit recorded in [$4, $5) (NULL: unbounded).
SELECT_SUMS = """
SELECT lot_id, kind, sum(amount)::bigint AS amount, count(*) AS n FROM journal
WHERE tenant_id = $1 AND account_id = $2 AND unit = $3
  AND ($4::timestamptz IS NULL OR recorded_at >= $4) AND ($5::timestamptz IS NULL OR recorded_at < $5)
  AND entry_id <= $6
GROUP BY lot_id, kind
"""
SELECT_PROJECTION = """
SELECT b.lot_id, b.available, b.held
FROM lot_balances b JOIN lots l ON l.tenant_id = b.tenant_id AND l.lot_id = b.lot_id
WHERE b.tenant_id = $1 AND b.account_id = $2 AND l.unit = $3
"""
SELECT_PAGE = """
SELECT entry_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor, reason, reference,
       hold_key, policy_version
FROM journal
WHERE tenant_id = $1 AND account_id = $2 AND unit = $3
  AND ($4::timestamptz IS NULL OR recorded_at >= $4) AND ($5::timestamptz IS NULL OR recorded_at < $5)
  AND entry_id > $6
ORDER BY entry_id LIMIT $7
"""
SELECT_CONSUMED = """
SELECT COALESCE(sum(amount), 0)::bigint FROM journal
WHERE tenant_id = $1 AND account_id = $2 AND unit = $3 AND kind IN ('POST', 'DEBIT')
  AND recorded_at >= $4 AND recorded_at < $5
"""
# A committed hold's posting per allocation: stored only when partial, else the allocation in full.
SELECT_HOLD_ITEMS = """
SELECT a.hold_key, a.charge_id, sum(COALESCE(p.posted, a.amount))::bigint AS amount, min(h.charges::text) AS charges
FROM hold_allocations a
JOIN hold_resolutions r ON r.tenant_id = a.tenant_id AND r.hold_key = a.hold_key AND r.status = 'COMMITTED'
JOIN holds h ON h.tenant_id = a.tenant_id AND h.hold_key = a.hold_key
LEFT JOIN hold_postings p ON p.tenant_id = a.tenant_id AND p.hold_key = a.hold_key AND p.position = a.position
WHERE a.tenant_id = $1 AND a.hold_key = ANY($2)
GROUP BY a.hold_key, a.charge_id HAVING sum(COALESCE(p.posted, a.amount)) > 0
"""
SELECT_DEBIT_ITEMS = "SELECT hold_key, charges, allocations FROM debits WHERE tenant_id = $1 AND hold_key = ANY($2)"
SELECT_HEAD_ENTRY = "SELECT COALESCE(max(entry_id), 0) FROM journal WHERE tenant_id = $1 AND account_id = $2"

Sums = list[tuple[str, EntryKind, int]]


async def unit_of(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str) -> str:
    """The statement's unit: `unit` if given, else the account's only one."""
    row = await conn.fetchrow(SELECT_UNITS, tenant_id, account_id)
    if not row["found"]:
        raise not_found("account_id", f"account {account_id!r} not found")
    units: list[str] = list(row["units"])
    if unit:
        return unit
    if len(units) > 1:
        raise invalid("unit", f"the account has lots in several units ({', '.join(units)}): name one")
    return units[0] if units else ""


async def lots_of(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str) -> dict[str, LotInfo]:
    rows = await conn.fetch(SELECT_LOTS, tenant_id, account_id, unit)
    return {r["lot_id"]: LotInfo(r["lot_id"], LotType(r["lot_type"]), r["usable_until"]) for r in rows}


async def head_entry(conn: asyncpg.Connection, tenant_id: str, account_id: str) -> int:
    """The highest entry id of the account in this snapshot: every read below stops there."""
    return int(await conn.fetchval(SELECT_HEAD_ENTRY, tenant_id, account_id))


async def sums(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str, start: datetime | None,
               end: datetime | None, head: int) -> tuple[Sums, int]:
    """Per (lot, kind) sums of entries recorded in [start, end), and how many entries that is."""
    rows = await conn.fetch(SELECT_SUMS, tenant_id, account_id, unit, start, end, head)
    return [(r["lot_id"], EntryKind(r["kind"]), r["amount"]) for r in rows], sum(r["n"] for r in rows)


async def projection(conn: asyncpg.Connection, tenant_id: str, account_id: str,
                     unit: str) -> dict[str, tuple[int, int]]:
    """Each lot's (available, held) as the projection holds them."""
    rows = await conn.fetch(SELECT_PROJECTION, tenant_id, account_id, unit)
    return {r["lot_id"]: (r["available"], r["held"]) for r in rows}


def _entry(r: asyncpg.Record) -> Entry:
    return Entry(r["entry_id"], r["account_id"], r["lot_id"], EntryKind(r["kind"]), r["amount"], r["unit"],
                 r["effective_at"], r["recorded_at"], r["actor"], r["reason"], r["reference"], r["hold_key"],
                 r["policy_version"])


async def page(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str, start: datetime | None,
               end: datetime | None, after_id: int, limit: int) -> list[Entry]:
    """Entries after `after_id` in entry order (a keyset page)."""
    rows = await conn.fetch(SELECT_PAGE, tenant_id, account_id, unit, start, end, after_id, limit)
    return [_entry(r) for r in rows]


async def entries(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str, start: datetime | None,
                  end: datetime | None, head: int, batch: int = 2000) -> AsyncIterator[list[Entry]]:
    """Every entry of the period up to `head`, in keyset pages of `batch` (memory stays flat)."""
    after = 0
    while True:
        found = [e for e in await page(conn, tenant_id, account_id, unit, start, end, after, batch)
                 if e.entry_id <= head]
        if not found:
            return
        yield found
        after = found[-1].entry_id


async def consumed(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str, start: datetime,
                   end: datetime) -> int:
    return int(await conn.fetchval(SELECT_CONSUMED, tenant_id, account_id, unit, start, end))


async def consumption_items(conn: asyncpg.Connection, tenant_id: str,
                            hold_keys: list[str]) -> dict[str, list[tuple[str, str, int]]]:
    """Per hold or debit key, what each charge (line item) consumed: (charge_id, name, amount)."""
    out: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    if not hold_keys:
        return out
    for r in await conn.fetch(SELECT_HOLD_ITEMS, tenant_id, hold_keys):
        names = {c["charge_id"]: c["name"] for c in json.loads(r["charges"])}
        out[r["hold_key"]].append((r["charge_id"], names.get(r["charge_id"], ""), r["amount"]))
    for r in await conn.fetch(SELECT_DEBIT_ITEMS, tenant_id, hold_keys):
        names = {c["charge_id"]: c["name"] for c in json.loads(r["charges"])}
        per: dict[str, int] = defaultdict(int)
        for _position, charge_id, _lot, amount, *_ in json.loads(r["allocations"]):
            per[charge_id] += amount
        out[r["hold_key"]] = [(cid, names.get(cid, ""), amt) for cid, amt in per.items()]
    for items in out.values():
        items.sort()
    return out
