"""Settlement before breakage (SPEC §4) and rollover (SPEC §8). Pure.

Past its usable window a lot pays no new charge (allocation checks service times), but its
remainder is still owed to charges from inside the window that have not reached the ledger yet:
an open invoice period's usage. The invoice service knows up to when an account's usage is final
(`invoiced_through`: the start of its earliest period not FINALIZED or VOIDED); the coordinator
records it on the ledger. A lot *settles* once no such charge can arrive:

- an account never recorded as billed (pure real-time holds and debits) settles at once;
- a billed account's lot settles when `usable_until <= invoiced_through`.

Until then the remainder stays in the lot's `available` bucket but is shown as `pending_expiry`
(it can only pay charges whose service time lies inside the window). When the lot settles, the
expiry sweep moves up to the rollover cap into a new ROLLOVER lot and expires the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ledger_service.domain.model import Lot, LotType, RolloverPolicy
from service_runtime.rejections import invalid

ROLLOVER_REASON = "rollover"


@dataclass(frozen=True, slots=True)
class Settlement:
    """Up to when an account's invoiced usage is final; `billed` False: nothing waits for invoices."""

    billed: bool = False
    invoiced_through: datetime | None = None

    def settles(self, lot: Lot) -> bool:
        """Can no charge from inside `lot`'s usable window still arrive?"""
        if lot.usable_until is None:
            return False
        if not self.billed:
            return True
        return self.invoiced_through is not None and lot.usable_until <= self.invoiced_through

    def advanced_to(self, invoiced_through: datetime) -> Settlement:
        """Recording is monotonic: an earlier instant than the recorded one changes nothing."""
        if self.billed and self.invoiced_through is not None and invoiced_through <= self.invoiced_through:
            return self
        return Settlement(True, invoiced_through)


def pending_expiry(lot: Lot, available: int, at: datetime) -> int:
    """The part of `available` that is past the lot's usable window at `at` (shown apart, not usable)."""
    return available if lot.is_past_usable(at) else 0


def check_rollover(policy: RolloverPolicy, lot_type: LotType) -> None:
    """A rollover policy's own rules (checked at grant, with the lot's)."""
    if lot_type is LotType.ROLLOVER:
        raise invalid("rollover", "a ROLLOVER lot does not roll over again")
    if not 0 <= policy.max_percent <= 100:
        raise invalid("rollover.max_percent", "must be between 0 and 100")
    if policy.max_amount is not None and policy.max_amount < 0:
        raise invalid("rollover.max_amount", "must not be negative")
    if policy.expires_after_s < 0:
        raise invalid("rollover.expires_after_s", "must not be negative")


def rollover_amount(lot: Lot, remainder: int) -> int:
    """How much of `remainder` moves into the ROLLOVER lot (0 without a policy)."""
    policy = lot.rollover
    if policy is None or remainder <= 0:
        return 0
    cap = remainder
    if policy.max_amount is not None:
        cap = min(cap, policy.max_amount)
    if policy.max_percent:
        cap = min(cap, lot.amount * policy.max_percent // 100)  # floor: never more than the percentage
    return max(cap, 0)


def rollover_lot(origin: Lot, lot_id: str, amount: int, now: datetime) -> Lot:
    """The ROLLOVER lot `origin` settles into: its unit, scope, priority and cost basis, a new window.

    It is effective from the origin's usable_until (no gap, no overlap) and expires
    `expires_after_s` after it (0: never); it traces back through `origin_lot_id`.
    """
    start = origin.usable_until or now
    policy = origin.rollover or RolloverPolicy()
    expires = start + timedelta(seconds=policy.expires_after_s) if policy.expires_after_s else None
    return replace(
        origin, lot_id=lot_id, lot_type=LotType.ROLLOVER, amount=amount, effective_at=start, expires_at=expires,
        usable_until=expires, seq=0, granted=0, reinstated=0, available=0, held=0, consumed=0, expired=0,
        voided=0, transferred_out=0, reason_code=ROLLOVER_REASON, origin_lot_id=origin.lot_id, rollover=None,
        created_at=now, closed_at=None,
    )
