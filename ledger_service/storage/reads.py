"""Ledger reads: balances (now or as of an instant), statements, lots, holds, explanations, verify."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from ledger_service.domain.allocation import ineligibility
from ledger_service.domain.journal import BUCKETS, Buckets, Entry, EntryKind
from ledger_service.domain.model import Hold, HoldStatus, Lot, LotType
from ledger_service.domain.policy import DEFAULT_POLICY, Policy
from ledger_service.domain.settlement import pending_expiry
from ledger_service.storage.catalog import get_account
from ledger_service.storage.state import LOT_COLUMNS, load_holds, lot_from_row, policy_from_row
from service_runtime.rejections import not_found

_LOTS_FROM = "FROM lots l JOIN lot_balances b ON b.tenant_id = l.tenant_id AND b.lot_id = l.lot_id"
SELECT_LOT = f"SELECT {LOT_COLUMNS} {_LOTS_FROM} WHERE l.tenant_id = $1 AND l.lot_id = $2"
SELECT_ACCOUNT_LOTS = f"""
SELECT {LOT_COLUMNS} {_LOTS_FROM}
WHERE l.tenant_id = $1 AND l.account_id = $2 AND ($3 = '' OR l.unit = $3)
  AND ($4 OR b.available > 0 OR b.held > 0) AND l.seq > $5
ORDER BY l.seq LIMIT $6
"""
SELECT_LOT_META = f"SELECT {LOT_COLUMNS} {_LOTS_FROM} WHERE l.tenant_id = $1 AND l.account_id = $2"
# A past balance, per lot: the lot's last checkpoint at or before the instant (lot_checkpoints,
# migration 0014), plus the lot's entries after it recorded by then — each lot walked on its own
# index (journal_by_lot_time), so the read touches only this account's recent entries: at most
# about CHECKPOINT_EVERY per lot, whatever the size of the journal. Exact because a checkpoint holds
# every entry of the lot up to through_entry_id, all recorded at or before `at`, and every later
# entry was recorded at or after `at` (storage/effects.py; VerifyJournal proves both).
_AS_OF_LOTS = f"""
SELECT l.lot_id, c.entries AS c_entries, {', '.join(f'c.{b} AS c_{b}' for b in BUCKETS)}, s.kind, s.amount
FROM lots l
CROSS JOIN LATERAL (
    (SELECT through_entry_id, at, entries, {', '.join(BUCKETS)} FROM lot_checkpoints k
     WHERE k.tenant_id = l.tenant_id AND k.lot_id = l.lot_id AND k.at <= $3
     ORDER BY k.at DESC, k.through_entry_id DESC LIMIT 1)
    UNION ALL  -- no checkpoint yet: from the first entry (plain columns, so the bounds below stay index bounds)
    SELECT 0::bigint, '-infinity'::timestamptz, NULL::bigint, {', '.join('NULL::bigint' for _ in BUCKETS)}
    ORDER BY at DESC LIMIT 1
) c
LEFT JOIN LATERAL (
    SELECT j.kind, sum(j.amount)::bigint AS amount FROM journal j
    WHERE j.tenant_id = l.tenant_id AND j.lot_id = l.lot_id AND j.recorded_at <= $3
      AND j.recorded_at >= c.at AND j.entry_id > c.through_entry_id
    GROUP BY j.kind
) s ON true
WHERE l.tenant_id = $1 AND {{which}}
"""
SELECT_JOURNAL_AS_OF = _AS_OF_LOTS.format(which="l.account_id = $2")
SELECT_LOT_JOURNAL_AS_OF = _AS_OF_LOTS.format(which="l.lot_id = $2")
SELECT_ENTRIES = """
SELECT entry_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor, reason, reference,
       hold_key, policy_version
FROM journal
WHERE tenant_id = $1 AND ($2 = '' OR account_id = $2) AND ($3 = '' OR lot_id = $3)
  AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) AND ($5 = '' OR reference = $5)
  AND ($6::timestamptz IS NULL OR recorded_at >= $6) AND ($7::timestamptz IS NULL OR recorded_at < $7)
  AND entry_id > $8
