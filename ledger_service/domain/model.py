"""Ledger value types: lots and their balances, charges, holds, allocations."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

DEBIT_PREFIX = "debit:"  # hold keys of DebitCredits ("debit:<idempotency key>"); reserves may not use it


class LotType(enum.StrEnum):
    PURCHASED = "PURCHASED"
    PROMOTIONAL = "PROMOTIONAL"
    COMPENSATORY = "COMPENSATORY"
    ROLLOVER = "ROLLOVER"


class ChargeKind(enum.StrEnum):
    USAGE = "USAGE"
    ADD_ON = "ADD_ON"
    FIXED_FEE = "FIXED_FEE"
    LICENSE = "LICENSE"


class HoldStatus(enum.StrEnum):
    PENDING = "PENDING"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    TOMBSTONE = "TOMBSTONE"


@dataclass(frozen=True, slots=True)
class Scope:
    """What a lot may pay for. No kinds = anything; names narrow the kinds to named meters/add-ons."""

    kinds: frozenset[ChargeKind] = frozenset()
    names: frozenset[str] = frozenset()

    def covers(self, kind: ChargeKind, name: str) -> bool:
        if not self.kinds:
            return True
        return kind in self.kinds and (not self.names or name in self.names)

    @property
    def width(self) -> int:
        """Smaller is narrower: named scopes < kind-only scopes < the whole invoice."""
        if not self.kinds:
            return 1_000_000
        return len(self.kinds) * 1000 + (len(self.names) if self.names else 999)


@dataclass(frozen=True, slots=True)
class RolloverPolicy:
    """What part of a lot's remainder moves into a ROLLOVER lot when the lot settles (immutable).

    `max_amount` (minor units) and `max_percent` (0-100 of the lot's amount) cap it; None / 0 = no
    cap of that kind, both set = the smaller. `expires_after_s`: the ROLLOVER lot's lifetime from
    the origin's usable_until (0 = never expires).
    """

    max_amount: int | None = None
    max_percent: int = 0
    expires_after_s: int = 0


@dataclass(slots=True)
class Lot:
    """A lot's immutable configuration plus its mutable balance buckets (the projection row)."""

    lot_id: str
    account_id: str
    lot_type: LotType
    unit: str
    amount: int
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    scope: Scope
    cost_basis: Decimal
    seq: int
    usable_until: datetime | None = None  # expires_at, or later if a reinstatement granted grace
    # balance buckets, minor units
    granted: int = 0
    reinstated: int = 0
    available: int = 0
    held: int = 0
    consumed: int = 0
    expired: int = 0
    voided: int = 0
    transferred_out: int = 0
    # provenance, immutable
    source: str = ""
    reason_code: str = ""
    campaign_id: str = ""
    incident_id: str = ""
    granted_by: str = ""
    origin_lot_id: str = ""
    rollover: RolloverPolicy | None = None
    created_at: datetime | None = None
    closed_at: datetime | None = None

    def usable_for(self, start: datetime, end: datetime) -> bool:
        """Is the service interval [start, end] (an instant when equal) inside the usable window?"""
        if start < self.effective_at:
            return False
        until = self.usable_until
        if until is None:
            return True
        return end <= until if end > start else start < until

    def is_past_usable(self, at: datetime) -> bool:
        return self.usable_until is not None and self.usable_until <= at


@dataclass(frozen=True, slots=True)
class Charge:
    """One thing to pay for, with its service interval [service_start, service_end]."""

    charge_id: str
    kind: ChargeKind
    name: str
    amount: int
    service_start: datetime
    service_end: datetime


@dataclass(frozen=True, slots=True)
class Allocation:
    position: int
    charge_id: str
    lot_id: str
    amount: int
    lot_type: LotType = LotType.PURCHASED


@dataclass(slots=True)
class Hold:
    hold_key: str
    account_id: str
    unit: str
    requested: int
    reserved: int
    allocations: list[Allocation]
    policy_version: int
    release_on_ttl: bool
    ttl_expires_at: datetime
    created_at: datetime
    reference: str = ""
    up_to: bool = False
    charges: list[Charge] = field(default_factory=list)
    status: HoldStatus = HoldStatus.PENDING
    posted: int = 0
    released: int = 0
    resolved_at: datetime | None = None
    postings: dict[int, int] = field(default_factory=dict)  # allocation position -> posted
    reversed: bool = False
