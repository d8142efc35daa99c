"""Grant rules: what makes a lot valid, who may grant what, support limits and the two-person rule. Pure.

The role model and these rules in prose are at the top of `service_runtime/permissions.py`:
- any grant: priority 1..100, expiry after the effective instant, COMPENSATORY needs an incident;
- a support key grants only COMPENSATORY credit, free, with a reason code and an incident id;
  an operator key only COMPENSATORY credit for an incident (outage compensation), or PROMOTIONAL /
  PURCHASED credit with source `allowance` and a campaign id (a recurring allowance's grant);
- a support grant, or an operator's COMPENSATORY grant, within its key's per-grant and per-day
  limits is written at once; above either it becomes a grant request PENDING_APPROVAL (finance and
  admin have no limits; an allowance's grants, configured by finance, neither);
- any grant, whoever asks, above the tenant's approval threshold of its unit becomes a grant request;
- a grant request is decided once (APPROVED with its lot, or REJECTED) by another person than the
  one that asked (the keys' owners are compared, not the keys); deciding it the same way again
  returns it, the other way is FAILED_PRECONDITION.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from ledger_service.domain.model import Lot, LotType
from service_runtime.rejections import Reason, Rejection, invalid, precondition

SUPPORT, OPERATOR = "support", "operator"
# The `source` of a recurring allowance's lots (coordinator.naming.ALLOWANCE_SOURCE): an operator key may grant them.
ALLOWANCE_SOURCE = "allowance"
LIMIT_WINDOW = timedelta(hours=24)  # max_per_day counts the same key's grants over the trailing 24 hours


class GrantRequestStatus(enum.StrEnum):
    PENDING_APPROVAL = "PENDING_APPROVAL"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class LimitExceeded(enum.StrEnum):
    """Why a grant needs approval (named as the limit's field)."""

    MAX_PER_GRANT = "max_per_grant"
    MAX_PER_DAY = "max_per_day"
    APPROVAL_THRESHOLD = "approval_threshold"


def check_new_lot(lot: Lot) -> None:
    """A lot's configuration, checked once before it is written (it never changes afterwards)."""
    if not 1 <= lot.priority <= 100:
        raise invalid("priority", "must be between 1 and 100")
    if lot.expires_at is not None and lot.expires_at <= lot.effective_at:
        raise invalid("expires_at", "must be after effective_at")
    if lot.lot_type is LotType.COMPENSATORY and not lot.incident_id:
        raise invalid("incident_id", "is required for COMPENSATORY credits")


def check_role_may_grant(role: str, lot: Lot) -> None:
    """Request-dependent limits of the support and operator roles (finance and admin: none)."""
    if role == SUPPORT:
        if lot.lot_type is not LotType.COMPENSATORY:
            raise Rejection(Reason.FORBIDDEN, "support keys may grant only COMPENSATORY credits", "type")
        if not lot.reason_code:
            raise invalid("reason_code", "is required for support grants")
        if not lot.incident_id:
            raise invalid("incident_id", "is required for support grants")
        if lot.cost_basis:
            raise invalid("cost_basis", "must be 0 for support grants (compensatory credit is free)")
    elif role == OPERATOR:
        if not (_is_outage_grant(lot) or _is_allowance_grant(lot)):
            raise Rejection(Reason.FORBIDDEN,
                            "operator keys may grant only COMPENSATORY credits for an incident (outage compensation) "
                            f"or PROMOTIONAL/PURCHASED credits with source {ALLOWANCE_SOURCE!r} and the allowance "
                            "as campaign id (recurring allowances)", "type")


def _is_outage_grant(lot: Lot) -> bool:
    return lot.lot_type is LotType.COMPENSATORY and bool(lot.incident_id)


def _is_allowance_grant(lot: Lot) -> bool:
    return (lot.lot_type in (LotType.PROMOTIONAL, LotType.PURCHASED) and lot.source == ALLOWANCE_SOURCE
            and bool(lot.campaign_id))


def needs_limits(role: str, lot: Lot) -> bool:
    """Support grants and operator outage grants go through the per-key limits (and may need
    approval); finance's and admin's do not, nor an allowance's (the approval threshold applies to
    every grant)."""
    return role == SUPPORT or (role == OPERATOR and lot.lot_type is LotType.COMPENSATORY)


@dataclass(frozen=True)
class Limits:
    """Grant limits of one unit, in minor units; `is_default`: no tenant setting.
    `approval_threshold`: every grant above it needs approval (None: no threshold)."""

    max_per_grant: int
    max_per_day: int
    is_default: bool
    approval_threshold: int | None = None


def check_limits(limits: Limits) -> None:
    if limits.max_per_grant > limits.max_per_day:
        raise invalid("max_per_grant", "must not exceed max_per_day")


def limit_exceeded(amount: int, granted_today: int, limits: Limits, limited: bool = True) -> LimitExceeded | None:
    """The limit a grant of `amount` would break (None if none): the key's own limits if `limited`
    (given what it granted in the last 24 hours), then the tenant's approval threshold."""
    if limited and amount > limits.max_per_grant:
        return LimitExceeded.MAX_PER_GRANT
    if limited and granted_today + amount > limits.max_per_day:
        return LimitExceeded.MAX_PER_DAY
    if above_threshold(amount, limits):
        return LimitExceeded.APPROVAL_THRESHOLD
    return None


def above_threshold(amount: int, limits: Limits) -> bool:
    return limits.approval_threshold is not None and amount > limits.approval_threshold


def check_two_person_rule(requested_by: str, decided_by: str) -> None:
    """`requested_by`, `decided_by`: principals (Caller.principal: the key's owner, or key:<id>)."""
    if decided_by == requested_by:
        raise Rejection(Reason.FORBIDDEN, "two-person rule: a grant request must be decided by another person than "
                                          f"the one who asked for it (both keys belong to {decided_by})",
                        "request_id")


def needs_decision(request_id: str, status: GrantRequestStatus, wanted: GrantRequestStatus) -> bool:
    """True if the request is pending; False if it was decided `wanted` already (a repeat returns it)."""
    if status is GrantRequestStatus.PENDING_APPROVAL:
        return True
    if status is not wanted:
        raise precondition("request_id", f"grant request {request_id!r} is {status.value}")
    return False


def check_rejectable(request_id: str, approval_started: bool) -> None:
    """An approval that wrote its lot but not its decision (a crash) can only be finished, not undone."""
    if approval_started:
        raise precondition("request_id", f"grant request {request_id!r} was being approved; "
                                         "approve it again to finish")
