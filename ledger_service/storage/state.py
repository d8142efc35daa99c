"""Loads what a batch of operations on one account needs, under that account's row lock."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from ledger_service.domain.model import (
    DEBIT_PREFIX,
    Allocation,
    Charge,
    ChargeKind,
    Hold,
    HoldStatus,
    Lot,
    LotType,
    RolloverPolicy,
    Scope,
)
from ledger_service.domain.policy import DEFAULT_POLICY, Policy, SortKey
from ledger_service.domain.settlement import Settlement

# FOR NO KEY UPDATE serialises writers of one account across processes without blocking the
# foreign-key checks of inserts that reference the account.
# The policy is read in the same statement (one round trip); lots are read only after the lock
# is held, so they are never older than the last transaction that wrote the account.
LOCK_ACCOUNT = """
SELECT a.account_id, a.parent_account_id, a.root_account_id, p.account_id AS policy_account_id, p.version,
       p.sort_keys, p.type_order, s.invoiced_through
FROM accounts a
LEFT JOIN account_settlements s ON s.tenant_id = a.tenant_id AND s.account_id = a.account_id
LEFT JOIN LATERAL (
    SELECT account_id, version, sort_keys, type_order FROM consumption_policies c
    WHERE c.tenant_id = a.tenant_id AND c.account_id IN ('', a.account_id)
    ORDER BY (c.account_id = a.account_id) DESC, c.version DESC LIMIT 1
) p ON true
WHERE a.tenant_id = $1 AND a.account_id = $2 FOR NO KEY UPDATE OF a
"""
LOT_COLUMNS = """
l.lot_id, l.seq, l.account_id, l.lot_type, l.unit, l.amount, l.priority, l.effective_at, l.expires_at,
l.scope_kinds, l.scope_names, l.cost_basis, l.source, l.reason_code, l.campaign_id, l.incident_id,
l.granted_by, l.origin_lot_id, l.created_at,
l.rollover_max_amount, l.rollover_max_percent, l.rollover_expires_after_s,
b.granted, b.reinstated, b.available, b.held, b.consumed, b.expired, b.voided, b.transferred_out, b.closed_at,
(SELECT max(g.usable_until) FROM lot_grace g WHERE g.tenant_id = l.tenant_id AND g.lot_id = l.lot_id)
    AS grace_until
"""
SELECT_OPEN_LOTS = f"""
SELECT {LOT_COLUMNS}
FROM lot_balances b JOIN lots l ON l.tenant_id = b.tenant_id AND l.lot_id = b.lot_id
WHERE b.tenant_id = $1 AND ((b.account_id = $2 AND (b.available > 0 OR b.held > 0)) OR b.lot_id = ANY($3))
"""
# load_state's lots, and the account's change number (account_heads) read in the same statement, so
# after the lock like the lots (a statement that waited for the lock sees the data of its start).
SELECT_HEAD_AND_OPEN_LOTS = f"""
SELECT h.seq AS head_seq, o.*
FROM (SELECT (SELECT seq FROM account_heads WHERE tenant_id = $1 AND account_id = $2) AS seq) h
LEFT JOIN ({SELECT_OPEN_LOTS}) o ON true
"""
SELECT_POLICY = """
SELECT account_id, version, sort_keys, type_order FROM consumption_policies
WHERE tenant_id = $1 AND account_id IN ('', $2)
ORDER BY (account_id = $2) DESC, version DESC LIMIT 1
"""
# Each table is filtered by the key list first, so every join is an index lookup however many holds
# the tenant has.
SELECT_HOLDS = """
SELECT k.key AS hold_key, h.account_id, h.unit, h.requested, h.reserved, h.up_to, h.reference,
       h.policy_version, h.release_on_ttl, h.ttl_expires_at, h.charges, h.created_at,
       r.status, r.posted, r.released, r.resolved_at, (v.hold_key IS NOT NULL) AS reversed
FROM unnest($2::text[]) AS k(key)
LEFT JOIN (SELECT * FROM holds WHERE tenant_id = $1 AND hold_key = ANY($2)) h ON h.hold_key = k.key
LEFT JOIN (SELECT hold_key, status, posted, released, resolved_at FROM hold_resolutions
           WHERE tenant_id = $1 AND hold_key = ANY($2)) r ON r.hold_key = k.key
LEFT JOIN (SELECT hold_key FROM hold_reversals WHERE tenant_id = $1 AND hold_key = ANY($2)) v
       ON v.hold_key = k.key
