"""Auto top-up rules (pure): when a top-up starts, how much, what stops it, and how a payment's
outcome moves it. The saga's steps (ledger_service/topups/steps.py) apply them.

A policy watches (account, unit) like an alert rule: available < threshold is a crossing (ok → firing),
and only a crossing requests a top-up, numbered by the crossing: `topup_id` = account/unit/crossing is
the payment provider's idempotency key, so a retried charge can never become a second one. Credit is
granted only after the provider confirms the payment, under the charge id as the grant's idempotency
key: a card charged is credited exactly once, and never without a confirmed payment.

Runaway protection: one top-up per crossing (re-armed only when the balance is back at or above the
threshold); none while another of the account is in flight; daily and monthly caps on what top-ups
grant (a top-up that would pass one is CAPPED, before any charge); after `failure_limit` consecutive
declines the policy disables itself and fires `topup.disabled`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from service_runtime.rejections import invalid

TOPUP_SOURCE = "auto_topup"
DEFAULT_FAILURE_LIMIT = 3


class TopUpStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    CHARGING = "CHARGING"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    GRANTED = "GRANTED"
    DECLINED = "DECLINED"
    CAPPED = "CAPPED"


IN_FLIGHT = (TopUpStatus.REQUESTED, TopUpStatus.CHARGING, TopUpStatus.AWAITING_PAYMENT)


@dataclass
class TopUpPolicy:
    account_id: str
    unit: str
    scale: int
    threshold: int
    amount: int                 # fixed amount, or 0
    target: int                 # top up to, or 0
    cost_basis: Decimal
    payment_method: str
    max_daily: int | None = None
    max_monthly: int | None = None
    failure_limit: int = DEFAULT_FAILURE_LIMIT
    firing: bool = False
    crossings: int = 0
    consecutive_failures: int = 0
    disabled_at: datetime | None = None
    disabled_reason: str = ""


def check_policy(p: TopUpPolicy) -> TopUpPolicy:
    if p.threshold <= 0:
        raise invalid("policy.threshold", "must be positive")
    if (p.amount > 0) == (p.target > 0):
        raise invalid("policy.amount", "set exactly one of amount (a fixed top-up) and target (top up to)")
    if p.target and p.target <= p.threshold:
        raise invalid("policy.target", "must be above the threshold")
    if not p.payment_method:
        raise invalid("policy.payment_method", "is required")
    if not 1 <= p.failure_limit <= 100:
        raise invalid("policy.failure_limit", "must be between 1 and 100")
    for name, cap in (("policy.max_daily", p.max_daily), ("policy.max_monthly", p.max_monthly)):
        if cap is not None and cap < (p.amount or p.target - p.threshold):
            raise invalid(name, "is below one top-up")
    return p


def amount_for(p: TopUpPolicy, available: int) -> int:
    """What one top-up grants: the fixed amount, or up to the target."""
    return p.amount if p.amount else max(p.target - available, 0)


@dataclass(frozen=True)
class Crossing:
    crossing: int
    amount: int
    status: TopUpStatus      # REQUESTED, or CAPPED (nothing is charged)
    reason: str = ""


def on_change(p: TopUpPolicy, available: int, granted_day: int, granted_month: int,
              in_flight: bool) -> Crossing | None:
    """Advances the policy's state machine after a committed change; the top-up a crossing asks for."""
    below = available < p.threshold
    if below == p.firing:
        return None
    p.firing = below
    if not below or p.disabled_at is not None:
        return None
    p.crossings += 1
    amount = amount_for(p, available)
    if in_flight:
        return Crossing(p.crossings, amount, TopUpStatus.CAPPED, "a top-up of this account is still in flight")
    if p.max_daily is not None and granted_day + amount > p.max_daily:
        return Crossing(p.crossings, amount, TopUpStatus.CAPPED, "the daily cap would be passed")
    if p.max_monthly is not None and granted_month + amount > p.max_monthly:
        return Crossing(p.crossings, amount, TopUpStatus.CAPPED, "the monthly cap would be passed")
    return Crossing(p.crossings, amount, TopUpStatus.REQUESTED)


def topup_id(account_id: str, unit: str, crossing: int) -> str:
    return f"topup/{account_id}/{unit}/{crossing}"
