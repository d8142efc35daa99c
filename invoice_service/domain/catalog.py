"""Catalog records: customers, meters, plans (priced components) and subscriptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from invoice_service.domain.dimensions import Dimensions
from invoice_service.domain.invoices import Aggregation, ChargeKind, Component, PlanTerms
from invoice_service.domain.lifecycle import Schedule
from invoice_service.domain.money import currency_scale
from invoice_service.domain.periods import INTERVAL_MONTHS, Period, period, period_containing
from invoice_service.domain.pricing import Price


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    ledger_account_id: str
    created_at: datetime | None = None
    tax_region: str = ""  # the tenant's tax rule for this region applies ("" = not taxed)


@dataclass(frozen=True)
class Meter:
    meter_code: str
    name: str
    aggregation: Aggregation
    property: str = ""
    allow_negative: bool = False
    created_at: datetime | None = None
    unit: str = ""  # the ledger usage unit its quantities count in ("" = none)


@dataclass(frozen=True)
class Plan:
    plan_id: str
    name: str
    currency: str
    interval: str
    components: tuple[Component, ...]
    created_at: datetime | None = None
    version: int = 1  # editing a plan creates the next version (CreatePlanVersion)

    @property
    def months(self) -> int:
        return INTERVAL_MONTHS[self.interval]

    @property
    def terms(self) -> PlanTerms:
        return PlanTerms(self.plan_id, self.currency, currency_scale(self.currency), self.components)

    def components_json(self) -> list[dict[str, Any]]:
        return [
            {"kind": c.kind.value, "code": c.code, "name": c.name, "amount": str(c.amount),
             "price": c.price.to_json() if c.price else None,
             **({"dimensions": c.dimensions.to_json()} if c.dimensions else {})}
            for c in self.components
        ]

    @staticmethod
    def components_from_json(data: list[dict[str, Any]]) -> tuple[Component, ...]:
        return tuple(
            Component(ChargeKind(c["kind"]), c["code"], c["name"],
                      Price.from_json(c["price"]) if c["price"] else None, Decimal(c["amount"]),
                      Dimensions.from_json(c["dimensions"]) if c.get("dimensions") else None)
            for c in data
        )


@dataclass(frozen=True)
class SubscriptionPhase:
    """What a subscription bills from `effective_at` on (domain/lifecycle.py, Phase), as stored and read."""

    effective_at: datetime
    plan_id: str
    plan_version: int
    add_ons: dict[str, int] = field(default_factory=dict)
    licenses: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, Decimal | Price] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    customer_id: str
    plan_id: str
    anchor: datetime
    add_ons: dict[str, int] = field(default_factory=dict)
    licenses: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    plan_version: int = 0  # 0 on create: the plan's latest version
    trial_end: datetime | None = None  # billing starts here (a free trial from the anchor)
    calendar_aligned: bool = False  # periods on calendar boundaries, the first one partial
    ends_at: datetime | None = None  # cancelled: the last period ends here
    canceled_at: datetime | None = None
    overrides: dict[str, Decimal | Price] = field(default_factory=dict)  # per-customer prices by code
    phases: tuple[SubscriptionPhase, ...] = ()  # read by GetSubscription only: the change history

    def schedule(self, months: int) -> Schedule:
        return Schedule(self.anchor, months, self.trial_end, self.calendar_aligned, self.ends_at)

    @property
    def quantities(self) -> dict[str, int]:
        """Add-on units and license seats by code (codes are unique across a plan's components)."""
        return {**self.add_ons, **self.licenses}

    def period(self, months: int, index: int) -> Period:
        return period(self.anchor, months, index)

    def period_containing(self, months: int, instant: datetime) -> Period:
        return period_containing(self.anchor, months, instant)


def overrides_json(overrides: dict[str, Decimal | Price]) -> dict[str, Any]:
    return {code: ({"price": o.to_json()} if isinstance(o, Price) else {"amount": str(o)})
            for code, o in overrides.items()}


def overrides_from_json(data: dict[str, Any]) -> dict[str, Decimal | Price]:
    return {code: (Price.from_json(o["price"]) if "price" in o else Decimal(o["amount"])) for code, o in data.items()}
