"""Allocation: which lots pay which charges, under a consumption policy. Pure and deterministic.

Invariants kept here (checked by tests/ledger/test_invariants.py):
- a lot pays a charge only if the lot's unit matches, its scope covers the charge and the charge's
  service interval lies inside the lot's usable window (SPEC §4);
- no lot gives more than its available balance (no lot goes negative);
- all-or-nothing unless `up_to`: either every charge is fully covered or nothing is allocated.
Charges are served in request order; each takes from its eligible lots in policy order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger_service.domain.model import Allocation, Charge, Lot
from ledger_service.domain.policy import Policy
from service_runtime.rejections import precondition


@dataclass(frozen=True, slots=True)
class AllocationResult:
    allocations: list[Allocation]
    requested: int
    reserved: int


def ineligibility(lot: Lot, charge: Charge) -> str:
    """Why `lot` cannot pay `charge` ("" if it can, balance aside)."""
    if not lot.scope.covers(charge.kind, charge.name):
        return "scope does not cover this charge"
    if charge.service_start < lot.effective_at:
        return "charge is before the lot is effective"
    if not lot.usable_for(charge.service_start, charge.service_end):
        return "charge is after the lot expires"
    return ""


def eligible_lots(lots: Sequence[Lot], charge: Charge, policy: Policy, *, presorted: bool = False) -> list[Lot]:
    """The lots that may pay `charge`, in policy order (`presorted`: `lots` already are)."""
    found = [
        lot for lot in lots
        if lot.available > 0
        and lot.scope.covers(charge.kind, charge.name)
        and lot.usable_for(charge.service_start, charge.service_end)
    ]
    if not presorted:
        found.sort(key=policy.sort_key())
    return found


def allocate(charges: Sequence[Charge], lots: Sequence[Lot], policy: Policy, *, up_to: bool,
             presorted: bool = False) -> AllocationResult:
    """Chooses lots for `charges` without changing them; raises FAILED_PRECONDITION if short.

    The caller applies the result (moves available → held) only after this returns. With
    `presorted`, `lots` are already in policy order (the order depends only on lot configuration,
    so a batch sorts once).
    """
    eligible = [eligible_lots(lots, charge, policy, presorted=presorted) for charge in charges]
    allocations = [Allocation(position, charges[index].charge_id, lot.lot_id, amount, lot.lot_type)
                   for position, (index, lot, amount) in enumerate(takes(charges, eligible, up_to=up_to))]
    return AllocationResult(allocations, sum(c.amount for c in charges), sum(a.amount for a in allocations))


def takes(charges: Sequence[Charge], eligible: Sequence[Sequence[Lot]], *, up_to: bool) -> list[tuple[int, Lot, int]]:
    """The core of `allocate`: (charge index, lot, amount) in allocation order, each charge taking from
    `eligible[index]` (its eligible lots in policy order; lots with nothing available are skipped
    here) as far as their available balance goes. Raises FAILED_PRECONDITION if short (unless `up_to`).

    A batch of debits finds each distinct charge's eligible lots once (eligibility depends only on the
    lot's configuration, not its balance) and calls this per debit (operations/batch_debits.py)."""
    taken: dict[str, int] = {}
    out: list[tuple[int, Lot, int]] = []
    for index, charge in enumerate(charges):
        need = charge.amount
        for lot in eligible[index]:
            free = lot.available - taken.get(lot.lot_id, 0)
            if free <= 0:
                continue
            take = min(free, need)
            taken[lot.lot_id] = taken.get(lot.lot_id, 0) + take
            out.append((index, lot, take))
            need -= take
            if need == 0:
                break
        if need > 0 and not up_to:
            raise precondition(
                f"charges[{index}].amount",
                f"insufficient credits: {charge.amount} needed, {charge.amount - need} available "
                f"on lots eligible for charge {charge.charge_id!r}",
            )
    return out
