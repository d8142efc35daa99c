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

import asyncpg

from ledger_service.domain.journal import BUCKETS, EntryKind, deltas
from ledger_service.domain.model import Hold, HoldStatus, Lot

INSERT_LOTS = """
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
"""
INSERT_LOT_BALANCES = """
INSERT INTO lot_balances (tenant_id, lot_id, account_id, granted, available)
SELECT $1, l.lot_id, l.account_id, 0, 0 FROM unnest($2::text[], $3::text[]) AS l(lot_id, account_id)
"""
UPDATE_LOT_BALANCES = """
UPDATE lot_balances b SET
    granted = b.granted + d.granted, reinstated = b.reinstated + d.reinstated,
    available = b.available + d.available, held = b.held + d.held, consumed = b.consumed + d.consumed,
    expired = b.expired + d.expired, voided = b.voided + d.voided,
    transferred_out = b.transferred_out + d.transferred_out,
    closed_at = COALESCE(b.closed_at, d.closed_at)
FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
            $9::bigint[], $10::bigint[], $11::timestamptz[])
     AS d(lot_id, granted, reinstated, available, held, consumed, expired, voided, transferred_out, closed_at)
WHERE b.tenant_id = $1 AND b.lot_id = d.lot_id
"""
INSERT_JOURNAL = """
INSERT INTO journal (tenant_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor,
                     reason, reference, hold_key, policy_version)
SELECT $1, e.account_id, e.lot_id, e.kind, e.amount, e.unit, e.effective_at, $2, e.actor, e.reason,
       e.reference, e.hold_key, e.policy_version
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::timestamptz[], $9::text[],
            $10::text[], $11::text[], $12::text[], $13::int[])
     AS e(account_id, lot_id, kind, amount, unit, effective_at, actor, reason, reference, hold_key,
          policy_version)
"""
INSERT_HOLDS = """
INSERT INTO holds (tenant_id, hold_key, account_id, unit, requested, reserved, up_to, reference,
                   policy_version, release_on_ttl, ttl_expires_at, charges, created_at)
SELECT $1, h.hold_key, h.account_id, h.unit, h.requested, h.reserved, h.up_to, h.reference, h.policy_version,
       h.release_on_ttl, h.ttl_expires_at, h.charges::jsonb, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::boolean[], $9::text[],
            $10::int[], $11::boolean[], $12::timestamptz[], $13::text[])
     AS h(hold_key, account_id, unit, requested, reserved, up_to, reference, policy_version, release_on_ttl,
          ttl_expires_at, charges)
"""
INSERT_ALLOCATIONS = """
INSERT INTO hold_allocations (tenant_id, hold_key, position, charge_id, lot_id, amount)
SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::bigint[])
"""
INSERT_RESOLUTIONS = """
INSERT INTO hold_resolutions (tenant_id, hold_key, status, posted, released, reason, resolved_at)
SELECT $1, r.hold_key, r.status, r.posted, r.released, r.reason, $2
FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[])
     AS r(hold_key, status, posted, released, reason)
"""
INSERT_POSTINGS = """
INSERT INTO hold_postings (tenant_id, hold_key, position, posted)
SELECT $1, * FROM unnest($2::text[], $3::int[], $4::bigint[])
"""
INSERT_REVERSALS = """
INSERT INTO hold_reversals (tenant_id, hold_key, policy, expired_at_once, reversed_at)
SELECT $1, r.hold_key, r.policy, r.expired, $2 FROM unnest($3::text[], $4::text[], $5::bigint[])
     AS r(hold_key, policy, expired)
"""
INSERT_GRACE = """
INSERT INTO lot_grace (tenant_id, lot_id, usable_until)
SELECT $1, * FROM unnest($2::text[], $3::timestamptz[])
"""
INSERT_IDEMPOTENCY = """
INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response, created_at)
SELECT $1, k.key, k.method, k.request_hash, k.response, $2
FROM unnest($3::text[], $4::text[], $5::bytea[], $6::bytea[]) AS k(key, method, request_hash, response)
"""


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

    def move(self, lot: Lot, kind: EntryKind, amount: int, ctx: EntryContext,
             effective_at: datetime | None = None) -> None:
        """Moves `amount` between two buckets of `lot` and journals it."""
        assert amount > 0, "journal amounts are positive"
        row = self.lot_deltas[lot.lot_id]
        for bucket, change in deltas(kind, amount).items():
            setattr(lot, bucket, getattr(lot, bucket) + change)
            row[BUCKETS.index(bucket)] += change
        assert lot.available >= 0 and lot.held >= 0, f"lot {lot.lot_id} would go negative"
        self.entries.append((
            lot.account_id, lot.lot_id, kind.value, amount, lot.unit, effective_at or self.now,
            ctx.actor, ctx.reason, ctx.reference, ctx.hold_key, ctx.policy_version,
        ))

    def close(self, lot: Lot) -> None:
        if lot.closed_at is None:
            lot.closed_at = self.now
            self.closed[lot.lot_id] = self.now
            self.lot_deltas[lot.lot_id]

    def resolve(self, hold: Hold, status: HoldStatus, posted: int, released: int, reason: str) -> None:
        hold.status, hold.posted, hold.released, hold.resolved_at = status, posted, released, self.now
        self.resolutions.append((hold.hold_key, status.value, posted, released, reason))

    def remember(self, key: str, method: str, request_hash: bytes, response: bytes) -> None:
        self.idempotency.append((key, method, request_hash, response))

    async def flush(self, conn: asyncpg.Connection) -> None:
        t, now = self.tenant_id, self.now
        if self.new_lots:
            ls = self.new_lots
            await conn.execute(
                INSERT_LOTS, t, now, [x.lot_id for x in ls], [x.account_id for x in ls],
                [x.lot_type.value for x in ls], [x.unit for x in ls], [x.amount for x in ls],
                [x.priority for x in ls], [x.effective_at for x in ls], [x.expires_at for x in ls],
                [",".join(sorted(k.value for k in x.scope.kinds)) for x in ls],
                [chr(31).join(sorted(x.scope.names)) for x in ls], [x.cost_basis for x in ls],
                [x.source for x in ls], [x.reason_code for x in ls], [x.campaign_id for x in ls],
                [x.incident_id for x in ls], [x.granted_by for x in ls], [x.origin_lot_id for x in ls],
            )
            await conn.execute(INSERT_LOT_BALANCES, t, [x.lot_id for x in ls], [x.account_id for x in ls])
        if self.holds:
            hs = self.holds
            await conn.execute(
                INSERT_HOLDS, t, now, [h.hold_key for h in hs], [h.account_id for h in hs], [h.unit for h in hs],
                [h.requested for h in hs], [h.reserved for h in hs], [h.up_to for h in hs],
                [h.reference for h in hs], [h.policy_version for h in hs], [h.release_on_ttl for h in hs],
                [h.ttl_expires_at for h in hs], [_charges_json(h) for h in hs],
            )
            allocs = [(h.hold_key, a) for h in hs for a in h.allocations]
            if allocs:
                await conn.execute(
                    INSERT_ALLOCATIONS, t, [k for k, _ in allocs], [a.position for _, a in allocs],
                    [a.charge_id for _, a in allocs], [a.lot_id for _, a in allocs], [a.amount for _, a in allocs],
                )
        if self.entries:
            cols = list(zip(*self.entries, strict=True))
            await conn.execute(INSERT_JOURNAL, t, now, *cols)
        if self.lot_deltas:
            ids = list(self.lot_deltas)
            cols = list(zip(*(self.lot_deltas[i] for i in ids), strict=True))
            await conn.execute(UPDATE_LOT_BALANCES, t, ids, *cols, [self.closed.get(i) for i in ids])
        if self.resolutions:
            await conn.execute(INSERT_RESOLUTIONS, t, now, *map(list, zip(*self.resolutions, strict=True)))
        if self.postings:
            await conn.execute(INSERT_POSTINGS, t, *map(list, zip(*self.postings, strict=True)))
        if self.reversals:
            await conn.execute(INSERT_REVERSALS, t, now, *map(list, zip(*self.reversals, strict=True)))
        if self.grace:
            await conn.execute(INSERT_GRACE, t, *map(list, zip(*self.grace, strict=True)))
        if self.idempotency:
            await conn.execute(INSERT_IDEMPOTENCY, t, now, *map(list, zip(*self.idempotency, strict=True)))


def _charges_json(hold: Hold) -> str:
    return json.dumps([
        {"charge_id": c.charge_id, "kind": c.kind.value, "name": c.name, "amount": c.amount,
         "service_start": c.service_start.isoformat(), "service_end": c.service_end.isoformat()}
        for c in hold.charges
    ])
