"""Holds and debits: ReserveCredits, CommitHold, ReleaseHold, DebitCredits, BatchDebitCredits through the
AccountWriter, and the hold reads GetHold, ListHolds, ExplainAllocation.

The rules are `ledger_service.domain.holds` (and `lifecycle` for where released credit goes). Each
write is an `apply(state, effects)` step run by the AccountWriter in the account's group-commit
transaction: it checks everything first (raising Rejection, with nothing changed), then changes
state through Effects. No step adds a round trip: the writer loads the account once per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import Message

from ledger_service.domain import holds as rules
from ledger_service.domain.allocation import allocate
from ledger_service.domain.amounts import AmountText, RequestedCharge
from ledger_service.domain.holds import HoldRequest, ReleaseAction
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.lifecycle import terminal_kind
from ledger_service.domain.model import DEBIT_PREFIX, Hold, HoldStatus, Lot
from ledger_service.domain.settlement import Settlement
from ledger_service.operations.calls import Call, operation, submit, unwrap
from ledger_service.operations.context import Ledger
from ledger_service.storage import reads
from ledger_service.storage.account_writer import Apply, Operation, Outcome
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.reads import Explanation
from ledger_service.storage.state import AccountState
from service_runtime.pages import encode_token
from service_runtime.rejections import Reason, Rejection

M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass(slots=True)  # not frozen: built per debit on the hot path
class Reserve:
    """A ReserveCredits or DebitCredits request, its amounts still text."""

    account_id: str
    unit: str
    charges: list[RequestedCharge]
    up_to: bool
    reference: str
    hold_key: str = ""        # a debit's is derived from its idempotency key
    ttl_s: int = 0            # 0: the server's default
    release_on_ttl: bool = False


# --- the AccountWriter steps ----------------------------------------------------------------------

def _record_hold(state: AccountState, fx: Effects, ask: HoldRequest, *, debit: bool) -> Hold:
    """Allocates and records the hold; a debit moves credit straight to consumed (one `debits` row)."""
    rules.check_new_hold(ask.hold_key, state.holds, state.tombstones)
    result = allocate(ask.charges, state.sorted_lots(ask.unit), state.policy, up_to=ask.up_to, presorted=True)
    hold = rules.new_hold(ask, state.account_id, result, state.policy.version, fx.now)
    ctx = EntryContext(actor=ask.actor, reference=ask.reference, hold_key=ask.hold_key,
                       policy_version=state.policy.version)
    entry = EntryKind.DEBIT if debit else EntryKind.HOLD
    for a in result.allocations:
        fx.move(state.lots[a.lot_id], entry, a.amount, ctx)
    if debit:
        rules.settle_as_debit(hold, fx.now)
        fx.debits.append(hold)
    else:
        fx.holds.append(hold)
    state.holds[hold.hold_key] = hold
    return hold


def _reserve(ask: HoldRequest) -> Apply:
    def apply(state: AccountState, fx: Effects) -> Hold:
        return _record_hold(state, fx, ask, debit=False)

    return apply


def _debit(ask: HoldRequest) -> Apply:
    """Reserve and commit in one step (real-time usage)."""

    def apply(state: AccountState, fx: Effects) -> Hold:
        return _record_hold(state, fx, ask, debit=True)

    return apply


def _commit(hold_key: str, amount: int | None, actor: str) -> Apply:
    """Posts `amount` (None = all reserved) of the hold, in allocation order; releases the rest."""

    def apply(state: AccountState, fx: Effects) -> Hold:
        hold = rules.find_hold(state.holds, state.tombstones, hold_key, state.account_id)
        target = rules.commit_target(hold, amount, fx.now)
        if target is not None:
            _post(state, fx, hold, target, actor)
        return hold

    return apply


def _post(state: AccountState, fx: Effects, hold: Hold, target: int, actor: str) -> None:
    ctx = EntryContext(actor=actor, reference=hold.reference, hold_key=hold.hold_key,
                       policy_version=hold.policy_version)
    for p in rules.postings(hold, target):
        lot = state.lots[p.allocation.lot_id]
        if p.posted:
            fx.move(lot, EntryKind.POST, p.posted, ctx)
        hold.postings[p.allocation.position] = p.posted
        if p.released:  # a full posting is implied by COMMITTED; only partial ones are stored
            fx.postings.append((hold.hold_key, p.allocation.position, p.posted))
            release_into(lot, p.released, fx, ctx, state.settlement)
    fx.resolve(hold, HoldStatus.COMMITTED, target, hold.reserved - target, "")


def release_into(lot: Lot, amount: int, fx: Effects, ctx: EntryContext, settlement: Settlement) -> None:
    """Held → available; if the lot is voided, or past its usable window and settled, that credit
    leaves at once (past its window but not settled, it stays pending expiry for what is owed it)."""
    fx.move(lot, EntryKind.RELEASE, amount, ctx)
    kind = terminal_kind(lot, fx.now, settlement)
    if kind is not None:
        fx.move(lot, kind, amount, ctx)


def release_all(state: AccountState, fx: Effects, hold: Hold, reason: str, actor: str) -> None:
    """Releases every allocation of a pending hold and resolves it RELEASED."""
    ctx = EntryContext(actor=actor, reason=reason, reference=hold.reference, hold_key=hold.hold_key,
                       policy_version=hold.policy_version)
    for a in hold.allocations:
        release_into(state.lots[a.lot_id], a.amount, fx, ctx, state.settlement)
    fx.resolve(hold, HoldStatus.RELEASED, 0, hold.reserved, reason)


def _release(hold_key: str, reason: str, actor: str) -> Apply:
    def apply(state: AccountState, fx: Effects) -> Hold:
        hold = state.holds.get(hold_key)
        action = rules.release_action(hold_key, hold, state.account_id, hold_key in state.tombstones)
        if action is ReleaseAction.BURN_KEY:  # null compensation: the reserve never arrived (SPEC §5)
            fx.resolutions.append((hold_key, HoldStatus.TOMBSTONE.value, 0, 0, reason))
            state.tombstones.add(hold_key)
            return rules.tombstone(hold_key, state.account_id, fx.now, burnt_now=True)
        if action is ReleaseAction.ALREADY_BURNT:
            return rules.tombstone(hold_key, state.account_id, fx.now, burnt_now=False)
        assert hold is not None
        if action is ReleaseAction.RELEASE:
            release_all(state, fx, hold, reason, actor)
        return hold

    return apply


# --- the verbs ------------------------------------------------------------------------------------

def _ask(reserve: Reserve, hold_key: str, scale: int, ttl_s: int, actor: str) -> HoldRequest:
    return HoldRequest(hold_key=hold_key, unit=reserve.unit, charges=[c.scaled(scale) for c in reserve.charges],
                       up_to=reserve.up_to, ttl_s=ttl_s, release_on_ttl=reserve.release_on_ttl,
                       reference=reserve.reference, actor=actor)


async def reserve_credits(ledger: Ledger, call: Call[M], reserve: Reserve, pack: Callable[[Hold, int], M]) -> M:
    scale = await ledger.scale(call.tenant_id, reserve.unit)
    ask = _ask(reserve, reserve.hold_key, scale, reserve.ttl_s or ledger.settings.hold_ttl_s, call.actor)
    return await submit(ledger, call, reserve.account_id, _reserve(ask), lambda h: pack(h, scale),
                        hold_keys=(ask.hold_key,))


async def hold_target(ledger: Ledger, tenant_id: str, hold_key: str) -> tuple[str, int]:
    """(account, unit scale) of a hold or debit; a tombstone or an unknown key is NOT_FOUND."""
    target = await reads.hold_account(ledger.pool, tenant_id, hold_key)
    if target is None:
        hold = await reads.get_hold(ledger.pool, tenant_id, hold_key)  # NOT_FOUND, or a tombstone
        raise Rejection(Reason.NOT_FOUND, f"hold {hold_key!r} is {hold.status.value}", "hold_key")
    account_id, unit = target
    return account_id, await ledger.scale(tenant_id, unit)


async def commit_hold(ledger: Ledger, call: Call[M], hold_key: str, amount: AmountText | None,
                      pack: Callable[[Hold, int], M]) -> M:
    account_id, scale = await hold_target(ledger, call.tenant_id, hold_key)
    target = amount.minor(scale) if amount is not None else None
    return await submit(ledger, call, account_id, _commit(hold_key, target, call.actor), lambda h: pack(h, scale),
                        hold_keys=(hold_key,))


async def release_hold(ledger: Ledger, call: Call[M], hold_key: str, account_id: str, reason: str,
                       pack: Callable[[Hold, int], M]) -> M:
    """Releases a pending hold; a hold that has not arrived (or never will) leaves a tombstone."""
    found = await reads.hold_account(ledger.pool, call.tenant_id, hold_key)
    account = rules.release_account(hold_key, account_id, found[0] if found else None)
    scale = await ledger.scale(call.tenant_id, found[1]) if found else 0
    return await submit(ledger, call, account, _release(hold_key, reason, call.actor), lambda h: pack(h, scale),
                        hold_keys=(hold_key,))


def _debit_op(call: Call[M], debit: Reserve, scale: int, pack: Callable[[Hold, int], M], *,
              audited: bool) -> Operation:
    """A debit's hold key is derived from its idempotency key ("debit:<key>", a prefix reserves
    may not use), so a debit whose key is unseen cannot find an existing hold: none is loaded."""
    ask = _ask(debit, f"{DEBIT_PREFIX}{call.key}", scale, 0, call.actor)
    return operation(call, _debit(ask), lambda h: pack(h, scale), audited=audited)


async def debit_credits(ledger: Ledger, call: Call[M], debit: Reserve, pack: Callable[[Hold, int], M]) -> M:
    scale = await ledger.scale(call.tenant_id, debit.unit)
    op = _debit_op(call, debit, scale, pack, audited=True)
    return unwrap(await ledger.writer.submit(call.tenant_id, debit.account_id, op), call.response)


def _nested(rej: Rejection, prefix: str) -> Rejection:
    field = f"{prefix}.{rej.field}"
    said = rej.message.removeprefix(f"{rej.field}: ") if rej.field else rej.message  # Rejection adds it again
    return Rejection(rej.reason, said, field)


async def batch_debit_credits(ledger: Ledger, tenant_id: str, debits: list[tuple[Call[M], Reserve] | Rejection],
                              pack: Callable[[Hold, int], M]) -> list[M | Exception]:
    """Each debit on its own (a refused one names `debits[i].<field>`); one writer batch per account."""
    scales: dict[str, int] = {}
    slots: list[tuple[str, Operation, type[M]] | Rejection] = []
    for i, item in enumerate(debits):
        if isinstance(item, Rejection):  # refused while unpacking
            slots.append(_nested(item, f"debits[{i}]"))
            continue
        call, debit = item
        try:
            scale = scales.get(debit.unit)
            if scale is None:
                scale = scales[debit.unit] = await ledger.scale(tenant_id, debit.unit)
            slots.append((debit.account_id, _debit_op(call, debit, scale, pack, audited=False), call.response))
        except Rejection as rej:
            slots.append(_nested(rej, f"debits[{i}]"))
    outcomes = await _submit_by_account(ledger, tenant_id, slots)
    results: list[M | Exception] = []
    for i, slot in enumerate(slots):
        got = slot if isinstance(slot, Rejection) else outcomes[i]
        results.append(got if isinstance(got, Exception) else unwrap(got, slot[2]))  # type: ignore[index]
    return results


async def _submit_by_account(ledger: Ledger, tenant_id: str, slots: list[Any]) -> dict[int, Outcome | Exception]:
    by_account: dict[str, list[int]] = {}
    for i, slot in enumerate(slots):
        if not isinstance(slot, Rejection):
            by_account.setdefault(slot[0], []).append(i)
    outcomes: dict[int, Outcome | Exception] = {}

    async def one_account(account_id: str, indexes: list[int]) -> None:
        ops = [slots[i][1] for i in indexes]
        for i, res in zip(indexes, await ledger.writer.submit_many(tenant_id, account_id, ops), strict=True):
            outcomes[i] = res

    await asyncio.gather(*(one_account(a, idx) for a, idx in by_account.items()))
    return outcomes


# --- reads ----------------------------------------------------------------------------------------

async def get_hold(ledger: Ledger, tenant_id: str, hold_key: str, pack: Callable[[Hold, int], T]) -> T:
    hold = await reads.get_hold(ledger.pool, tenant_id, hold_key)
    return pack(hold, await ledger.scale(tenant_id, hold.unit) if hold.unit else 0)


@dataclass(frozen=True, slots=True)
class HoldQuery:
    account_id: str               # "": all
    status: HoldStatus | None     # None: all
    created_before: datetime | None
    hold_key_prefix: str
    after_key: str
    limit: int


async def list_holds(ledger: Ledger, tenant_id: str, query: HoldQuery,
                     pack: Callable[[Hold, int], T]) -> tuple[list[T], str]:
    """One page of holds in key order, and the next page's token ("" after the last)."""
    holds = await reads.list_holds(ledger.pool, tenant_id, query.account_id, query.status, query.created_before,
                                   query.hold_key_prefix, query.after_key, query.limit)
    packed = [pack(h, await ledger.scale(tenant_id, h.unit)) for h in holds]
    return packed, encode_token(holds[-1].hold_key) if len(holds) == query.limit else ""


async def explain_allocation(ledger: Ledger, tenant_id: str, hold_key: str,
                             pack: Callable[[Explanation, int], T]) -> T:
    """Why each lot paid what it paid for a hold: eligibility and the policy's sort values."""
    ex = await reads.explain_allocation(ledger.pool, tenant_id, hold_key)
    return pack(ex, await ledger.scale(tenant_id, ex.hold.unit))
