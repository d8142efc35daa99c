"""Hold rules: when a hold may be made, committed, released, expired by TTL or reversed. Pure.

Invariants kept here (two-phase semantics like TigerBeetle's pending transfers):
- one hold per key; a key released before its reserve arrived is a tombstone and stays burnt
  (null compensation, SPEC §5), so a late reserve is refused;
- a hold resolves exactly once: repeating the same resolution returns it unchanged, a different
  one is FAILED_PRECONDITION; a commit posts at most what was reserved, in allocation order, and
  a partial commit releases the rest;
- reserve checks the limits, so commit and release never fail for lack of credit;
- real-time holds (release_on_ttl) pass their TTL: they can no longer be committed and the TTL
  sweep releases them; saga holds are never released by time (the coordinator decides);
- only a committed hold reverses, once; the posted amounts go back to the lots they came from.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger_service.domain.allocation import AllocationResult
from ledger_service.domain.model import DEBIT_PREFIX, Allocation, Charge, Hold, HoldStatus
from service_runtime.rejections import conflict, invalid, not_found, precondition

MAX_TTL_S = 90 * 86400
MAX_GRACE_S = 366 * 86400


class ReversalPolicy(enum.StrEnum):
    """What a reversal does with credit whose lot is past its usable window (stored per reversal)."""

    EXPIRE_AT_ONCE = "EXPIRE_AT_ONCE"
    REINSTATE_WITH_GRACE = "REINSTATE_WITH_GRACE"


class ReleaseAction(enum.Enum):
    """What a ReleaseHold does, decided from the hold (or its absence)."""

    BURN_KEY = "burn the key: the reserve never arrived"
    ALREADY_BURNT = "the key is a tombstone already"
    ALREADY_RELEASED = "released (or burnt) before: return it"
    RELEASE = "release every allocation"


@dataclass(frozen=True, slots=True)
class Posting:
    """One allocation's share of a commit: `posted` is consumed, `released` goes back."""

    allocation: Allocation
    posted: int
    released: int


# --- reserve ------------------------------------------------------------------------------------

def check_ttl(ttl_s: int) -> None:
    if ttl_s < 0 or ttl_s > MAX_TTL_S:
        raise invalid("ttl_s", "must be between 0 and 90 days")


def check_reserve_key(hold_key: str) -> None:
    """Caller-chosen hold keys may not take the prefix debit holds are named with."""
    if hold_key.startswith(DEBIT_PREFIX):
        raise invalid("hold_key", "the prefix 'debit:' is reserved for DebitCredits")


def check_new_hold(hold_key: str, holds: Mapping[str, Hold], tombstones: Container[str]) -> None:
    """One hold per key, and a burnt key stays burnt."""
    if hold_key in tombstones:
        raise precondition("hold_key", f"hold {hold_key!r} was released before it was reserved")
    if hold_key in holds:
        raise conflict("hold_key", f"hold {hold_key!r} already exists")


@dataclass(slots=True)  # not frozen: built per debit on the hot path
class HoldRequest:
    """What a reserve (or a one-step debit) asks for, with its charges in minor units."""

    hold_key: str
    unit: str
    charges: list[Charge]
    up_to: bool
    ttl_s: int
    release_on_ttl: bool
    reference: str
    actor: str


def new_hold(ask: HoldRequest, account_id: str, result: AllocationResult, policy_version: int,
             now: datetime) -> Hold:
    """The PENDING hold a reserve records for `result`."""
    return Hold(
        hold_key=ask.hold_key, account_id=account_id, unit=ask.unit, requested=result.requested,
        reserved=result.reserved, allocations=result.allocations, policy_version=policy_version,
        release_on_ttl=ask.release_on_ttl, ttl_expires_at=now + timedelta(seconds=ask.ttl_s),
        created_at=now, reference=ask.reference, up_to=ask.up_to, charges=ask.charges,
    )


def settle_as_debit(hold: Hold, now: datetime) -> None:
    """A debit is a hold born committed: every allocation fully posted at once."""
    hold.status, hold.posted, hold.resolved_at = HoldStatus.COMMITTED, hold.reserved, now
    hold.postings = {a.position: a.amount for a in hold.allocations}


# --- finding a hold -------------------------------------------------------------------------------

def find_hold(holds: Mapping[str, Hold], tombstones: Container[str], hold_key: str, account_id: str) -> Hold:
    """The hold `hold_key` of `account_id`; a tombstone is FAILED_PRECONDITION, anything else NOT_FOUND."""
    hold = holds.get(hold_key)
    if hold is None or hold.account_id != account_id:
        if hold_key in tombstones:
            raise precondition("hold_key", f"hold {hold_key!r} was released before it was reserved")
        raise not_found("hold_key", f"hold {hold_key!r} not found")
    return hold