ORDER BY entry_id LIMIT $9
"""
SELECT_BOUNDARIES = """
SELECT DISTINCT t FROM (
    SELECT l.effective_at AS t FROM lots l WHERE l.tenant_id = $1 AND l.account_id = $2 AND ($3 = '' OR l.unit = $3)
    UNION ALL
    SELECT COALESCE(GREATEST(l.expires_at, (SELECT max(g.usable_until) FROM lot_grace g
                                            WHERE g.tenant_id = l.tenant_id AND g.lot_id = l.lot_id)),
                    l.expires_at)
    FROM lots l WHERE l.tenant_id = $1 AND l.account_id = $2 AND ($3 = '' OR l.unit = $3)
) s WHERE t > $4 AND t < $5 ORDER BY t
"""
SELECT_BOUNDARIES_OF_ACCOUNT = f"""
SELECT ARRAY({SELECT_BOUNDARIES}) AS instants FROM accounts WHERE tenant_id = $1 AND account_id = $2
"""
SELECT_HOLD_KEYS = """
SELECT h.hold_key FROM holds h
LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
WHERE h.tenant_id = $1 AND ($2 = '' OR h.account_id = $2)
  AND ($3 = '' OR COALESCE(r.status, 'PENDING') = $3)
  AND ($4::timestamptz IS NULL OR h.created_at < $4) AND h.hold_key LIKE $5 AND h.hold_key > $6
ORDER BY h.hold_key LIMIT $7
"""
SELECT_HOLD_ACCOUNT = """
SELECT account_id, unit FROM holds WHERE tenant_id = $1 AND hold_key = $2
UNION ALL SELECT account_id, unit FROM debits WHERE tenant_id = $1 AND hold_key = $2
"""
SELECT_POLICY_VERSION = """
SELECT account_id, version, sort_keys, type_order FROM consumption_policies WHERE tenant_id = $1 AND version = $2
"""
SELECT_ALL_LOT_JOURNAL = """
SELECT lot_id, kind, sum(amount)::bigint AS amount, count(*) AS n FROM journal WHERE tenant_id = $1
GROUP BY lot_id, kind
"""
SELECT_ALL_BALANCES = f"SELECT lot_id, entries, {', '.join(BUCKETS)} FROM lot_balances WHERE tenant_id = $1"
# Each checkpoint next to the replay of its lot's entries up to through_entry_id (running sums per
# kind, in one pass over the tenant's journal in (lot, entry) order), the latest instant recorded
# up to it and the earliest recorded after it.
SELECT_CHECKPOINTS_VS_REPLAY = f"""
SELECT k.lot_id, k.through_entry_id, k.at, k.entries, {', '.join(f'k.{b}' for b in BUCKETS)},
       r.n, r.max_at, r.min_after, {', '.join(f'r.s_{k.lower()}' for k in EntryKind)}
