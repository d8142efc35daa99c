"""Pure allocation properties, checked exhaustively with hypothesis (no I/O)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_service.domain.allocation import allocate, eligible_lots
from ledger_service.domain.journal import EntryKind, replay
from ledger_service.domain.model import Charge, ChargeKind, Lot, LotType, Scope
from ledger_service.domain.policy import DEFAULT_POLICY
from service_runtime.rejections import Rejection

T0 = datetime(2025, 8, 1, tzinfo=UTC)


@st.composite
def lots(draw: st.DrawFn) -> list[Lot]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        start = T0 + timedelta(days=draw(st.integers(-5, 20)))
        end = start + timedelta(days=draw(st.integers(1, 40))) if draw(st.booleans()) else None
        kinds = frozenset(draw(st.sets(st.sampled_from(list(ChargeKind)), max_size=2)))
        names = frozenset(draw(st.sets(st.sampled_from(["gpt", "img"]), max_size=1))) if kinds else frozenset()
        amount = draw(st.integers(1, 500))
        out.append(Lot(f"l{i}", "a", draw(st.sampled_from(list(LotType))), "USD", amount,
                       draw(st.integers(1, 100)), start, end, Scope(kinds, names), Decimal(draw(st.integers(0, 3))),
                       seq=i, usable_until=end, granted=amount, available=amount))
    return out


@st.composite
def charges(draw: st.DrawFn) -> list[Charge]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        start = T0 + timedelta(days=draw(st.integers(0, 30)))
        out.append(Charge(f"c{i}", draw(st.sampled_from(list(ChargeKind))), draw(st.sampled_from(["gpt", "img", ""])),
                          draw(st.integers(1, 400)), start, start + timedelta(days=draw(st.integers(0, 5)))))
    return out


@settings(max_examples=400, deadline=None)
@given(lots(), charges(), st.booleans())
def test_allocation_respects_balance_scope_and_time(ls: list[Lot], cs: list[Charge], up_to: bool) -> None:
    by_id = {lot.lot_id: lot for lot in ls}
    try:
        result = allocate(cs, ls, DEFAULT_POLICY, up_to=up_to)
    except Rejection:
        assert not up_to
        # All-or-nothing: some charge could not be covered by its eligible lots.
        return
    taken: dict[str, int] = {}
    per_charge: dict[str, int] = {}
    for a in result.allocations:
        lot, charge = by_id[a.lot_id], next(c for c in cs if c.charge_id == a.charge_id)
        assert a.amount > 0
        assert lot.scope.covers(charge.kind, charge.name)
        assert lot.usable_for(charge.service_start, charge.service_end)
        taken[a.lot_id] = taken.get(a.lot_id, 0) + a.amount
        per_charge[a.charge_id] = per_charge.get(a.charge_id, 0) + a.amount
    for lot_id, amount in taken.items():
        assert amount <= by_id[lot_id].available  # no lot goes negative
    for c in cs:
        assert per_charge.get(c.charge_id, 0) <= c.amount
        if not up_to:
            assert per_charge.get(c.charge_id, 0) == c.amount
    assert result.reserved == sum(per_charge.values())
    assert all(lot.available == lot.granted for lot in ls)  # allocate() never mutates lots


@settings(max_examples=200, deadline=None)
@given(lots(), charges())
def test_eligible_lots_come_in_policy_order(ls: list[Lot], cs: list[Charge]) -> None:
    for c in cs:
        order = eligible_lots(ls, c, DEFAULT_POLICY)
        keys = [DEFAULT_POLICY.sort_key()(lot) for lot in order]
        assert keys == sorted(keys)


def test_lot_window_is_half_open_for_instants_and_closed_for_intervals() -> None:
    lot = Lot("l", "a", LotType.PROMOTIONAL, "USD", 1, 1, T0, T0 + timedelta(days=15), Scope(), Decimal(0), 0,
              usable_until=T0 + timedelta(days=15))
    end = T0 + timedelta(days=15)
    assert lot.usable_for(T0, end)                   # usage [1 Aug, 16 Aug] fits exactly
    assert not lot.usable_for(end, end)              # an instant at expiry does not
    assert not lot.usable_for(T0 - timedelta(seconds=1), T0)


def test_replay_conserves_credit() -> None:
    b = replay([(EntryKind.GRANT, 100), (EntryKind.HOLD, 30), (EntryKind.POST, 20), (EntryKind.RELEASE, 10),
                (EntryKind.REINSTATE, 20), (EntryKind.EXPIRE, 50), (EntryKind.TRANSFER_OUT, 5), (EntryKind.VOID, 5)])
    assert b.violations() == []
    assert (b.available, b.consumed, b.expired, b.reinstated) == (40, 20, 50, 20)
    assert replay([(EntryKind.HOLD, 1)]).violations() == ["available is negative (-1)"]
