"""Transfers between accounts of one hierarchy (enterprise pool → team), and their reversal.

A transfer takes credit from the source account's lots usable now, in policy order, and creates
one lot per source lot on the destination carrying the source's type, priority, expiry, scope and
cost basis (SPEC §8). Both accounts are locked in id order, so two opposite transfers cannot
deadlock; the writer's per-account batches take the same row locks, so they stay serial too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import Lot
from ledger_service.storage.catalog import transfer_limit
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.operations import new_id, terminal_kind
from ledger_service.storage.state import AccountState, load_state
from service_runtime.rejections import invalid, not_found, precondition

INSERT_TRANSFER = """
INSERT INTO transfers (tenant_id, transfer_id, from_account_id, to_account_id, unit, amount, legs)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
"""
SELECT_TRANSFER = """
SELECT t.transfer_id, t.from_account_id, t.to_account_id, t.unit, t.amount, t.legs,
       (r.transfer_id IS NOT NULL) AS reversed
FROM transfers t LEFT JOIN transfer_reversals r USING (tenant_id, transfer_id)
WHERE t.tenant_id = $1 AND t.transfer_id = $2
"""
INSERT_REVERSAL = "INSERT INTO transfer_reversals (tenant_id, transfer_id) VALUES ($1, $2)"


@dataclass
class Leg:
    source_lot_id: str
    destination_lot_id: str
    amount: int


@dataclass
class TransferResult:
    transfer_id: str
    legs: list[Leg]
    reversed: bool = False


async def _lock_both(conn: asyncpg.Connection, tenant_id: str, a: str, b: str,
                     lot_ids: dict[str, list[str]]) -> dict[str, AccountState]:
    states = {}
    for account in sorted({a, b}):
        st = await load_state(conn, tenant_id, account, hold_keys=(), lot_ids=lot_ids.get(account, []),
                              idempotency_keys=())
        if not st.exists:
            raise not_found("from_account_id" if account == a else "to_account_id", f"account {account!r} not found")
        states[account] = st
    return states


async def transfer_credits(conn: asyncpg.Connection, tenant_id: str, src: str, dst: str, unit: str,
                           amount: int, reason: str, actor: str, now: datetime) -> TransferResult:
    if src == dst:
        raise invalid("to_account_id", "must differ from from_account_id")
    states = await _lock_both(conn, tenant_id, src, dst, {})
    source, dest = states[src], states[dst]
    if source.root_account_id != dest.root_account_id:
        raise precondition("to_account_id", "accounts are not in the same hierarchy")
    limit = await transfer_limit(conn, tenant_id, src, unit)
    if limit is not None and amount > limit:
        raise precondition("amount", f"exceeds the per-transfer limit {limit} of account {src!r}")
    lots = sorted((lot for lot in source.lots_in(unit) if lot.available > 0 and lot.usable_for(now, now)),
                  key=source.policy.sort_key())
    if sum(lot.available for lot in lots) < amount:
        raise precondition("amount", "insufficient credits on the source account")
    fx = Effects(tenant_id, now)
    transfer_id = new_id("xfer")
    ctx = EntryContext(actor=actor, reason=reason, reference=f"transfer/{transfer_id}")
    legs: list[Leg] = []
    left = amount
    for lot in lots:
        take = min(lot.available, left)
        left -= take
        fx.move(lot, EntryKind.TRANSFER_OUT, take, ctx)
        copy = replace(lot, lot_id=new_id("lot"), account_id=dst, amount=take, origin_lot_id=lot.lot_id,
                       granted_by=actor, created_at=now, closed_at=None, granted=0, reinstated=0, available=0,
                       held=0, consumed=0, expired=0, voided=0, transferred_out=0)
        fx.create(copy)
        fx.move(copy, EntryKind.GRANT, take, ctx, effective_at=copy.effective_at)
        legs.append(Leg(lot.lot_id, copy.lot_id, take))
        if left == 0:
            break
    await fx.flush(conn)
    await conn.execute(INSERT_TRANSFER, tenant_id, transfer_id, src, dst, unit, amount,
                       json.dumps([leg.__dict__ for leg in legs]))
    return TransferResult(transfer_id, legs)


async def reverse_transfer(conn: asyncpg.Connection, tenant_id: str, transfer_id: str, actor: str,
                           now: datetime) -> TransferResult:
    row = await conn.fetchrow(SELECT_TRANSFER, tenant_id, transfer_id)
    if row is None:
        raise not_found("transfer_id", f"transfer {transfer_id!r} not found")
    legs = [Leg(**leg) for leg in json.loads(row["legs"])]
    if row["reversed"]:
        raise precondition("transfer_id", f"transfer {transfer_id!r} was already reversed")
    src, dst = row["from_account_id"], row["to_account_id"]
    states = await _lock_both(conn, tenant_id, src, dst, {
        src: [leg.source_lot_id for leg in legs], dst: [leg.destination_lot_id for leg in legs]})
    fx = Effects(tenant_id, now)
    ctx = EntryContext(actor=actor, reason="transfer reversed", reference=f"transfer/{transfer_id}")
    for leg in legs:
        back: Lot | None = states[dst].lots.get(leg.destination_lot_id)
        if back is None or back.available < leg.amount:
            raise precondition("transfer_id", f"lot {leg.destination_lot_id} no longer holds the transferred credit")
    for leg in legs:
        back = states[dst].lots[leg.destination_lot_id]
        origin = states[src].lots[leg.source_lot_id]
        fx.move(back, EntryKind.TRANSFER_OUT, leg.amount, ctx)
        fx.move(origin, EntryKind.REINSTATE, leg.amount, ctx)
        kind = terminal_kind(origin, now)
        if kind is not None:
            fx.move(origin, kind, leg.amount, ctx)
    await fx.flush(conn)
    await conn.execute(INSERT_REVERSAL, tenant_id, transfer_id)
    return TransferResult(transfer_id, legs, reversed=True)
