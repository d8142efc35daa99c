"""The participant state machine, every (verb, state) pair; billing periods from an anchor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from invoice_service.domain.periods import add_months, period_containing, period_starting_at
from invoice_service.domain.states import Status, Transition, Verb, transition
from service_runtime.rejections import Reason, Rejection

S, V = Status, Verb
EXPECTED: dict[tuple[Verb, Status], Transition | None] = {
    (V.PREPARE_FINALIZE, S.DRAFT): Transition(S.PREPARED, True),
    (V.PREPARE_FINALIZE, S.PREPARED): None,
    (V.PREPARE_FINALIZE, S.FINALIZED): None,
    (V.PREPARE_FINALIZE, S.VOID_PENDING): None,
    (V.PREPARE_FINALIZE, S.VOIDED): None,
    (V.COMMIT_FINALIZE, S.DRAFT): None,                          # aborted (or never prepared)
    (V.COMMIT_FINALIZE, S.PREPARED): Transition(S.FINALIZED, True),
    (V.COMMIT_FINALIZE, S.FINALIZED): Transition(S.FINALIZED, False),
    (V.COMMIT_FINALIZE, S.VOID_PENDING): None,
    (V.COMMIT_FINALIZE, S.VOIDED): None,
    (V.ABORT_FINALIZE, S.DRAFT): Transition(S.DRAFT, False),     # null compensation
    (V.ABORT_FINALIZE, S.PREPARED): Transition(S.DRAFT, True),
    (V.ABORT_FINALIZE, S.FINALIZED): None,                       # abort after commit
    (V.ABORT_FINALIZE, S.VOID_PENDING): None,
    (V.ABORT_FINALIZE, S.VOIDED): None,
    (V.PREPARE_VOID, S.DRAFT): None,
    (V.PREPARE_VOID, S.PREPARED): None,
    (V.PREPARE_VOID, S.FINALIZED): Transition(S.VOID_PENDING, True),
    (V.PREPARE_VOID, S.VOID_PENDING): None,
    (V.PREPARE_VOID, S.VOIDED): None,
    (V.COMMIT_VOID, S.DRAFT): None,
    (V.COMMIT_VOID, S.PREPARED): None,
    (V.COMMIT_VOID, S.FINALIZED): None,                          # void aborted (or never prepared)
    (V.COMMIT_VOID, S.VOID_PENDING): Transition(S.VOIDED, True),
    (V.COMMIT_VOID, S.VOIDED): Transition(S.VOIDED, False),
    (V.ABORT_VOID, S.DRAFT): None,
    (V.ABORT_VOID, S.PREPARED): None,
    (V.ABORT_VOID, S.FINALIZED): Transition(S.FINALIZED, False),
    (V.ABORT_VOID, S.VOID_PENDING): Transition(S.FINALIZED, True),
    (V.ABORT_VOID, S.VOIDED): None,                              # abort after commit
    (V.ABANDON, S.DRAFT): Transition(S.ABANDONED, True),
    (V.ABANDON, S.PREPARED): None,                               # abort the saga first
    (V.ABANDON, S.FINALIZED): None,                              # void it instead
    (V.ABANDON, S.VOID_PENDING): None,
    (V.ABANDON, S.VOIDED): None,
    (V.ABANDON, S.ABANDONED): Transition(S.ABANDONED, False),
    # ABANDONED is final: no other verb moves it.
    (V.PREPARE_FINALIZE, S.ABANDONED): None,
    (V.COMMIT_FINALIZE, S.ABANDONED): None,
    (V.ABORT_FINALIZE, S.ABANDONED): Transition(S.ABANDONED, False),  # a saga that lost the race
    (V.PREPARE_VOID, S.ABANDONED): None,
    (V.COMMIT_VOID, S.ABANDONED): None,
    (V.ABORT_VOID, S.ABANDONED): None,
}


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == {(v, s) for v in Verb for s in Status}


@pytest.mark.parametrize(("verb", "status"), list(EXPECTED))
def test_transition(verb: Verb, status: Status) -> None:
    expected = EXPECTED[(verb, status)]
    if expected is None:
        with pytest.raises(Rejection) as err:
            transition(verb, status)
        assert err.value.reason is Reason.PRECONDITION and status.value in err.value.message
    else:
        assert transition(verb, status) == expected


def utc(y: int, m: int, d: int, h: int = 0) -> datetime:
    return datetime(y, m, d, h, tzinfo=UTC)


def test_monthly_periods_clamp_to_month_end_without_drifting() -> None:
    anchor = utc(2026, 1, 31, 9)
    assert [add_months(anchor, n) for n in range(4)] == [anchor, utc(2026, 2, 28, 9), utc(2026, 3, 31, 9),
                                                         utc(2026, 4, 30, 9)]
    assert add_months(utc(2027, 12, 15), 1) == utc(2028, 1, 15)
    p = period_containing(anchor, 1, utc(2026, 3, 1))
    assert (p.index, p.start, p.end) == (1, utc(2026, 2, 28, 9), utc(2026, 3, 31, 9))
    assert period_containing(anchor, 1, utc(2026, 2, 28, 9)).index == 1  # the start belongs to the period
    assert period_containing(anchor, 12, utc(2028, 6, 1)).start == utc(2028, 1, 31, 9)
    assert period_starting_at(anchor, 1, utc(2026, 3, 31, 9)) is not None
    assert period_starting_at(anchor, 1, utc(2026, 3, 31)) is None
