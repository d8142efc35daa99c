"""Credit that moves back or across: ReverseHold (alias ReverseReference), TransferCredits, ReverseTransfer,
SetTransferLimit.

ReverseHold gives a committed hold's posted credit back to the lots it came from (SPEC §8),
through the AccountWriter. A transfer locks both accounts (in id order) in one idempotent
transaction and writes its journal through Effects, like the writer does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.domain import holds as hold_rules
from ledger_service.domain import transfers as rules
from ledger_service.domain.amounts import AmountText
from ledger_service.domain.holds import ReversalPolicy
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.lifecycle import reinstated_fate, terminal_kind
from ledger_service.domain.model import Allocation
from ledger_service.domain.transfers import Leg, TransferResult
from ledger_service.operations.calls import Call, once, submit
from ledger_service.operations.context import Ledger, new_id
from ledger_service.operations.holds import hold_target
from ledger_service.storage import catalog
from ledger_service.storage import transfers as rows
from ledger_service.storage.account_writer import Apply
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.state import AccountState

M = TypeVar("M", bound=Message)
TRANSFER_REVERSED = "transfer reversed"


# --- ReverseHold --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reversal:
    hold_key: str
    grace_s: int | None  # None: credit on a lot past its window expires at once
    reason: str


@dataclass
class ReversalResult:
    hold_key: str
    reinstated: list[tuple[Allocation, int]] = field(default_factory=list)
    expired_at_once: int = 0


def _reverse(reversal: Reversal, actor: str) -> Apply:
    """A lot already past its usable window: without grace the credit expires at once (breakage,
    explicit EXPIRE entries) if the lot has settled, else it stays pending expiry until it does;
    with grace the lot stays usable grace_s more seconds."""

    def apply(state: AccountState, fx: Effects) -> ReversalResult:
        hold = hold_rules.find_hold(state.holds, state.tombstones, reversal.hold_key, state.account_id)
        given_back = hold_rules.reinstatements(hold)
        ctx = EntryContext(actor=actor, reason=reversal.reason, reference=hold.reference, hold_key=hold.hold_key,
                           policy_version=hold.policy_version)
        out = ReversalResult(hold.hold_key)
        for a, posted in given_back:
            lot = state.lots[a.lot_id]
            fx.move(lot, EntryKind.REINSTATE, posted, ctx)
            out.reinstated.append((a, posted))
            fate = reinstated_fate(lot, fx.now, reversal.grace_s, state.settlement)
            if isinstance(fate, EntryKind):
                fx.move(lot, fate, posted, ctx)
                out.expired_at_once += posted
            elif isinstance(fate, datetime):
                fx.grace.append((lot.lot_id, fate))
                lot.usable_until = fate
                state.reorder(lot.unit)
        hold.reversed = True
        policy = ReversalPolicy.EXPIRE_AT_ONCE if reversal.grace_s is None else ReversalPolicy.REINSTATE_WITH_GRACE
        fx.reversals.append((hold.hold_key, policy.value, out.expired_at_once))
        return out

    return apply


async def reverse_hold(ledger: Ledger, call: Call[M], reversal: Reversal,
                       pack: Callable[[ReversalResult, int], M]) -> M:
    """Reverses a committed hold's postings onto their original lots, once."""
    account_id, scale = await hold_target(ledger, call.tenant_id, reversal.hold_key)
    return await submit(ledger, call, account_id, _reverse(reversal, call.actor), lambda r: pack(r, scale),
                        hold_keys=(reversal.hold_key,))


# --- transfers ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TransferOrder:
    from_account_id: str
    to_account_id: str
    unit: str
    amount: AmountText
    reason: str


