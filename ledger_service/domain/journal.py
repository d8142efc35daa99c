"""Journal entry kinds, the bucket each moves between, and replay of a lot's buckets.

Every entry moves a positive `amount` from one bucket of a lot to another; GRANT and REINSTATE
bring credit in from outside (counted in `granted` / `reinstated`). Replaying a lot's entries
therefore rebuilds its projection row exactly, and keeps the conservation invariant (SPEC §7):

    granted + reinstated = available + held + consumed + expired + voided + transferred_out
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


class EntryKind(enum.StrEnum):
    GRANT = "GRANT"
    HOLD = "HOLD"
    POST = "POST"
    DEBIT = "DEBIT"
    RELEASE = "RELEASE"
    EXPIRE = "EXPIRE"
    VOID = "VOID"
    REINSTATE = "REINSTATE"
    TRANSFER_OUT = "TRANSFER_OUT"


BUCKETS = ("granted", "reinstated", "available", "held", "consumed", "expired", "voided", "transferred_out")

# kind -> (bucket credited, bucket debited); "granted"/"reinstated" are sources counted upward.
MOVES: dict[EntryKind, tuple[str, ...]] = {
    EntryKind.GRANT: ("granted", "available"),
    EntryKind.REINSTATE: ("reinstated", "available"),
    EntryKind.HOLD: ("available", "held"),
    EntryKind.POST: ("held", "consumed"),
    EntryKind.DEBIT: ("available", "consumed"),
    EntryKind.RELEASE: ("held", "available"),
    EntryKind.EXPIRE: ("available", "expired"),
    EntryKind.VOID: ("available", "voided"),
    EntryKind.TRANSFER_OUT: ("available", "transferred_out"),
}
_SOURCES = {"granted", "reinstated"}


def deltas(kind: EntryKind, amount: int) -> dict[str, int]:
    """Bucket changes caused by one entry."""
    src, dst = MOVES[kind]
    if src in _SOURCES:
        return {src: amount, dst: amount}
    return {src: -amount, dst: amount}


@dataclass
class Buckets:
    granted: int = 0
    reinstated: int = 0
    available: int = 0
    held: int = 0
    consumed: int = 0
    expired: int = 0
    voided: int = 0
    transferred_out: int = 0

    def apply(self, kind: EntryKind, amount: int) -> None:
        for bucket, change in deltas(kind, amount).items():
            setattr(self, bucket, getattr(self, bucket) + change)

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, b) for b in BUCKETS)

    def violations(self) -> list[str]:
        """Broken invariants of one lot, as text (empty when sound)."""
        out = [f"{b} is negative ({getattr(self, b)})" for b in BUCKETS if getattr(self, b) < 0]
        inflow = self.granted + self.reinstated
        outflow = self.available + self.held + self.consumed + self.expired + self.voided + self.transferred_out
        if inflow != outflow:
            out.append(f"conservation broken: granted+reinstated={inflow} but buckets sum to {outflow}")
        return out


def replay(entries: Iterable[tuple[EntryKind, int]]) -> Buckets:
    b = Buckets()
    for kind, amount in entries:
        b.apply(kind, amount)
    return b


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry as a statement shows it."""

    entry_id: int
    account_id: str
    lot_id: str
    kind: EntryKind
    amount: int
    unit: str
    effective_at: datetime
    recorded_at: datetime
    actor: str
    reason: str
    reference: str
    hold_key: str
    policy_version: int
