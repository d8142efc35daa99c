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
    taken: dict[str, int] = {}
    allocations: list[Allocation] = []
    requested = 0
    for index, charge in enumerate(charges):
        requested += charge.amount
        need = charge.amount
        for lot in eligible_lots(lots, charge, policy, presorted=presorted):
            free = lot.available - taken.get(lot.lot_id, 0)
            if free <= 0:
                continue
            take = min(free, need)
            taken[lot.lot_id] = taken.get(lot.lot_id, 0) + take
            allocations.append(Allocation(len(allocations), charge.charge_id, lot.lot_id, take, lot.lot_type))
            need -= take
            if need == 0:
                break
        if need > 0 and not up_to:
            raise precondition(
                f"charges[{index}].amount",
                f"insufficient credits: {charge.amount} needed, {charge.amount - need} available "
                f"on lots eligible for charge {charge.charge_id!r}",
            )
    reserved = sum(a.amount for a in allocations)
    return AllocationResult(allocations, requested, reserved)
