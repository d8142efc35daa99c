"""Amounts as the caller wrote them, parsed once their unit's scale is known. Pure.

A request's amounts are decimal strings in a unit whose scale (USD 2, JPY 0, a tenant's own units)
is looked up per tenant; the API layer checks everything else of a request first and keeps each
amount with the field it came from, so the refusal of "1.001" USD still names `charges[3].amount`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger_service.domain.model import Charge, ChargeKind
from service_runtime.amounts import parse_minor


@dataclass(slots=True)
class AmountText:
    text: str
    field: str
    allow_zero: bool = False

    def minor(self, scale: int) -> int:
        """The amount in minor units of a unit with `scale` decimals (INVALID_ARGUMENT naming the field)."""
        return parse_minor(self.text, scale, self.field, allow_zero=self.allow_zero)


@dataclass(slots=True)  # not frozen: built per debit on the hot path
class RequestedCharge:
    """A charge whose amount is still the caller's text (`amount_field` names it in a refusal)."""

    charge_id: str
    kind: ChargeKind
    name: str
    amount: str
    amount_field: str
    service_start: datetime
    service_end: datetime

    def scaled(self, scale: int) -> Charge:
        return Charge(self.charge_id, self.kind, self.name, parse_minor(self.amount, scale, self.amount_field),
                      self.service_start, self.service_end)
