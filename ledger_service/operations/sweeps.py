"""Sweeps over a tenant's accounts: ExpireLots (breakage and rollover, once a lot settles) and
ReleaseExpiredHolds (the TTL release); RecordSettlement / GetSettlement, the pointer expiry waits for.

Each account is swept in its own AccountWriter transaction under its own lock, with a per-account
key derived from the caller's, so a retried sweep is a no-op for the accounts already done; the
whole response is stored under the caller's key once every account is done.

A lot's remainder leaves it once, when the lot has settled (`domain/settlement.py`): up to its
rollover cap as TRANSFER_OUT (reason "rollover") into a new ROLLOVER lot's GRANT, the rest as
EXPIRE. Both happen in the account's transaction under its lock, and leave nothing available, so a
retried or concurrent sweep finds nothing more to do on that lot: exactly once per lot.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.domain import holds as hold_rules
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.lifecycle import closes, expires
from ledger_service.domain.model import Lot
from ledger_service.domain.settlement import ROLLOVER_REASON, Settlement, rollover_amount, rollover_lot
from ledger_service.operations.calls import Call, once, part_key, remember_sweep, stored_sweep
from ledger_service.operations.context import Ledger, new_id
from ledger_service.operations.holds import release_all
from ledger_service.storage import sweeps
from ledger_service.storage.account_writer import Apply, Operation
from ledger_service.storage.catalog import get_account
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.state import AccountState, settlement_from

M = TypeVar("M", bound=Message)
TTL_REASON = "ttl"
EXPIRY_REASON = "expired"


def _expire(as_of: datetime, actor: str) -> Apply:
    """Unused available credit of lots whose usable window ended by `as_of` becomes EXPIRED."""

    def apply(state: AccountState, fx: Effects) -> list[Lot]:
        done = []
        for lot in list(state.lots.values()):
            if lot.account_id == state.account_id and expires(lot, as_of, state.settlement):
                _roll_over(state, fx, lot, actor)
                if lot.available:
                    fx.move(lot, EntryKind.EXPIRE, lot.available, EntryContext(actor=actor, reason=EXPIRY_REASON),
                            effective_at=lot.usable_until)
                done.append(lot)
            if closes(lot, as_of):
                fx.close(lot)
        return done

    return apply


def _roll_over(state: AccountState, fx: Effects, lot: Lot, actor: str) -> None:
    """Up to the lot's rollover cap of its remainder moves into a new ROLLOVER lot (journaled both sides)."""
    amount = rollover_amount(lot, lot.available)
    if amount <= 0:
        return
    new = rollover_lot(lot, new_id("lot"), amount, fx.now)
    ctx = EntryContext(actor=actor, reason=ROLLOVER_REASON, reference=f"rollover/{lot.lot_id}")
    fx.move(lot, EntryKind.TRANSFER_OUT, amount, ctx, effective_at=lot.usable_until)
    fx.create(new)
    state.add_lot(new)
    fx.move(new, EntryKind.GRANT, amount, ctx, effective_at=new.effective_at)


async def expire_lots(ledger: Ledger, call: Call[M], as_of: datetime, account_id: str,
                      pack_part: Callable[[list[Lot]], M],
                      pack_whole: Callable[[list[tuple[Lot, int] | M]], M]) -> M:
    """Expires due lots of one account, or ("" ) of every account with lots due by `as_of`.

    `pack_part` is what one account's key stores (the lots' ids); `pack_whole` gets, per account in
    order, the lots expired now (with their unit's scale) or the part an earlier try stored.
    """
    stored = await stored_sweep(ledger, call)
    if stored is not None:
        return stored
    accounts = [account_id] if account_id else await sweeps.accounts_with_lots_due(ledger.pool, call.tenant_id, as_of)
    pieces: list[tuple[Lot, int] | M] = []
    for account in accounts:
        op = Operation(call.method, part_key(call, account), call.digest, _expire(as_of, call.actor), pack_part)
        outcome = await ledger.writer.submit(call.tenant_id, account, op)
        if isinstance(outcome.result, list):
            pieces.extend([(lot, await ledger.scale(call.tenant_id, lot.unit)) for lot in outcome.result])
        elif outcome.replay is not None:
            pieces.append(call.response.FromString(outcome.replay))
    return await remember_sweep(ledger, call, pack_whole(pieces))


def _release_expired(as_of: datetime, actor: str) -> Apply:
    """Releases this account's real-time holds (release_on_ttl) whose TTL passed by `as_of`.

    Saga holds (release_on_ttl = false) are never released by time: the coordinator decides.
    """

    def apply(state: AccountState, fx: Effects) -> list[str]:
        released = []
        for hold in list(state.holds.values()):
            if hold_rules.released_by_ttl(hold, as_of):
                release_all(state, fx, hold, TTL_REASON, actor)
                released.append(hold.hold_key)
        return released

    return apply


async def release_expired_holds(ledger: Ledger, call: Call[M], as_of: datetime, pack: Callable[[list[str]], M],
                                keys_of: Callable[[M], list[str]]) -> M:
    """Releases every real-time hold of the tenant whose TTL passed by `as_of`; returns their keys."""
    stored = await stored_sweep(ledger, call)
    if stored is not None:
        return stored
    released: list[str] = []
    for account, keys in (await sweeps.holds_past_ttl(ledger.pool, call.tenant_id, as_of)).items():
        op = Operation(call.method, part_key(call, account), call.digest, _release_expired(as_of, call.actor), pack,
                       hold_keys=tuple(keys))
        outcome = await ledger.writer.submit(call.tenant_id, account, op)
        if outcome.replay is not None:
            released.extend(keys_of(call.response.FromString(outcome.replay)))
        else:
            released.extend(outcome.result)
    return await remember_sweep(ledger, call, pack(released))


# --- settlement ---------------------------------------------------------------------------------

async def record_settlement(ledger: Ledger, call: Call[M], account_id: str, invoiced_through: datetime,
                            pack: Callable[[str, Settlement], M]) -> M:
    """Moves the account's invoiced_through forward (monotonic), once per key; marks it billed."""

    async def work(conn: asyncpg.Connection) -> Settlement:
        await get_account(conn, call.tenant_id, account_id)
        recorded = await sweeps.record_settlement(conn, call.tenant_id, account_id, invoiced_through, ledger.now())
        return settlement_from(recorded)

    return await once(ledger, call, work, lambda s: pack(account_id, s))


async def get_settlement(ledger: Ledger, tenant_id: str, account_id: str, pack: Callable[[str, Settlement], M]) -> M:
    await get_account(ledger.pool, tenant_id, account_id)
    return pack(account_id, settlement_from(await sweeps.settlement_of(ledger.pool, tenant_id, account_id)))