def past_ttl(hold: Hold, at: datetime) -> bool:
    """A real-time hold whose TTL has passed by `at` (saga holds never pass theirs)."""
    return hold.release_on_ttl and hold.ttl_expires_at <= at


def released_by_ttl(hold: Hold, as_of: datetime) -> bool:
    """Does the TTL sweep at `as_of` release this hold?"""
    return hold.status is HoldStatus.PENDING and past_ttl(hold, as_of)


# --- commit ---------------------------------------------------------------------------------------

def commit_target(hold: Hold, amount: int | None, now: datetime) -> int | None:
    """How much a commit of `amount` (None: all reserved) posts; None if it is already done."""
    target = hold.reserved if amount is None else amount
    if hold.status is HoldStatus.COMMITTED:
        if target != hold.posted:
            raise precondition("amount", f"hold {hold.hold_key!r} was already committed for another amount")
        return None
    if hold.status is not HoldStatus.PENDING:
        raise precondition("hold_key", f"hold {hold.hold_key!r} is {hold.status.value}, cannot commit")
    if target > hold.reserved:
        raise invalid("amount", f"commit of {target} exceeds the {hold.reserved} reserved")
    if past_ttl(hold, now):
        raise precondition("hold_key", f"hold {hold.hold_key!r} passed its TTL")
    return target


def postings(hold: Hold, target: int) -> list[Posting]:
    """`target` posted in allocation order; what each allocation does not post is released."""
    out = []
    left = target
    for a in hold.allocations:
        post = min(a.amount, left)
        left -= post
        out.append(Posting(a, post, a.amount - post))
    return out


# --- release --------------------------------------------------------------------------------------

def release_action(hold_key: str, hold: Hold | None, account_id: str, tombstoned: bool) -> ReleaseAction:
    """What releasing `hold_key` on `account_id` does; a committed hold cannot be released."""
    if hold is None and hold_key.startswith(DEBIT_PREFIX):
        raise not_found("hold_key", f"debit {hold_key!r} not found")
    if hold is None:
        return ReleaseAction.ALREADY_BURNT if tombstoned else ReleaseAction.BURN_KEY
    if hold.account_id != account_id:
        raise not_found("hold_key", f"hold {hold_key!r} not found on account {account_id!r}")
    if hold.status in (HoldStatus.RELEASED, HoldStatus.TOMBSTONE):
        return ReleaseAction.ALREADY_RELEASED
    if hold.status is HoldStatus.COMMITTED:
        raise precondition("hold_key", f"hold {hold_key!r} was committed, cannot release")
    return ReleaseAction.RELEASE


def release_account(hold_key: str, asked: str, found: str | None) -> str:
    """The account a release acts on: the hold's (`found`), or for a hold that never arrived the one
    asked for, so its key can be burnt there."""
    if found is None:
        if not asked:
            raise invalid("account_id", "is required")
        return asked
    if asked and asked != found:
        raise not_found("hold_key", f"hold {hold_key!r} not found on account {asked!r}")
    return found


def tombstone(hold_key: str, account_id: str, now: datetime, *, burnt_now: bool) -> Hold:
    """The view of a burnt key: resolved now if this release burnt it."""
    return Hold(hold_key, account_id, "", 0, 0, [], 0, False, now, now, status=HoldStatus.TOMBSTONE,
                resolved_at=now if burnt_now else None)


# --- reverse --------------------------------------------------------------------------------------

def check_grace(policy: ReversalPolicy, grace_s: int) -> int | None:
    """The grace in seconds a reversal grants (None: expire at once)."""
    if policy is ReversalPolicy.EXPIRE_AT_ONCE:
        return None
    if not 0 < grace_s <= MAX_GRACE_S:
        raise invalid("grace_s", "must be between 1 second and 366 days with REINSTATE_WITH_GRACE")
    return grace_s


def reinstatements(hold: Hold) -> list[tuple[Allocation, int]]:
    """What reversing `hold` gives back, per allocation that posted; only a committed hold, once."""
    if hold.status is not HoldStatus.COMMITTED:
        raise precondition("hold_key", f"hold {hold.hold_key!r} is {hold.status.value}; only committed holds reverse")
    if hold.reversed:
        raise precondition("hold_key", f"hold {hold.hold_key!r} was already reversed")
    out = []
    for a in hold.allocations:
        posted = hold.postings.get(a.position, 0)
        if posted:
            out.append((a, posted))
    return out
