"""Effects: every row one batch of operations will write, flushed in a few bulk statements.

Operations never write SQL themselves: they call `Effects.move(...)` etc., which updates the
in-memory lot (so the next operation in the same batch sees it) and queues the rows. `flush`
writes everything inside the caller's transaction — journal and projection together (SPEC §7).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from ledger_service.domain.journal import BUCKETS, EntryKind, deltas
from ledger_service.domain.model import Hold, HoldStatus, Lot

# Everything a batch writes, in ONE statement: each data-modifying CTE inserts (or updates) from
# unnest()ed arrays, empty arrays write nothing. One round trip instead of one per table matters
# on the hot path (see account_writer.py). All CTEs see the same snapshot, so lots created in this
# batch get their lot_balances row with final values instead of an insert followed by an update.
FLUSH = """
WITH
new_lots AS (
  INSERT INTO lots (tenant_id, lot_id, account_id, lot_type, unit, amount, priority, effective_at, expires_at,
                    scope_kinds, scope_names, cost_basis, source, reason_code, campaign_id, incident_id,
                    granted_by, origin_lot_id, created_at)
  SELECT $1, l.lot_id, l.account_id, l.lot_type, l.unit, l.amount, l.priority, l.effective_at, l.expires_at,
         string_to_array(l.kinds, ','), string_to_array(l.names, chr(31)), l.cost_basis, l.source,
         l.reason_code, l.campaign_id, l.incident_id, l.granted_by, NULLIF(l.origin_lot_id, ''), $2
  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::smallint[],
              $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::numeric[],
              $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[])
       AS l(lot_id, account_id, lot_type, unit, amount, priority, effective_at, expires_at, kinds, names,
            cost_basis, source, reason_code, campaign_id, incident_id, granted_by, origin_lot_id)
),
new_balances AS (
  INSERT INTO lot_balances (tenant_id, lot_id, account_id, granted, reinstated, available, held, consumed,
                            expired, voided, transferred_out, closed_at)
  SELECT $1, * FROM unnest($20::text[], $21::text[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[],
                           $26::bigint[], $27::bigint[], $28::bigint[], $29::bigint[], $30::timestamptz[])
),
balances AS (
  UPDATE lot_balances b SET
      granted = b.granted + d.granted, reinstated = b.reinstated + d.reinstated,
      available = b.available + d.available, held = b.held + d.held, consumed = b.consumed + d.consumed,
      expired = b.expired + d.expired, voided = b.voided + d.voided,
      transferred_out = b.transferred_out + d.transferred_out, closed_at = COALESCE(b.closed_at, d.closed_at)
  FROM unnest($31::text[], $32::bigint[], $33::bigint[], $34::bigint[], $35::bigint[], $36::bigint[],
              $37::bigint[], $38::bigint[], $39::bigint[], $40::timestamptz[])
       AS d(lot_id, granted, reinstated, available, held, consumed, expired, voided, transferred_out, closed_at)
  WHERE b.tenant_id = $1 AND b.lot_id = d.lot_id
),
entries AS (
  INSERT INTO journal (tenant_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor,
                       reason, reference, hold_key, policy_version)
  SELECT $1, e.account_id, e.lot_id, e.kind, e.amount, e.unit, e.effective_at, $2, e.actor, e.reason,
         e.reference, e.hold_key, e.policy_version
  FROM unnest($41::text[], $42::text[], $43::text[], $44::bigint[], $45::text[], $46::timestamptz[], $47::text[],
              $48::text[], $49::text[], $50::text[], $51::int[])
       AS e(account_id, lot_id, kind, amount, unit, effective_at, actor, reason, reference, hold_key,
            policy_version)
),
new_holds AS (
  INSERT INTO holds (tenant_id, hold_key, account_id, unit, requested, reserved, up_to, reference,
                     policy_version, release_on_ttl, ttl_expires_at, charges, created_at)
  SELECT $1, h.hold_key, h.account_id, h.unit, h.requested, h.reserved, h.up_to, h.reference, h.policy_version,
         h.release_on_ttl, h.ttl_expires_at, h.charges::jsonb, $2
  FROM unnest($52::text[], $53::text[], $54::text[], $55::bigint[], $56::bigint[], $57::boolean[], $58::text[],
              $59::int[], $60::boolean[], $61::timestamptz[], $62::text[])
       AS h(hold_key, account_id, unit, requested, reserved, up_to, reference, policy_version, release_on_ttl,
            ttl_expires_at, charges)
),
allocations AS (
  INSERT INTO hold_allocations (tenant_id, hold_key, position, charge_id, lot_id, amount)
  SELECT $1, * FROM unnest($63::text[], $64::int[], $65::text[], $66::text[], $67::bigint[])
),
resolutions AS (
  INSERT INTO hold_resolutions (tenant_id, hold_key, status, posted, released, reason, resolved_at)
  SELECT $1, r.hold_key, r.status, r.posted, r.released, r.reason, $2
  FROM unnest($68::text[], $69::text[], $70::bigint[], $71::bigint[], $72::text[])
       AS r(hold_key, status, posted, released, reason)
),
postings AS (
  INSERT INTO hold_postings (tenant_id, hold_key, position, posted)
  SELECT $1, * FROM unnest($73::text[], $74::int[], $75::bigint[])
),
reversals AS (
  INSERT INTO hold_reversals (tenant_id, hold_key, policy, expired_at_once, reversed_at)
  SELECT $1, r.hold_key, r.policy, r.expired, $2
  FROM unnest($76::text[], $77::text[], $78::bigint[]) AS r(hold_key, policy, expired)
),
grace AS (
  INSERT INTO lot_grace (tenant_id, lot_id, usable_until) SELECT $1, * FROM unnest($79::text[], $80::timestamptz[])
),
keys AS (
  INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response, created_at)
  SELECT $1, k.key, k.method, k.request_hash, k.response, $2
  FROM unnest($81::text[], $82::text[], $83::bytea[], $84::bytea[]) AS k(key, method, request_hash, response)
)
SELECT 1
"""


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Row tuples → one list per column (empty lists when there are no rows)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


_INDEX = {b: i for i, b in enumerate(BUCKETS)}


@dataclass(frozen=True, slots=True)
class EntryContext:
    """Who and why, copied onto every journal entry an operation writes."""

    actor: str = ""
    reason: str = ""
    reference: str = ""
    hold_key: str = ""
    policy_version: int = 0


@dataclass
class Effects:
    tenant_id: str
    now: datetime
    entries: list[tuple[object, ...]] = field(default_factory=list)
    lot_deltas: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * len(BUCKETS)))
    closed: dict[str, datetime] = field(default_factory=dict)
    new_lots: list[Lot] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    resolutions: list[tuple[str, str, int, int, str]] = field(default_factory=list)
    postings: list[tuple[str, int, int]] = field(default_factory=list)
    reversals: list[tuple[str, str, int]] = field(default_factory=list)
    grace: list[tuple[str, datetime]] = field(default_factory=list)
    idempotency: list[tuple[str, str, bytes, bytes]] = field(default_factory=list)
    _created: set[str] = field(default_factory=set)

    def move(self, lot: Lot, kind: EntryKind, amount: int, ctx: EntryContext,
             effective_at: datetime | None = None) -> None:
        """Moves `amount` between two buckets of `lot` and journals it."""
        assert amount > 0, "journal amounts are positive"
        if lot.lot_id in self._created:
            for bucket, change in deltas(kind, amount).items():
                setattr(lot, bucket, getattr(lot, bucket) + change)
        else:
            row = self.lot_deltas[lot.lot_id]
            for bucket, change in deltas(kind, amount).items():
                setattr(lot, bucket, getattr(lot, bucket) + change)
                row[_INDEX[bucket]] += change
        assert lot.available >= 0 and lot.held >= 0, f"lot {lot.lot_id} would go negative"
        self.entries.append((
            lot.account_id, lot.lot_id, kind.value, amount, lot.unit, effective_at or self.now,
            ctx.actor, ctx.reason, ctx.reference, ctx.hold_key, ctx.policy_version,
        ))

    def create(self, lot: Lot) -> None:
        """A new lot: inserted with its final balances at flush."""
        self.new_lots.append(lot)
        self._created.add(lot.lot_id)

    def close(self, lot: Lot) -> None:
        if lot.closed_at is None:
            lot.closed_at = self.now
            if lot.lot_id not in self._created:
                self.closed[lot.lot_id] = self.now
                _ = self.lot_deltas[lot.lot_id]  # a delta row, so closed_at is written

    def resolve(self, hold: Hold, status: HoldStatus, posted: int, released: int, reason: str) -> None:
        hold.status, hold.posted, hold.released, hold.resolved_at = status, posted, released, self.now
        self.resolutions.append((hold.hold_key, status.value, posted, released, reason))

    def remember(self, key: str, method: str, request_hash: bytes, response: bytes) -> None:
        self.idempotency.append((key, method, request_hash, response))

    def is_empty(self) -> bool:
        return not (self.new_lots or self.entries or self.lot_deltas or self.holds or self.resolutions
                    or self.postings or self.reversals or self.grace or self.idempotency)

    async def flush(self, conn: asyncpg.Connection) -> None:
        """Writes every queued row in one statement, inside the caller's transaction."""
        if self.is_empty():
            return
        ls, hs = self.new_lots, self.holds
        lots = [(x.lot_id, x.account_id, x.lot_type.value, x.unit, x.amount, x.priority, x.effective_at,
                 x.expires_at, ",".join(sorted(k.value for k in x.scope.kinds)), chr(31).join(sorted(x.scope.names)),
                 x.cost_basis, x.source, x.reason_code, x.campaign_id, x.incident_id, x.granted_by, x.origin_lot_id)
                for x in ls]
        new_balances = [(x.lot_id, x.account_id, *(getattr(x, b) for b in BUCKETS), x.closed_at) for x in ls]
        ids = list(self.lot_deltas)
        updates = [(i, *self.lot_deltas[i], self.closed.get(i)) for i in ids]
        holds = [(h.hold_key, h.account_id, h.unit, h.requested, h.reserved, h.up_to, h.reference, h.policy_version,
                  h.release_on_ttl, h.ttl_expires_at, _charges_json(h)) for h in hs]
        allocations = [(h.hold_key, a.position, a.charge_id, a.lot_id, a.amount) for h in hs for a in h.allocations]
        await conn.execute(
            FLUSH, self.tenant_id, self.now,
            *_columns(lots, 17), *_columns(new_balances, 11), *_columns(updates, 10),
            *_columns(self.entries, 11), *_columns(holds, 11), *_columns(allocations, 5),
            *_columns(self.resolutions, 5), *_columns(self.postings, 3), *_columns(self.reversals, 3),
            *_columns(self.grace, 2), *_columns(self.idempotency, 4),
        )


def _charges_json(hold: Hold) -> str:
    return json.dumps([
        {"charge_id": c.charge_id, "kind": c.kind.value, "name": c.name, "amount": c.amount,
         "service_start": c.service_start.isoformat(), "service_end": c.service_end.isoformat()}
        for c in hold.charges
    ])
