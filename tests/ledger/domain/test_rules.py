"""The pure hold, lifecycle and grant rules (no I/O): each decision and each refusal, naming its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger_service.domain import grants, holds, lifecycle
from ledger_service.domain.grants import GrantRequestStatus, LimitExceeded, Limits
from ledger_service.domain.holds import ReleaseAction, ReversalPolicy
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import Allocation, Hold, HoldStatus, Lot, LotType, Scope
from service_runtime.rejections import Reason, Rejection

NOW = datetime(2025, 8, 1, 12, tzinfo=UTC)


def hold(status: HoldStatus = HoldStatus.PENDING, *, reserved: int = 10, posted: int = 0,
         release_on_ttl: bool = False, ttl: timedelta = timedelta(minutes=5), account: str = "a") -> Hold:
    allocations = [Allocation(0, "c", "l1", 6), Allocation(1, "c", "l2", reserved - 6)]
    return Hold("h", account, "USD", reserved, reserved, allocations, 0, release_on_ttl, NOW + ttl, NOW,
                status=status, posted=posted)


def lot(**kw: object) -> Lot:
    fields: dict[str, object] = dict(lot_id="l1", account_id="a", lot_type=LotType.PURCHASED, unit="USD", amount=100,
                                     priority=50, effective_at=NOW - timedelta(days=1), expires_at=None,
                                     scope=Scope(), cost_basis=Decimal(0), seq=1)
    fields.update(kw)
    if "usable_until" not in kw:
        fields["usable_until"] = fields["expires_at"]
    return Lot(**fields)  # type: ignore[arg-type]


def refused(reason: Reason, field: str, call: object, *args: object) -> None:
    with pytest.raises(Rejection) as info:
        call(*args)  # type: ignore[operator]
    assert (info.value.reason, info.value.field) == (reason, field), info.value.message


# --- holds --------------------------------------------------------------------------------------

def test_a_hold_resolves_once() -> None:
    assert holds.commit_target(hold(), None, NOW) == 10
    assert holds.commit_target(hold(), 4, NOW) == 4
    assert holds.commit_target(hold(HoldStatus.COMMITTED, posted=4), 4, NOW) is None  # the same commit: returned
    refused(Reason.PRECONDITION, "amount", holds.commit_target, hold(HoldStatus.COMMITTED, posted=4), 5, NOW)
    refused(Reason.PRECONDITION, "hold_key", holds.commit_target, hold(HoldStatus.RELEASED), None, NOW)
    refused(Reason.INVALID, "amount", holds.commit_target, hold(), 11, NOW)  # more than held


def test_a_real_time_hold_past_its_ttl_cannot_commit_and_the_sweep_releases_it() -> None:
    late = NOW + timedelta(minutes=6)
    refused(Reason.PRECONDITION, "hold_key", holds.commit_target, hold(release_on_ttl=True), None, late)
    assert holds.released_by_ttl(hold(release_on_ttl=True), late)
    assert not holds.released_by_ttl(hold(release_on_ttl=False), late)  # saga holds: the coordinator decides
    assert not holds.released_by_ttl(hold(HoldStatus.COMMITTED, release_on_ttl=True), late)
    assert holds.commit_target(hold(release_on_ttl=False), None, late) == 10


def test_a_partial_commit_posts_in_allocation_order_and_releases_the_rest() -> None:
    out = [(p.allocation.position, p.posted, p.released) for p in holds.postings(hold(), 7)]
    assert out == [(0, 6, 0), (1, 1, 3)]


def test_release_decisions_and_tombstones() -> None:
    assert holds.release_action("h", None, "a", tombstoned=False) is ReleaseAction.BURN_KEY
    assert holds.release_action("h", None, "a", tombstoned=True) is ReleaseAction.ALREADY_BURNT
    assert holds.release_action("h", hold(), "a", tombstoned=False) is ReleaseAction.RELEASE
    assert holds.release_action("h", hold(HoldStatus.RELEASED), "a", tombstoned=False) is ReleaseAction.ALREADY_RELEASED
    refused(Reason.PRECONDITION, "hold_key", holds.release_action, "h", hold(HoldStatus.COMMITTED), "a", False)
    refused(Reason.NOT_FOUND, "hold_key", holds.release_action, "h", hold(account="b"), "a", False)
    refused(Reason.NOT_FOUND, "hold_key", holds.release_action, "debit:k", None, "a", False)  # debits never burn
    refused(Reason.PRECONDITION, "hold_key", holds.check_new_hold, "h", {}, {"h"})  # a burnt key stays burnt
    refused(Reason.CONFLICT, "hold_key", holds.check_new_hold, "h", {"h": hold()}, set())
    refused(Reason.PRECONDITION, "hold_key", holds.find_hold, {}, {"h"}, "h", "a")
    refused(Reason.NOT_FOUND, "hold_key", holds.find_hold, {"h": hold(account="b")}, set(), "h", "a")
    assert holds.tombstone("h", "a", NOW, burnt_now=True).resolved_at == NOW
    assert holds.tombstone("h", "a", NOW, burnt_now=False).resolved_at is None


def test_the_account_a_release_acts_on() -> None:
    assert holds.release_account("h", "", "a") == "a"
    assert holds.release_account("h", "b", None) == "b"  # never arrived: burn the key on the account asked
    refused(Reason.INVALID, "account_id", holds.release_account, "h", "", None)
    refused(Reason.NOT_FOUND, "hold_key", holds.release_account, "h", "b", "a")


def test_reserve_keys_and_ttl() -> None:
    refused(Reason.INVALID, "hold_key", holds.check_reserve_key, "debit:x")
    refused(Reason.INVALID, "ttl_s", holds.check_ttl, -1)
    refused(Reason.INVALID, "ttl_s", holds.check_ttl, 90 * 86400 + 1)
    holds.check_ttl(0)


def test_only_a_committed_hold_reverses_once() -> None:
    committed = hold(HoldStatus.COMMITTED, posted=7)
    committed.postings = {0: 6, 1: 1}
    assert [(a.position, n) for a, n in holds.reinstatements(committed)] == [(0, 6), (1, 1)]
    committed.postings = {0: 6, 1: 0}
    assert [(a.position, n) for a, n in holds.reinstatements(committed)] == [(0, 6)]
    committed.reversed = True
    refused(Reason.PRECONDITION, "hold_key", holds.reinstatements, committed)
    refused(Reason.PRECONDITION, "hold_key", holds.reinstatements, hold())
    assert holds.check_grace(ReversalPolicy.EXPIRE_AT_ONCE, 0) is None
    assert holds.check_grace(ReversalPolicy.REINSTATE_WITH_GRACE, 60) == 60
    refused(Reason.INVALID, "grace_s", holds.check_grace, ReversalPolicy.REINSTATE_WITH_GRACE, 0)


# --- lifecycle ----------------------------------------------------------------------------------

def test_where_returning_credit_goes() -> None:
    live = lot()
    expired = lot(expires_at=NOW - timedelta(hours=1))
    voided = lot(closed_at=NOW - timedelta(hours=2), voided=5)
    assert lifecycle.terminal_kind(live, NOW) is None
    assert lifecycle.terminal_kind(expired, NOW) is EntryKind.EXPIRE
    assert lifecycle.terminal_kind(voided, NOW) is EntryKind.VOID
    assert lifecycle.reinstated_fate(live, NOW, 60) is None
    assert lifecycle.reinstated_fate(expired, NOW, None) is EntryKind.EXPIRE
    assert lifecycle.reinstated_fate(expired, NOW, 60) == NOW + timedelta(seconds=60)
    assert lifecycle.reinstated_fate(voided, NOW, 60) is EntryKind.VOID  # grace never revives a void
    assert lifecycle.void_amount(voided) is None and lifecycle.void_amount(lot(available=7)) == 7


def test_expiry_and_closing() -> None:
    due = lot(expires_at=NOW - timedelta(seconds=1), available=3)
    assert lifecycle.expires(due, NOW) and not lifecycle.closes(due, NOW)
    spent = lot(expires_at=NOW - timedelta(seconds=1))
    assert not lifecycle.expires(spent, NOW) and lifecycle.closes(spent, NOW)
    assert not lifecycle.closes(lot(expires_at=NOW - timedelta(seconds=1), held=2), NOW)


# --- grants -------------------------------------------------------------------------------------

def test_lot_rules() -> None:
    grants.check_new_lot(lot())
    refused(Reason.INVALID, "priority", grants.check_new_lot, lot(priority=101))
    refused(Reason.INVALID, "expires_at", grants.check_new_lot, lot(expires_at=NOW - timedelta(days=2)))
    refused(Reason.INVALID, "incident_id", grants.check_new_lot, lot(lot_type=LotType.COMPENSATORY))


def test_who_may_grant_what() -> None:
    ok = lot(lot_type=LotType.COMPENSATORY, reason_code="outage", incident_id="INC-1")
    grants.check_role_may_grant("support", ok)
    grants.check_role_may_grant("operator", ok)
    grants.check_role_may_grant("finance", lot(lot_type=LotType.PROMOTIONAL))
    refused(Reason.FORBIDDEN, "type", grants.check_role_may_grant, "support", lot())
    refused(Reason.INVALID, "reason_code", grants.check_role_may_grant, "support",
            lot(lot_type=LotType.COMPENSATORY, incident_id="INC-1"))
    refused(Reason.INVALID, "cost_basis", grants.check_role_may_grant, "support",
            lot(lot_type=LotType.COMPENSATORY, reason_code="r", incident_id="i", cost_basis=Decimal(1)))
    refused(Reason.FORBIDDEN, "type", grants.check_role_may_grant, "operator", lot(lot_type=LotType.COMPENSATORY))
    # Finding 5 of #16: operator outage grants (the worker, automation) are limited like support keys'.
    assert grants.needs_limits("support", ok) and grants.needs_limits("operator", ok)
    assert not grants.needs_limits("finance", ok) and not grants.needs_limits("admin", ok)
    allowance = lot(lot_type=LotType.PROMOTIONAL, source=grants.ALLOWANCE_SOURCE, campaign_id="monthly")
    assert not grants.needs_limits("operator", allowance)  # configured by finance (CreateAllowance)


def test_operator_keys_grant_recurring_allowance_lots() -> None:
    allowance = {"source": grants.ALLOWANCE_SOURCE, "campaign_id": "monthly-1000"}
    grants.check_role_may_grant("operator", lot(lot_type=LotType.PROMOTIONAL, **allowance))
    grants.check_role_may_grant("operator", lot(lot_type=LotType.PURCHASED, **allowance))
    refused(Reason.FORBIDDEN, "type", grants.check_role_may_grant, "operator", lot(lot_type=LotType.PROMOTIONAL))
    refused(Reason.FORBIDDEN, "type", grants.check_role_may_grant, "operator",
            lot(lot_type=LotType.PROMOTIONAL, source=grants.ALLOWANCE_SOURCE))  # no allowance named
    refused(Reason.FORBIDDEN, "type", grants.check_role_may_grant, "operator",
            lot(lot_type=LotType.ROLLOVER, **allowance))
    refused(Reason.FORBIDDEN, "type", grants.check_role_may_grant, "support", lot(**allowance))


def test_support_limits() -> None:
    limits = Limits(max_per_grant=100, max_per_day=250, is_default=False)
    assert grants.limit_exceeded(100, 150, limits) is None
    assert grants.limit_exceeded(101, 0, limits) is LimitExceeded.MAX_PER_GRANT
    assert grants.limit_exceeded(100, 151, limits) is LimitExceeded.MAX_PER_DAY
    refused(Reason.INVALID, "max_per_grant", grants.check_limits, Limits(10, 5, False))


def test_two_person_rule_and_one_decision() -> None:
    refused(Reason.FORBIDDEN, "request_id", grants.check_two_person_rule, "key-1", "key-1")
    grants.check_two_person_rule("key-1", "key-2")
    pending, approved, rejected = (GrantRequestStatus.PENDING_APPROVAL, GrantRequestStatus.APPROVED,
                                   GrantRequestStatus.REJECTED)
    assert grants.needs_decision("r", pending, approved)
    assert not grants.needs_decision("r", approved, approved)  # approving again returns it
    refused(Reason.PRECONDITION, "request_id", grants.needs_decision, "r", rejected, approved)
    refused(Reason.PRECONDITION, "request_id", grants.needs_decision, "r", approved, rejected)
    refused(Reason.PRECONDITION, "request_id", grants.check_rejectable, "r", True)  # an approval wrote its lot
    grants.check_rejectable("r", False)