FROM lot_checkpoints k
LEFT JOIN (
    SELECT lot_id, entry_id, count(*) OVER upto AS n, max(recorded_at) OVER upto AS max_at,
           -- the earliest instant after each entry, as a running min in reverse order: a frame that
           -- starts at the partition's head grows row by row (a frame ending at its tail, with no
           -- inverse for min, is aggregated again for every row: quadratic in a lot's entries)
           min(recorded_at) OVER (PARTITION BY lot_id ORDER BY entry_id DESC
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS min_after,
           {', '.join(f"coalesce(sum(amount) FILTER (WHERE kind = '{k}') OVER upto, 0) AS s_{k.lower()}"
                      for k in EntryKind)}
    FROM journal WHERE tenant_id = $1
    WINDOW upto AS (PARTITION BY lot_id ORDER BY entry_id ROWS UNBOUNDED PRECEDING)
) r ON r.lot_id = k.lot_id AND r.entry_id = k.through_entry_id
WHERE k.tenant_id = $1
ORDER BY k.lot_id, k.through_entry_id
"""
SELECT_HELD_BY_PENDING = """
SELECT a.lot_id, sum(a.amount)::bigint AS held FROM hold_allocations a
LEFT JOIN hold_resolutions r ON r.tenant_id = a.tenant_id AND r.hold_key = a.hold_key
WHERE a.tenant_id = $1 AND r.hold_key IS NULL GROUP BY a.lot_id
"""


async def get_lot(pool: asyncpg.Pool, tenant_id: str, lot_id: str, as_of: datetime | None = None) -> Lot:
    """The lot; with `as_of`, its buckets as the journal recorded them by that instant."""
    row = await pool.fetchrow(SELECT_LOT, tenant_id, lot_id)
    if row is None:
        raise not_found("lot_id", f"lot {lot_id!r} not found")
    lot = lot_from_row(row)
    if as_of is not None:
        b = (await balances_as_of(pool, SELECT_LOT_JOURNAL_AS_OF, tenant_id, lot_id, as_of)).get(lot_id, Buckets())
        for bucket in BUCKETS:
            setattr(lot, bucket, getattr(b, bucket))
    return lot


async def balances_as_of(pool: asyncpg.Pool, statement: str, tenant_id: str, subject: str,
                         as_of: datetime) -> dict[str, Buckets]:
    """Buckets per lot as recorded by `as_of` (checkpoint + entries since); lots with nothing
    recorded by then are left out."""
    per_lot: dict[str, Buckets] = {}
    for r in await pool.fetch(statement, tenant_id, subject, as_of):
        if r["c_entries"] is None and r["kind"] is None:
            continue
        b = per_lot.get(r["lot_id"])
        if b is None:
            b = per_lot[r["lot_id"]] = Buckets(*(r[f"c_{x}"] or 0 for x in BUCKETS))
        if r["kind"] is not None:
            b.apply(EntryKind(r["kind"]), r["amount"])
    return per_lot


async def list_lots(pool: asyncpg.Pool, tenant_id: str, account_id: str, unit: str, include_empty: bool,
                    after_seq: int, limit: int) -> list[Lot]:
    await get_account(pool, tenant_id, account_id)
    rows = await pool.fetch(SELECT_ACCOUNT_LOTS, tenant_id, account_id, unit, include_empty, after_seq, limit)
    return [lot_from_row(r) for r in rows]


@dataclass
class BalanceRow:
    unit: str
    lot_type: LotType | None
    buckets: Buckets = field(default_factory=Buckets)
    upcoming: int = 0
    pending_expiry: int = 0  # unused credit on lots past their usable window, not yet settled


@dataclass
class BalanceView:
    account_id: str
    as_of: datetime
    totals: list[BalanceRow]
    by_type: list[BalanceRow]


async def get_balance(pool: asyncpg.Pool, tenant_id: str, account_id: str, as_of: datetime | None,
                      now: datetime) -> BalanceView:
    """Per unit and per (unit, type). Lots not yet effective at the instant count as `upcoming`;
    the unused credit of lots past their usable window at the instant as `pending_expiry` (not
    `available`) until the sweep expires it (or rolls it over) when the lot settles.

    Now: from the projection. As of a past instant: replayed from the journal entries recorded
    by then — the same numbers the projection showed at that instant.
    """
    await get_account(pool, tenant_id, account_id)
    lots = {r["lot_id"]: lot_from_row(r) for r in await pool.fetch(SELECT_LOT_META, tenant_id, account_id)}
    at = as_of or now
    per_lot: dict[str, Buckets] = {}
    if as_of is None:
        for lot in lots.values():
            per_lot[lot.lot_id] = Buckets(*(getattr(lot, b) for b in BUCKETS))
    else:
        per_lot = await balances_as_of(pool, SELECT_JOURNAL_AS_OF, tenant_id, account_id, as_of)
    totals: dict[str, BalanceRow] = {}
    by_type: dict[tuple[str, LotType], BalanceRow] = {}
    for lot_id, b in per_lot.items():
        lot = lots[lot_id]
        rows = (totals.setdefault(lot.unit, BalanceRow(lot.unit, None)),
                by_type.setdefault((lot.unit, lot.lot_type), BalanceRow(lot.unit, lot.lot_type)))
        for row in rows:
            if lot.effective_at > at:
                row.upcoming += b.available
                continue
            for bucket in BUCKETS:
                setattr(row.buckets, bucket, getattr(row.buckets, bucket) + getattr(b, bucket))
            pending = pending_expiry(lot, b.available, at)
            row.buckets.available -= pending
            row.pending_expiry += pending
    return BalanceView(account_id, at, sorted(totals.values(), key=lambda r: r.unit),
                       sorted(by_type.values(), key=lambda r: (r.unit, r.lot_type or "")))


@dataclass
class EntryFilter:
    account_id: str = ""
    lot_id: str = ""
    kinds: list[EntryKind] = field(default_factory=list)
    reference: str = ""
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None


async def list_entries(pool: asyncpg.Pool, tenant_id: str, f: EntryFilter, after_id: int,
                       limit: int) -> list[Entry]:
    if f.account_id:
        await get_account(pool, tenant_id, f.account_id)
    rows = await pool.fetch(SELECT_ENTRIES, tenant_id, f.account_id, f.lot_id, [k.value for k in f.kinds],
                            f.reference, f.recorded_from, f.recorded_to, after_id, limit)
    return [Entry(r["entry_id"], r["account_id"], r["lot_id"], EntryKind(r["kind"]), r["amount"], r["unit"],
                  r["effective_at"], r["recorded_at"], r["actor"], r["reason"], r["reference"], r["hold_key"],
                  r["policy_version"]) for r in rows]


async def lot_boundaries(pool: asyncpg.Pool, tenant_id: str, account_id: str, unit: str, start: datetime,
                         end: datetime) -> list[datetime]:
    # One statement: whether the account exists, and its boundaries.
    row = await pool.fetchrow(SELECT_BOUNDARIES_OF_ACCOUNT, tenant_id, account_id, unit, start, end)
    if row is None:
        raise not_found("account_id", f"account {account_id!r} not found")
    return list(row["instants"])


async def get_hold(pool: asyncpg.Pool, tenant_id: str, hold_key: str) -> Hold:
    async with pool.acquire() as conn:
        holds, tombstones = await load_holds(conn, tenant_id, [hold_key])
    if hold_key in holds:
        return holds[hold_key]
    if hold_key in tombstones:
        return Hold(hold_key, "", "", 0, 0, [], 0, False, datetime.min, datetime.min, status=HoldStatus.TOMBSTONE)
    raise not_found("hold_key", f"hold {hold_key!r} not found")


async def hold_account(pool: asyncpg.Pool, tenant_id: str, hold_key: str) -> tuple[str, str] | None:
    """(account, unit) of a hold or one-step debit; None if there is none (or only a tombstone)."""
    row = await pool.fetchrow(SELECT_HOLD_ACCOUNT, tenant_id, hold_key)
    return (str(row["account_id"]), str(row["unit"])) if row is not None else None


async def list_holds(pool: asyncpg.Pool, tenant_id: str, account_id: str, status: HoldStatus | None,
                     created_before: datetime | None, prefix: str, after_key: str, limit: int) -> list[Hold]:
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    wanted = status.value if status is not None else ""
    keys = [r["hold_key"] for r in await pool.fetch(SELECT_HOLD_KEYS, tenant_id, account_id, wanted,
                                                     created_before, like, after_key, limit)]
    async with pool.acquire() as conn:
        holds, _ = await load_holds(conn, tenant_id, keys)
    return [holds[k] for k in keys if k in holds]


@dataclass
class LotConsidered:
    lot: Lot
    eligible: bool
    why: str
    allocated: int
    sort_values: list[str]


@dataclass
class Explanation:
    hold: Hold
    policy: Policy
    charges: list[tuple[str, list[LotConsidered]]]


async def explain_allocation(pool: asyncpg.Pool, tenant_id: str, hold_key: str) -> Explanation:
    """Why each lot paid what it paid for a hold: eligibility and the policy's sort values."""
    hold = await get_hold(pool, tenant_id, hold_key)
    if hold.status is HoldStatus.TOMBSTONE:
        raise not_found("hold_key", f"hold {hold_key!r} was never reserved")  # nothing was allocated
    policy = DEFAULT_POLICY
    if hold.policy_version:
        policy = policy_from_row(await pool.fetchrow(SELECT_POLICY_VERSION, tenant_id, hold.policy_version))
    rows = await pool.fetch(SELECT_LOT_META, tenant_id, hold.account_id)
    lots = sorted((lot_from_row(r) for r in rows if r["unit"] == hold.unit), key=policy.sort_key())
    out = []
    for charge in hold.charges:
        taken = {a.lot_id: a.amount for a in hold.allocations if a.charge_id == charge.charge_id}
        considered = []
        for lot in lots:
            why = ineligibility(lot, charge)
            considered.append(LotConsidered(lot, not why, why or "eligible", taken.get(lot.lot_id, 0),
                                            policy.describe(lot)))
        out.append((charge.charge_id, considered))
    return Explanation(hold, policy, out)


@dataclass
class Verification:
    entries: int
    lots: int
    violations: list[str]


async def verify_journal(pool: asyncpg.Pool, tenant_id: str) -> Verification:
    """Replays the journal per lot and compares with the projection; checks SPEC §7 invariants."""
    replayed: dict[str, Buckets] = defaultdict(Buckets)
    counted: dict[str, int] = defaultdict(int)
    for r in await pool.fetch(SELECT_ALL_LOT_JOURNAL, tenant_id):
        replayed[r["lot_id"]].apply(EntryKind(r["kind"]), r["amount"])
        counted[r["lot_id"]] += r["n"]
    violations: list[str] = []
    rows = await pool.fetch(SELECT_ALL_BALANCES, tenant_id)
    projected = {r["lot_id"]: Buckets(*(r[b] for b in BUCKETS)) for r in rows}
    for lot_id in sorted(set(replayed) | set(projected)):
        rep, proj = replayed.get(lot_id, Buckets()), projected.get(lot_id, Buckets())
        if rep.as_tuple() != proj.as_tuple():
            violations.append(f"lot {lot_id}: journal replay {rep.as_tuple()} != projection {proj.as_tuple()}")
        violations.extend(f"lot {lot_id}: {v}" for v in proj.violations())
    for r in rows:
        if r["entries"] != counted.get(r["lot_id"], 0):
            violations.append(f"lot {r['lot_id']}: projection counts {r['entries']} entries, "
                              f"the journal has {counted.get(r['lot_id'], 0)}")
    violations.extend(await _checkpoint_violations(pool, tenant_id))
    held = {r["lot_id"]: r["held"] for r in await pool.fetch(SELECT_HELD_BY_PENDING, tenant_id)}
    for lot_id, b in projected.items():
        if b.held != held.get(lot_id, 0):
            violations.append(f"lot {lot_id}: held {b.held} != pending hold allocations {held.get(lot_id, 0)}")
    return Verification(sum(counted.values()), len(projected), violations)


async def _checkpoint_violations(pool: asyncpg.Pool, tenant_id: str) -> list[str]:
    """Every balance checkpoint equals the replay of its lot's entries up to it, and splits the
    lot's entries in time: none up to it recorded after its instant, none after it recorded before
    (what makes an as-of read from a checkpoint exact: see SELECT_JOURNAL_AS_OF)."""
    out: list[str] = []
    for r in await pool.fetch(SELECT_CHECKPOINTS_VS_REPLAY, tenant_id):
        name = f"lot {r['lot_id']}: checkpoint through entry {r['through_entry_id']}"
        if r["n"] is None:
            out.append(f"{name}: no such entry of the lot")
            continue
        rep = Buckets()
        for kind in EntryKind:
            if r[f"s_{kind.lower()}"]:
                rep.apply(kind, r[f"s_{kind.lower()}"])
        held = Buckets(*(r[b] for b in BUCKETS))
        if rep.as_tuple() != held.as_tuple() or r["n"] != r["entries"]:
            out.append(f"{name}: holds {held.as_tuple()} over {r['entries']} entries, "
                       f"replay gives {rep.as_tuple()} over {r['n']}")
        if r["max_at"] > r["at"] or (r["min_after"] is not None and r["min_after"] < r["at"]):
            out.append(f"{name}: entries recorded out of order around its instant {r['at'].isoformat()}")
    return out
