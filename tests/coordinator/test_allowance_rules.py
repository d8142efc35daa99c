"""The pure rules of recurring allowances (coordinator/allowances.py): periods, pro-rating, what a period owes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coordinator import naming
from coordinator.allowances import Cadence, FirstGrant, Period, grant_for, period_containing, prorate
from coordinator.messages import AllowanceSpec
from ledger_service.domain import grants


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def spec(starts_at: datetime, first: FirstGrant = FirstGrant.PRO_RATED, cadence: Cadence = Cadence.MONTHLY,
         amount: str = "1000.00", scale: int = 2) -> AllowanceSpec:
    return AllowanceSpec("acme", "monthly", "acct-1", amount, "USD", scale, cadence, starts_at.isoformat(), first)


@pytest.mark.parametrize(("cadence", "instant", "start", "end"), [
    (Cadence.MONTHLY, at(2026, 1, 1), at(2026, 1, 1), at(2026, 2, 1)),
    (Cadence.MONTHLY, at(2026, 2, 28, 23, 59, 59), at(2026, 2, 1), at(2026, 3, 1)),
    (Cadence.MONTHLY, at(2028, 2, 29, 12), at(2028, 2, 1), at(2028, 3, 1)),  # leap year
    (Cadence.MONTHLY, at(2026, 12, 31, 23), at(2026, 12, 1), at(2027, 1, 1)),
    (Cadence.WEEKLY, at(2026, 12, 1, 18), at(2026, 11, 30), at(2026, 12, 7)),  # a Tuesday -> that Monday
    (Cadence.WEEKLY, at(2026, 11, 30), at(2026, 11, 30), at(2026, 12, 7)),
    (Cadence.DAILY, at(2026, 3, 5, 0, 0, 1), at(2026, 3, 5), at(2026, 3, 6)),
])
def test_periods_are_utc_calendar_periods(cadence: Cadence, instant: datetime, start: datetime, end: datetime) -> None:
    assert period_containing(cadence, instant) == Period(start, end)


def test_an_offset_instant_falls_in_its_utc_period() -> None:
    from datetime import timezone
    # 2026-02-01 00:30 at +01:00 is still January in UTC.
    instant = datetime(2026, 2, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert period_containing(Cadence.MONTHLY, instant) == Period(at(2026, 1, 1), at(2026, 2, 1))


def test_prorating_rounds_down_to_the_units_scale() -> None:
    assert prorate("1000.00", 2, timedelta(days=16), timedelta(days=31)) == "516.12"  # 516.129...
    assert prorate("1000", 0, timedelta(days=16), timedelta(days=31)) == "516"
    assert prorate("10.000", 3, timedelta(seconds=1), timedelta(days=30)) == "0.000"
    assert prorate("7.00", 2, timedelta(days=31), timedelta(days=31)) == "7.00"
    with pytest.raises(ValueError):
        prorate("1.00", 2, timedelta(days=32), timedelta(days=31))


def test_full_periods_after_sign_up_grant_the_whole_amount_from_start_to_end() -> None:
    plan = grant_for(spec(at(2026, 1, 16)), at(2026, 3, 1))
    assert plan is not None
    assert (plan.amount, plan.effective_at, plan.expires_at) == ("1000.00", at(2026, 3, 1), at(2026, 4, 1))


def test_the_sign_up_period_is_pro_rated_from_the_sign_up_instant() -> None:
    for instant in (at(2026, 1, 16), at(2026, 1, 1), at(2026, 1, 31, 23)):  # the same period, whoever asks
        plan = grant_for(spec(at(2026, 1, 16)), instant)
        assert plan is not None
        assert (plan.amount, plan.effective_at, plan.expires_at) == ("516.12", at(2026, 1, 16), at(2026, 2, 1))


def test_first_grant_full_or_none() -> None:
    full = grant_for(spec(at(2026, 1, 16), FirstGrant.FULL), at(2026, 1, 20))
    assert full is not None and (full.amount, full.effective_at) == ("1000.00", at(2026, 1, 16))
    assert grant_for(spec(at(2026, 1, 16), FirstGrant.NONE), at(2026, 1, 20)) is None
    # Signed up exactly at a period start: that period is a whole one, whatever first_grant says.
    whole = grant_for(spec(at(2026, 1, 1), FirstGrant.NONE), at(2026, 1, 1))
    assert whole is not None and whole.amount == "1000.00"


def test_periods_before_sign_up_and_a_zero_pro_rata_owe_nothing() -> None:
    assert grant_for(spec(at(2026, 1, 16)), at(2025, 12, 1)) is None
    assert grant_for(spec(at(2026, 2, 1)), at(2026, 1, 1)) is None  # ends exactly at sign-up
    last_second = at(2026, 1, 31, 23, 59, 59)
    assert grant_for(spec(last_second, amount="1.00"), last_second) is None  # 1 s of 31 days: 0.00


def test_weekly_allowance_sign_up_on_a_thursday() -> None:
    plan = grant_for(spec(at(2026, 12, 3), cadence=Cadence.WEEKLY, amount="70"), at(2026, 12, 3, 5))
    assert plan is not None  # 4 of 7 days: Thursday to Monday
    assert (plan.amount, plan.effective_at, plan.expires_at) == ("40.00", at(2026, 12, 3), at(2026, 12, 7))


def test_one_ledger_key_per_allowance_and_period() -> None:
    assert naming.allowance_grant_key("monthly", at(2026, 1, 1).isoformat()) == \
        "allowance/monthly/2026-01-01T00:00:00+00:00"
    assert naming.allowance_schedule_id("acme", "monthly") == "credits-allowance/acme/monthly"
    assert naming.allowance_of_schedule("acme", "credits-allowance/acme/monthly") == "monthly"
    assert naming.allowance_of_schedule("acme", "credits-allowance/other/monthly") is None
    assert naming.tenant_of("credits-allowance/acme/monthly-run-2026-01-01T00:00:00Z") == "acme"
    assert naming.ALLOWANCE_SOURCE == grants.ALLOWANCE_SOURCE  # the ledger lets operator keys grant these


def test_a_rollover_policy_is_passed_through_to_the_lot() -> None:
    from credits.ledger.v1 import ledger_pb2 as lpb

    from coordinator.activities import _set_rollover
    from coordinator.messages import RolloverPolicy

    req = lpb.GrantCreditsRequest()
    _set_rollover(req, RolloverPolicy(max_amount="100.00", max_percent=25, expires_after_s=30 * 86400))
    assert (req.rollover.max_amount, req.rollover.max_percent, req.rollover.expires_after_s) == (
        "100.00", 25, 2592000)
