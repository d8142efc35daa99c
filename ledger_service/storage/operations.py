"""The ledger's account verbs: what each one checks and which effects it writes.

Each function returns an `apply(state, effects)` closure for the AccountWriter. An apply first
checks everything (raising Rejection, with nothing changed), then mutates state through Effects.
Invariants each verb keeps:
- GrantCredits: a lot's configuration is written once and never changed.
- ReserveCredits: all-or-nothing (or up-to); limits are checked here so commit/release never fail
  for lack of credit; one hold per key, and a key released before its reserve stays burnt.
- CommitHold / ReleaseHold: a hold resolves exactly once; repeating the same resolution returns
  it, a different one is FAILED_PRECONDITION. A partial commit releases the rest.
- Held credit on a lot that expired meanwhile expires at once when released (SPEC §5).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ledger_service.domain.allocation import allocate
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import DEBIT_PREFIX, Allocation, Charge, Hold, HoldStatus, Lot
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.state import AccountState
from service_runtime.rejections import conflict, invalid, not_found, precondition

Apply = Callable[[AccountState, Effects], Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


# --- grants -------------------------------------------------------------------------------------

def grant_credits(lot: Lot) -> Apply:
    """`lot` carries its configuration; its id, account and balances are filled here."""

    def apply(state: AccountState, fx: Effects) -> Lot:
        new = replace(lot, account_id=state.account_id, created_at=fx.now)
        fx.create(new)
        state.add_lot(new)
        fx.move(new, EntryKind.GRANT, new.amount, EntryContext(actor=new.granted_by, reason=new.reason_code),
                effective_at=new.effective_at)
        return new

    return apply


@dataclass
class VoidResult:
    lot: Lot
    voided: int


def void_grant(lot_id: str, reason: str, actor: str) -> Apply:
    def apply(state: AccountState, fx: Effects) -> VoidResult:
        lot = state.lots.get(lot_id)
        if lot is None or lot.account_id != state.account_id:
            raise not_found("lot_id", f"lot {lot_id!r} not found")
        if lot.closed_at is not None:
            return VoidResult(lot, 0)  # already voided or expired: nothing left to void
        amount = lot.available
        if amount > 0:
            fx.move(lot, EntryKind.VOID, amount, EntryContext(actor=actor, reason=reason))
        fx.close(lot)
        return VoidResult(lot, amount)

    return apply


# --- holds --------------------------------------------------------------------------------------

@dataclass
class ReserveSpec:
    hold_key: str
    unit: str
    charges: list[Charge]
    up_to: bool
    ttl_s: int
    release_on_ttl: bool
    reference: str
    actor: str


def reserve_credits(spec: ReserveSpec) -> Apply:
    def apply(state: AccountState, fx: Effects) -> Hold:
        return _reserve(state, fx, spec)

    return apply


def _reserve(state: AccountState, fx: Effects, spec: ReserveSpec, *, debit: bool = False) -> Hold:
    """Allocates and records the hold; a debit moves credit straight to consumed (one `debits` row)."""
    if spec.hold_key in state.tombstones:
        raise precondition("hold_key", f"hold {spec.hold_key!r} was released before it was reserved")
    if spec.hold_key in state.holds:
        raise conflict("hold_key", f"hold {spec.hold_key!r} already exists")
    result = allocate(spec.charges, state.sorted_lots(spec.unit), state.policy, up_to=spec.up_to, presorted=True)
    hold = Hold(
        hold_key=spec.hold_key, account_id=state.account_id, unit=spec.unit, requested=result.requested,
        reserved=result.reserved, allocations=result.allocations, policy_version=state.policy.version,
        release_on_ttl=spec.release_on_ttl, ttl_expires_at=fx.now + timedelta(seconds=spec.ttl_s),
        created_at=fx.now, reference=spec.reference, up_to=spec.up_to, charges=spec.charges,
    )
    ctx = EntryContext(actor=spec.actor, reference=spec.reference, hold_key=spec.hold_key,
                       policy_version=state.policy.version)
    entry = EntryKind.DEBIT if debit else EntryKind.HOLD
    for a in result.allocations:
        fx.move(state.lots[a.lot_id], entry, a.amount, ctx)
    if debit:
        hold.status, hold.posted, hold.resolved_at = HoldStatus.COMMITTED, hold.reserved, fx.now
        hold.postings = {a.position: a.amount for a in hold.allocations}
        fx.debits.append(hold)
    else:
        fx.holds.append(hold)
    state.holds[hold.hold_key] = hold
    return hold


def commit_hold(hold_key: str, amount: int | None, actor: str) -> Apply:
    """Posts `amount` (None = all reserved) of the hold, in allocation order; releases the rest."""

    def apply(state: AccountState, fx: Effects) -> Hold:
        hold = _hold(state, hold_key)
        target = hold.reserved if amount is None else amount
        if hold.status is HoldStatus.COMMITTED:
            if target != hold.posted:
                raise precondition("amount", f"hold {hold_key!r} was already committed for another amount")
            return hold
        if hold.status is not HoldStatus.PENDING:
            raise precondition("hold_key", f"hold {hold_key!r} is {hold.status.value}, cannot commit")
        if target > hold.reserved:
            raise invalid("amount", f"commit of {target} exceeds the {hold.reserved} reserved")
        if hold.release_on_ttl and hold.ttl_expires_at <= fx.now:
            raise precondition("hold_key", f"hold {hold_key!r} passed its TTL")
        _post(state, fx, hold, target, actor)
        return hold

    return apply


def _post(state: AccountState, fx: Effects, hold: Hold, target: int, actor: str) -> None:
    ctx = EntryContext(actor=actor, reference=hold.reference, hold_key=hold.hold_key,
                       policy_version=hold.policy_version)
    left = target
    for a in hold.allocations:
        post = min(a.amount, left)
        left -= post
        lot = state.lots[a.lot_id]
        if post:
            fx.move(lot, EntryKind.POST, post, ctx)
        hold.postings[a.position] = post
        if post != a.amount:  # a full posting is implied by COMMITTED; only partial ones are stored
            fx.postings.append((hold.hold_key, a.position, post))
        if a.amount - post:
            _release_into(lot, a.amount - post, fx, ctx)
    fx.resolve(hold, HoldStatus.COMMITTED, target, hold.reserved - target, "")


def _release_into(lot: Lot, amount: int, fx: Effects, ctx: EntryContext) -> None:
    """Held → available; if the lot is past its usable window, that credit expires at once."""
    fx.move(lot, EntryKind.RELEASE, amount, ctx)
    kind = terminal_kind(lot, fx.now)
    if kind is not None:
        fx.move(lot, kind, amount, ctx)


def terminal_kind(lot: Lot, now: datetime) -> EntryKind | None:
    """VOID for a voided lot, EXPIRE for one past its usable window, None for a live lot."""
    if lot.closed_at is not None and not lot.is_past_usable(lot.closed_at):
        return EntryKind.VOID
    if lot.is_past_usable(now) or lot.closed_at is not None:
        return EntryKind.EXPIRE
    return None


def release_hold(hold_key: str, reason: str, actor: str) -> Apply:
    def apply(state: AccountState, fx: Effects) -> Hold:
        hold = state.holds.get(hold_key)
        if hold is None and hold_key.startswith(DEBIT_PREFIX):
            raise not_found("hold_key", f"debit {hold_key!r} not found")
        if hold is None:
            if hold_key not in state.tombstones:
                # Null compensation: the reserve never arrived. Burn the key (SPEC §5).
                tomb = Hold(hold_key, state.account_id, "", 0, 0, [], 0, False, fx.now, fx.now)
                fx.resolutions.append((hold_key, HoldStatus.TOMBSTONE.value, 0, 0, reason))
                state.tombstones.add(hold_key)
                tomb.status, tomb.resolved_at = HoldStatus.TOMBSTONE, fx.now
                return tomb
            return Hold(hold_key, state.account_id, "", 0, 0, [], 0, False, fx.now, fx.now,
                        status=HoldStatus.TOMBSTONE)
        if hold.account_id != state.account_id:
            raise not_found("hold_key", f"hold {hold_key!r} not found on account {state.account_id!r}")
        if hold.status in (HoldStatus.RELEASED, HoldStatus.TOMBSTONE):
            return hold
        if hold.status is HoldStatus.COMMITTED:
            raise precondition("hold_key", f"hold {hold_key!r} was committed, cannot release")
        _release_all(state, fx, hold, reason, actor)
        return hold

    return apply


def _release_all(state: AccountState, fx: Effects, hold: Hold, reason: str, actor: str) -> None:
    ctx = EntryContext(actor=actor, reason=reason, reference=hold.reference, hold_key=hold.hold_key,
                       policy_version=hold.policy_version)
    for a in hold.allocations:
        _release_into(state.lots[a.lot_id], a.amount, fx, ctx)
    fx.resolve(hold, HoldStatus.RELEASED, 0, hold.reserved, reason)


def _hold(state: AccountState, hold_key: str) -> Hold:
    hold = state.holds.get(hold_key)
    if hold is None or hold.account_id != state.account_id:
        if hold_key in state.tombstones:
            raise precondition("hold_key", f"hold {hold_key!r} was released before it was reserved")
        raise not_found("hold_key", f"hold {hold_key!r} not found")
    return hold


def debit_credits(spec: ReserveSpec) -> Apply:
    """Reserve and commit in one step (real-time usage)."""

    def apply(state: AccountState, fx: Effects) -> Hold:
        return _reserve(state, fx, spec, debit=True)

    return apply


def release_expired_holds(as_of: datetime, actor: str) -> Apply:
    """Releases this account's real-time holds (release_on_ttl) whose TTL passed by `as_of`.

    Saga holds (release_on_ttl = false) are never released by time: the coordinator decides.
    """

    def apply(state: AccountState, fx: Effects) -> list[str]:
        released = []
        for hold in list(state.holds.values()):
            if hold.status is HoldStatus.PENDING and hold.release_on_ttl and hold.ttl_expires_at <= as_of:
                _release_all(state, fx, hold, "ttl", actor)
                released.append(hold.hold_key)
        return released

    return apply


# --- lifecycle ----------------------------------------------------------------------------------

def expire_lots(as_of: datetime, actor: str) -> Apply:
    """Unused available credit of lots whose usable window ended by `as_of` becomes EXPIRED."""

    def apply(state: AccountState, fx: Effects) -> list[Lot]:
        done = []
        for lot in state.lots.values():
            if lot.account_id == state.account_id and lot.available > 0 and lot.is_past_usable(as_of):
                fx.move(lot, EntryKind.EXPIRE, lot.available, EntryContext(actor=actor, reason="expired"),
                        effective_at=lot.usable_until)
                done.append(lot)
            if lot.is_past_usable(as_of) and lot.held == 0 and lot.available == 0:
                fx.close(lot)
        return done

    return apply


@dataclass
class ReversalResult:
    hold_key: str
    reinstated: list[tuple[Allocation, int]] = field(default_factory=list)
    expired_at_once: int = 0


def reverse_reference(hold_key: str, grace_s: int | None, reason: str, actor: str) -> Apply:
    """Gives a committed hold's posted credit back to the lots it came from (SPEC §8).

    A lot already past its usable window: with grace_s None the credit expires at once
    (breakage, explicit EXPIRE entries); otherwise the lot stays usable grace_s more seconds.
    """

    def apply(state: AccountState, fx: Effects) -> ReversalResult:
        hold = _hold(state, hold_key)
        if hold.status is not HoldStatus.COMMITTED:
            raise precondition("hold_key", f"hold {hold_key!r} is {hold.status.value}; only committed holds reverse")
        if hold.reversed:
            raise precondition("hold_key", f"hold {hold_key!r} was already reversed")
        ctx = EntryContext(actor=actor, reason=reason, reference=hold.reference, hold_key=hold_key,
                           policy_version=hold.policy_version)
        out = ReversalResult(hold_key)
        for a in hold.allocations:
            posted = hold.postings.get(a.position, 0)
            if not posted:
                continue
            lot = state.lots[a.lot_id]
            fx.move(lot, EntryKind.REINSTATE, posted, ctx)
            out.reinstated.append((a, posted))
            kind = terminal_kind(lot, fx.now)
            if kind is not None:
                if grace_s is None or kind is EntryKind.VOID:
                    fx.move(lot, kind, posted, ctx)
                    out.expired_at_once += posted
                else:
                    until = fx.now + timedelta(seconds=grace_s)
                    fx.grace.append((lot.lot_id, until))
                    lot.usable_until = until
                    state.reorder(lot.unit)
        hold.reversed = True
        fx.reversals.append((hold_key, "EXPIRE_AT_ONCE" if grace_s is None else "REINSTATE_WITH_GRACE",
                             out.expired_at_once))
        return out

    return apply