"""
SELECT_ALLOCATIONS = """
SELECT a.hold_key, a.position, a.charge_id, a.lot_id, a.amount, p.posted, l.lot_type
FROM hold_allocations a
JOIN lots l ON l.tenant_id = a.tenant_id AND l.lot_id = a.lot_id
LEFT JOIN hold_postings p ON p.tenant_id = a.tenant_id AND p.hold_key = a.hold_key AND p.position = a.position
WHERE a.tenant_id = $1 AND a.hold_key = ANY($2)
ORDER BY a.hold_key, a.position
"""
SELECT_DEBITS = """
SELECT d.hold_key, d.account_id, d.unit, d.requested, d.reserved, d.up_to, d.reference, d.policy_version,
       d.charges, d.allocations, d.created_at,
       EXISTS (SELECT 1 FROM hold_reversals v WHERE v.tenant_id = d.tenant_id AND v.hold_key = d.hold_key) AS reversed
FROM debits d WHERE d.tenant_id = $1 AND d.hold_key = ANY($2)
"""
SELECT_IDEMPOTENCY = """
SELECT key, method, request_hash, response FROM idempotency_keys WHERE tenant_id = $1 AND key = ANY($2)
"""


def settlement_from(invoiced_through: datetime | None) -> Settlement:
    """An account's settlement pointer (no row: not billed by invoices)."""
    return Settlement() if invoiced_through is None else Settlement(True, invoiced_through)


def _rollover_from_row(r: asyncpg.Record | dict[str, Any]) -> RolloverPolicy | None:
    if r["rollover_max_percent"] is None:
        return None
    return RolloverPolicy(r["rollover_max_amount"], r["rollover_max_percent"], r["rollover_expires_after_s"] or 0)


def lot_from_row(r: asyncpg.Record | dict[str, Any]) -> Lot:
    expires_at = r["expires_at"]
    grace = r["grace_until"]
    usable_until = expires_at if grace is None or expires_at is None else max(expires_at, grace)
    return Lot(
        lot_id=r["lot_id"], account_id=r["account_id"], lot_type=LotType(r["lot_type"]), unit=r["unit"],
        amount=r["amount"], priority=r["priority"], effective_at=r["effective_at"], expires_at=expires_at,
        scope=Scope(frozenset(ChargeKind(k) for k in r["scope_kinds"]), frozenset(r["scope_names"])),
        cost_basis=Decimal(r["cost_basis"]), seq=r["seq"], usable_until=usable_until,
        granted=r["granted"], reinstated=r["reinstated"], available=r["available"], held=r["held"],
        consumed=r["consumed"], expired=r["expired"], voided=r["voided"], transferred_out=r["transferred_out"],
        source=r["source"], reason_code=r["reason_code"], campaign_id=r["campaign_id"],
        incident_id=r["incident_id"], granted_by=r["granted_by"], origin_lot_id=r["origin_lot_id"] or "",
        rollover=_rollover_from_row(r), created_at=r["created_at"], closed_at=r["closed_at"],
    )


def policy_from_row(r: asyncpg.Record | None) -> Policy:
    if r is None or r["version"] is None:
        return DEFAULT_POLICY
    return Policy(
        version=r["version"], sort_keys=tuple(SortKey(k) for k in r["sort_keys"]),
        type_order=tuple(LotType(t) for t in r["type_order"]),
        account_id=r["policy_account_id"] if "policy_account_id" in r else r["account_id"],
    )


def _charges_from_json(text: str) -> list[Charge]:
    return [
        Charge(c["charge_id"], ChargeKind(c["kind"]), c["name"], c["amount"],
               datetime.fromisoformat(c["service_start"]), datetime.fromisoformat(c["service_end"]))
        for c in json.loads(text)
    ]


@dataclass
class AccountState:
    """One account as the batch sees it: lots with live balances, holds by key, policy."""

    tenant_id: str
    account_id: str
    exists: bool
    parent_account_id: str | None = None
    root_account_id: str = ""
    policy: Policy = DEFAULT_POLICY
    settlement: Settlement = field(default_factory=Settlement)
    lots: dict[str, Lot] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)
    idempotency: dict[str, tuple[str, bytes, bytes]] = field(default_factory=dict)
    head_seq: int = 0  # the account's change number when loaded (account_heads; 0: never journaled)

    _sorted: dict[str, list[Lot]] = field(default_factory=dict)

    def lots_in(self, unit: str) -> list[Lot]:
        return [lot for lot in self.lots.values() if lot.unit == unit and lot.account_id == self.account_id]

    def sorted_lots(self, unit: str) -> list[Lot]:
        """This account's lots of `unit` in policy order, computed once per batch."""
        found = self._sorted.get(unit)
        if found is None:
            found = self._sorted[unit] = sorted(self.lots_in(unit), key=self.policy.sort_key())
        return found

    def add_lot(self, lot: Lot) -> None:
        self.lots[lot.lot_id] = lot
        self.reorder(lot.unit)

    def reorder(self, unit: str) -> None:
        """Forget the policy order of `unit` (a lot was added or its usable window changed)."""
        self._sorted.pop(unit, None)


