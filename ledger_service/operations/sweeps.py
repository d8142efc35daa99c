"""Sweeps over a tenant's accounts: ExpireLots (breakage) and ReleaseExpiredHolds (the TTL release).

Each account is swept in its own AccountWriter transaction under its own lock, with a per-account
key derived from the caller's, so a retried sweep is a no-op for the accounts already done; the
whole response is stored under the caller's key once every account is done.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from google.protobuf.message import Message

from ledger_service.domain import holds as hold_rules
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.lifecycle import closes, expires
from ledger_service.domain.model import Lot
from ledger_service.operations.calls import Call, part_key, remember_sweep, stored_sweep
from ledger_service.operations.context import Ledger
from ledger_service.operations.holds import release_all
from ledger_service.storage import sweeps
from ledger_service.storage.account_writer import Apply, Operation
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.state import AccountState

M = TypeVar("M", bound=Message)
TTL_REASON = "ttl"
EXPIRY_REASON = "expired"


def _expire(as_of: datetime, actor: str) -> Apply:
    """Unused available credit of lots whose usable window ended by `as_of` becomes EXPIRED."""

    def apply(state: AccountState, fx: Effects) -> list[Lot]:
        done = []
        for lot in state.lots.values():
            if lot.account_id == state.account_id and expires(lot, as_of):
                fx.move(lot, EntryKind.EXPIRE, lot.available, EntryContext(actor=actor, reason=EXPIRY_REASON),
                        effective_at=lot.usable_until)
                done.append(lot)
            if closes(lot, as_of):
                fx.close(lot)
        return done

    return apply


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