async def _transfer(conn: asyncpg.Connection, call: Call[M], order: TransferOrder, amount: int,
                    clock: Callable[[], datetime]) -> TransferResult:
    tenant, src, dst = call.tenant_id, order.from_account_id, order.to_account_id
    states = await rows.lock_both(conn, tenant, src, dst, {})
    now = clock()  # read under both account locks: entries of an account are stamped in commit order
    source, dest = states[src], states[dst]
    rules.check_same_hierarchy(source.root_account_id, dest.root_account_id)
    rules.check_limit(amount, await catalog.transfer_limit(conn, tenant, src, order.unit), src)
    taken = rules.sources(source.lots_in(order.unit), amount, now, source.policy)
    fx = Effects(tenant, now)
    transfer_id = new_id("xfer")
    ctx = EntryContext(actor=call.actor, reason=order.reason, reference=f"transfer/{transfer_id}")
    legs: list[Leg] = []
    for lot, take in taken:
        fx.move(lot, EntryKind.TRANSFER_OUT, take, ctx)
        copy = rules.destination_lot(lot, new_id("lot"), dst, take, call.actor, now)
        fx.create(copy)
        fx.move(copy, EntryKind.GRANT, take, ctx, effective_at=copy.effective_at)
        legs.append(Leg(lot.lot_id, copy.lot_id, take))
    await fx.flush(conn)
    await rows.insert_transfer(conn, tenant, transfer_id, src, dst, order.unit, amount, legs)
    return TransferResult(transfer_id, legs)


async def transfer_credits(ledger: Ledger, call: Call[M], order: TransferOrder,
                           pack: Callable[[TransferResult, int], M]) -> M:
    """Moves credit between accounts of one hierarchy: one destination lot per source lot."""
    rules.check_accounts(order.from_account_id, order.to_account_id)
    scale = await ledger.scale(call.tenant_id, order.unit)
    amount = order.amount.minor(scale)

    async def work(conn: asyncpg.Connection) -> TransferResult:
        return await _transfer(conn, call, order, amount, ledger.now)

    return await once(ledger, call, work, lambda r: pack(r, scale))


async def _reverse_transfer(conn: asyncpg.Connection, call: Call[M], transfer_id: str,
                            clock: Callable[[], datetime]) -> TransferResult:
    transfer = await rows.get_transfer(conn, call.tenant_id, transfer_id)
    rules.check_not_reversed(transfer_id, transfer.reversed)
    src, dst, legs = transfer.from_account_id, transfer.to_account_id, transfer.legs
    states = await rows.lock_both(conn, call.tenant_id, src, dst, {
        src: [leg.source_lot_id for leg in legs], dst: [leg.destination_lot_id for leg in legs]})
    rules.check_still_held(legs, states[dst].lots)
    now = clock()  # under both account locks, as in _transfer
    fx = Effects(call.tenant_id, now)
    ctx = EntryContext(actor=call.actor, reason=TRANSFER_REVERSED, reference=f"transfer/{transfer_id}")
    for leg in legs:
        origin = states[src].lots[leg.source_lot_id]
        fx.move(states[dst].lots[leg.destination_lot_id], EntryKind.TRANSFER_OUT, leg.amount, ctx)
        fx.move(origin, EntryKind.REINSTATE, leg.amount, ctx)
        kind = terminal_kind(origin, now, states[src].settlement)
        if kind is not None:
            fx.move(origin, kind, leg.amount, ctx)
    await fx.flush(conn)
    await rows.insert_reversal(conn, call.tenant_id, transfer_id)
    return TransferResult(transfer_id, legs, reversed=True)


async def reverse_transfer(ledger: Ledger, call: Call[M], transfer_id: str,
                           pack: Callable[[TransferResult, int], M]) -> M:
    """Moves each leg of a transfer back, once, while the destination lots still hold it."""
    scale = await ledger.scale(call.tenant_id, await rows.transfer_unit(ledger.pool, call.tenant_id, transfer_id))

    async def work(conn: asyncpg.Connection) -> TransferResult:
        return await _reverse_transfer(conn, call, transfer_id, ledger.now)

    return await once(ledger, call, work, lambda r: pack(r, scale))


async def set_transfer_limit(ledger: Ledger, call: Call[M], account_id: str, unit: str,
                             max_per_transfer: AmountText | None,
                             pack: Callable[[str, str, int | None, int], M]) -> M:
    """The most one transfer may take from the account in `unit` (None: no limit)."""
    scale = await ledger.scale(call.tenant_id, unit)
    limit = max_per_transfer.minor(scale) if max_per_transfer is not None else None

    async def work(conn: asyncpg.Connection) -> int | None:
        await catalog.set_transfer_limit(conn, call.tenant_id, account_id, unit, limit)
        return limit

    return await once(ledger, call, work, lambda lim: pack(account_id, unit, lim, scale))