def _debit_from_row(r: asyncpg.Record) -> Hold:
    """A debit is a hold born committed, every allocation fully posted."""
    allocations = [Allocation(p, c, lot, amount, LotType(t)) for p, c, lot, amount, t in json.loads(r["allocations"])]
    return Hold(
        hold_key=r["hold_key"], account_id=r["account_id"], unit=r["unit"], requested=r["requested"],
        reserved=r["reserved"], allocations=allocations, policy_version=r["policy_version"], release_on_ttl=False,
        ttl_expires_at=r["created_at"], created_at=r["created_at"], reference=r["reference"], up_to=r["up_to"],
        charges=_charges_from_json(r["charges"]), status=HoldStatus.COMMITTED, posted=r["reserved"],
        resolved_at=r["created_at"], postings={a.position: a.amount for a in allocations}, reversed=r["reversed"],
    )


async def load_holds(conn: asyncpg.Connection, tenant_id: str, keys: list[str]) -> tuple[dict[str, Hold], set[str]]:
    """Holds by key (with allocations and postings) and the keys that are tombstones."""
    holds: dict[str, Hold] = {}
    tombstones: set[str] = set()
    if not keys:
        return holds, tombstones
    for r in await conn.fetch(SELECT_HOLDS, tenant_id, keys):
        if r["account_id"] is None:
            if r["status"] == HoldStatus.TOMBSTONE.value:
                tombstones.add(r["hold_key"])
            continue
        holds[r["hold_key"]] = Hold(
            hold_key=r["hold_key"], account_id=r["account_id"], unit=r["unit"], requested=r["requested"],
            reserved=r["reserved"], allocations=[], policy_version=r["policy_version"],
            release_on_ttl=r["release_on_ttl"], ttl_expires_at=r["ttl_expires_at"], created_at=r["created_at"],
            reference=r["reference"], up_to=r["up_to"], charges=_charges_from_json(r["charges"]),
            status=HoldStatus(r["status"]) if r["status"] else HoldStatus.PENDING,
            posted=r["posted"] or 0, released=r["released"] or 0, resolved_at=r["resolved_at"],
            reversed=r["reversed"],
        )
    debit_keys = [k for k in keys if k.startswith(DEBIT_PREFIX) and k not in holds]
    if debit_keys:
        for r in await conn.fetch(SELECT_DEBITS, tenant_id, debit_keys):
            holds[r["hold_key"]] = _debit_from_row(r)
    pending_keys = [k for k, h in holds.items() if not k.startswith(DEBIT_PREFIX)]
    if pending_keys:
        for r in await conn.fetch(SELECT_ALLOCATIONS, tenant_id, pending_keys):
            hold = holds[r["hold_key"]]
            hold.allocations.append(Allocation(r["position"], r["charge_id"], r["lot_id"], r["amount"],
                                               LotType(r["lot_type"])))
            if r["posted"] is not None:
                hold.postings[r["position"]] = r["posted"]
            elif hold.status is HoldStatus.COMMITTED:
                hold.postings[r["position"]] = r["amount"]  # only partial postings are stored
    return holds, tombstones


async def load_state(
    conn: asyncpg.Connection, tenant_id: str, account_id: str, *,
    hold_keys: Iterable[str], lot_ids: Iterable[str], idempotency_keys: Iterable[str],
) -> AccountState:
    """Locks the account row and reads everything the batch may touch."""
    row = await conn.fetchrow(LOCK_ACCOUNT, tenant_id, account_id)
    if row is None:
        return AccountState(tenant_id, account_id, exists=False)
    state = AccountState(
        tenant_id, account_id, exists=True, parent_account_id=row["parent_account_id"],
        root_account_id=row["root_account_id"], settlement=settlement_from(row["invoiced_through"]),
    )
    keys = [k for k in idempotency_keys if k]
    if keys:
        for r in await conn.fetch(SELECT_IDEMPOTENCY, tenant_id, keys):
            state.idempotency[r["key"]] = (r["method"], bytes(r["request_hash"]), bytes(r["response"]))
    state.policy = policy_from_row(row)
    state.holds, state.tombstones = await load_holds(conn, tenant_id, list(set(hold_keys)))
    wanted = set(lot_ids) | {a.lot_id for h in state.holds.values() for a in h.allocations}
    for r in await conn.fetch(SELECT_HEAD_AND_OPEN_LOTS, tenant_id, account_id, list(wanted)):
        state.head_seq = r["head_seq"] or 0
        if r["lot_id"] is not None:
            lot = lot_from_row(r)
            state.lots[lot.lot_id] = lot
    return state
