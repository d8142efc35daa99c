"""Transfer rules: between accounts of one hierarchy, from lots usable now in policy order (SPEC §8). Pure.

A transfer takes credit from the source account's lots usable now, in policy order, and creates
one lot per source lot on the destination carrying the source's type, priority, expiry, scope and
cost basis. A reversal moves each leg back, once, only while the destination lot still holds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from ledger_service.domain.model import Lot
from ledger_service.domain.policy import Policy
from service_runtime.rejections import invalid, precondition


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


def check_accounts(src: str, dst: str) -> None:
    if src == dst:
        raise invalid("to_account_id", "must differ from from_account_id")


def check_same_hierarchy(source_root: str, destination_root: str) -> None:
    if source_root != destination_root:
        raise precondition("to_account_id", "accounts are not in the same hierarchy")


def check_limit(amount: int, limit: int | None, src: str) -> None:
    if limit is not None and amount > limit:
        raise precondition("amount", f"exceeds the per-transfer limit {limit} of account {src!r}")


def sources(lots: Iterable[Lot], amount: int, now: datetime, policy: Policy) -> list[tuple[Lot, int]]:
    """(source lot, amount taken) in policy order from the lots usable now; refused if short."""
    usable = sorted((lot for lot in lots if lot.available > 0 and lot.usable_for(now, now)), key=policy.sort_key())
    if sum(lot.available for lot in usable) < amount:
        raise precondition("amount", "insufficient credits on the source account")
    out = []
    left = amount
    for lot in usable:
        take = min(lot.available, left)
        left -= take
        out.append((lot, take))
        if left == 0:
            break
    return out


def destination_lot(source: Lot, lot_id: str, account_id: str, amount: int, actor: str, now: datetime) -> Lot:
    """The destination's copy of `source` for `amount` (balances empty: the GRANT entry fills them)."""
    return replace(source, lot_id=lot_id, account_id=account_id, amount=amount, origin_lot_id=source.lot_id,
                   granted_by=actor, created_at=now, closed_at=None, granted=0, reinstated=0, available=0,
                   held=0, consumed=0, expired=0, voided=0, transferred_out=0)


def check_not_reversed(transfer_id: str, reversed_: bool) -> None:
    """A transfer reverses once."""
    if reversed_:
        raise precondition("transfer_id", f"transfer {transfer_id!r} was already reversed")


def check_still_held(legs: list[Leg], destination: Mapping[str, Lot]) -> None:
    """A reversal needs every destination lot to still hold what it received."""
    for leg in legs:
        back = destination.get(leg.destination_lot_id)
        if back is None or back.available < leg.amount:
            raise precondition("transfer_id", f"lot {leg.destination_lot_id} no longer holds the transferred credit")
