"""Time (SPEC §4) and lifecycle operations (SPEC §8): expiry, void, reverse, transfer, as-of reads."""

from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import at, charge, rejected, table_counts, ts

AUG, MID_AUG, SEP, OCT = "2025-08-01", "2025-08-16", "2025-09-01", "2025-10-01"


async def test_mid_period_expiry_and_next_month_lots(ledger: Ledger) -> None:
    """A promo lot valid 1-16 Aug pays only for usage inside that window; a September lot pays nothing
    of August's invoice; a purchased lot valid all month pays the rest."""
    await ledger.account("john")
    promo = await ledger.grant("john", "50.00", type=pb.PROMOTIONAL, effective_at=at(AUG), expires_at=at(MID_AUG))
    sept = await ledger.grant("john", "40.00", type=pb.PROMOTIONAL, effective_at=at(SEP), expires_at=at(OCT))
    paid = await ledger.grant("john", "30.00", type=pb.PURCHASED, effective_at=at(AUG))
    bounds = await ledger.stub.GetLotBoundaries(pb.GetLotBoundariesRequest(
        account_id="john", unit="USD", period_start=at(AUG), period_end=at(SEP)), metadata=ledger.md)
    assert [t.ToDatetime().date().isoformat() for t in bounds.instants] == ["2025-08-16"]
    # The invoice service split August's usage at the boundary: 60 before, 20 after.
    hold = await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="inv", hold_key="invoice/aug", account_id="john", unit="USD", up_to=True,
        charges=[charge("60.00", charge_id="li1#0", start=AUG, end=MID_AUG),
                 charge("20.00", charge_id="li1#1", start=MID_AUG, end=SEP)]), metadata=ledger.md)
    by_charge: dict[tuple[str, str], str] = {(a.charge_id, a.lot_id): a.amount for a in hold.allocations}
    assert by_charge == {("li1#0", promo.lot_id): "50.00", ("li1#0", paid.lot_id): "10.00",
                         ("li1#1", paid.lot_id): "20.00"}
    assert sept.lot_id not in {a.lot_id for a in hold.allocations}
    assert hold.reserved == "80.00"


async def test_expired_lot_still_pays_usage_from_its_window_then_expires(ledger: Ledger) -> None:
    await ledger.account("john")
    now = datetime.now(UTC)
    start = now - timedelta(days=20)
    promo = await ledger.grant("john", "10.00", type=pb.PROMOTIONAL, effective_at=ts(start),
                               expires_at=ts(now - timedelta(days=5)))
    # Real-time usage now: the lot has expired, so it cannot pay.
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d", account_id="john", unit="USD", charges=[charge("1.00")]), metadata=ledger.md),
        grpc.StatusCode.FAILED_PRECONDITION, "insufficient")
    # Usage from inside its window, invoiced later, is still paid by it.
    c = pb.Charge(charge_id="u", kind=pb.USAGE, amount="4.00", service_start=ts(start),
                  service_end=ts(now - timedelta(days=10)))
    hold = await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r", hold_key="inv-1", account_id="john", unit="USD", charges=[c]), metadata=ledger.md)
    assert hold.allocations[0].lot_id == promo.lot_id
    # The sweep expires what is available; the held part survives until resolved.
    out = await ledger.stub.ExpireLots(pb.ExpireLotsRequest(idempotency_key="sweep"), metadata=ledger.md)
    assert out.lots_expired == 1
    lot = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=promo.lot_id), metadata=ledger.md)
    assert (lot.balance.available, lot.balance.held, lot.balance.expired) == ("0.00", "4.00", "6.00")
    # Released after expiry: that credit expires at once (SPEC §5).
    await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="rel", hold_key="inv-1"), metadata=ledger.md)
    lot = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=promo.lot_id), metadata=ledger.md)
    assert (lot.balance.available, lot.balance.held, lot.balance.expired) == ("0.00", "0.00", "10.00")
    again = await ledger.stub.ExpireLots(pb.ExpireLotsRequest(idempotency_key="sweep"), metadata=ledger.md)
    assert again.lots_expired == 1  # replay of the same sweep returns the same answer
    fresh = await ledger.stub.ExpireLots(pb.ExpireLotsRequest(idempotency_key="sweep2"), metadata=ledger.md)
    assert fresh.lots_expired == 0


async def test_skew_bounds_operation_times_and_the_horizon_bounds_lot_windows(ledger: Ledger) -> None:
    """Issue #10: the clock-skew bound applies to the time an operation claims (a charge's service
    time), never to a lot's validity window; that one is bounded by the lot horizon (10 years)."""
    await ledger.account("john")
    now = datetime.now(UTC)
    before = await table_counts(ledger.dsn)
    far = ts(now + timedelta(days=3660 + 30))
    await rejected(ledger.grant("john", "1.00", effective_at=far), grpc.StatusCode.INVALID_ARGUMENT,
                   "effective_at", "lot horizon")
    await rejected(ledger.grant("john", "1.00", expires_at=far), grpc.StatusCode.INVALID_ARGUMENT,
                   "expires_at", "lot horizon")
    assert await table_counts(ledger.dsn) == before
    # A lot starting in 10 minutes (or next month) is a normal grant, "upcoming" until then.
    soon = await ledger.grant("john", "1.00", effective_at=ts(now + timedelta(minutes=10)))
    assert soon.effective_at.ToDatetime(tzinfo=UTC) > now
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="john"), metadata=ledger.md)
    assert (bal.totals[0].available, bal.totals[0].upcoming) == ("0.00", "1.00")
    # A charge claiming to happen 10 minutes from now is beyond the clock-skew bound.
    c = pb.Charge(charge_id="c", kind=pb.USAGE, amount="1.00", service_start=ts(now + timedelta(minutes=10)))
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d", account_id="john", unit="USD", charges=[c]), metadata=ledger.md),
        grpc.StatusCode.INVALID_ARGUMENT, "service_start", "clock-skew")


async def test_balance_as_of_past_instants(ledger: Ledger) -> None:
    await ledger.account("john")
    await ledger.grant("john", "10.00")
    t1 = datetime.now(UTC)
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key="d", account_id="john", unit="USD",
                                                          charges=[charge("3.00")]), metadata=ledger.md)
    then = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="john", as_of=ts(t1)), metadata=ledger.md)
    lots = await ledger.stub.ListLots(pb.ListLotsRequest(account_id="john"), metadata=ledger.md)
    lot_then = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=lots.lots[0].lot_id, as_of=ts(t1)), metadata=ledger.md)
    assert (lot_then.balance.available, lot_then.balance.consumed) == ("10.00", "0.00")
    assert lots.lots[0].balance.available == "7.00"
    now = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="john"), metadata=ledger.md)
    assert (then.totals[0].available, then.totals[0].consumed) == ("10.00", "0.00")
    assert (now.totals[0].available, now.totals[0].consumed) == ("7.00", "3.00")
    assert [b.type for b in now.by_type] == [pb.PURCHASED]


async def test_void_grant_keeps_consumed(ledger: Ledger) -> None:
    await ledger.account("john")
    lot = await ledger.grant("john", "10.00")
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key="d", account_id="john", unit="USD",
                                                          charges=[charge("4.00")]), metadata=ledger.md)
    out = await ledger.stub.VoidGrant(pb.VoidGrantRequest(idempotency_key="v", lot_id=lot.lot_id, reason="fraud"),
                                      metadata=ledger.md)
    assert out.voided_amount == "6.00"
    assert (out.lot.balance.consumed, out.lot.balance.voided, out.lot.balance.available) == ("4.00", "6.00", "0.00")


@pytest.mark.parametrize("policy", [pb.EXPIRE_AT_ONCE, pb.REINSTATE_WITH_GRACE])
async def test_reverse_restores_original_lots(ledger: Ledger, policy: int) -> None:
    await ledger.account("john")
    now = datetime.now(UTC)
    promo = await ledger.grant("john", "5.00", type=pb.PROMOTIONAL, priority=10,
                               effective_at=ts(now - timedelta(days=3)), expires_at=ts(now + timedelta(seconds=2)))
    paid = await ledger.grant("john", "20.00", type=pb.PURCHASED, priority=50)
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key="d", account_id="john", unit="USD",
                                                          charges=[charge("8.00")]), metadata=ledger.md)
    hold_key = "debit:d"
    # Let the promotional lot expire before the reversal arrives.
    conn = await asyncpg.connect(ledger.dsn)
    await conn.close()
    import asyncio
    await asyncio.sleep(2.1)
    req = pb.ReverseReferenceRequest(idempotency_key="rev", hold_key=hold_key, expired_lot_policy=policy,
                                     grace_s=3600 if policy == pb.REINSTATE_WITH_GRACE else 0, reason="refund")
    out = await ledger.stub.ReverseReference(req, metadata=ledger.md)
    assert {(a.lot_id, a.amount) for a in out.reinstated} == {(promo.lot_id, "5.00"), (paid.lot_id, "3.00")}
    p = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=promo.lot_id), metadata=ledger.md)
    q = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=paid.lot_id), metadata=ledger.md)
    assert (q.balance.available, q.balance.reinstated, q.balance.consumed) == ("20.00", "3.00", "3.00")
    if policy == pb.EXPIRE_AT_ONCE:
        assert out.expired_at_once == "5.00"
        assert (p.balance.available, p.balance.expired, p.balance.reinstated) == ("0.00", "5.00", "5.00")
    else:
        assert out.expired_at_once == "0.00"
        assert p.balance.available == "5.00"
        assert p.usable_until.ToDatetime(UTC) > datetime.now(UTC) + timedelta(minutes=50)
    assert await ledger.stub.ReverseReference(req, metadata=ledger.md) == out
    await rejected(ledger.stub.ReverseReference(pb.ReverseReferenceRequest(idempotency_key="rev2", hold_key=hold_key),
                                                metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "already")
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert v.ok, v.violations


async def test_transfer_inside_a_hierarchy_with_limits(ledger: Ledger) -> None:
    await ledger.account("pool")
    await ledger.account("team-a", parent="pool")
    await ledger.account("other")
    exp = ts(datetime.now(UTC) + timedelta(days=30))
    src = await ledger.grant("pool", "100.00", type=pb.PURCHASED, expires_at=exp, cost_basis="0.9")
    await ledger.stub.SetTransferLimit(pb.SetTransferLimitRequest(idempotency_key="l", account_id="pool", unit="USD",
                                                                  max_per_transfer="50.00"), metadata=ledger.md)

    def xfer(key: str, to: str, amount: str) -> pb.TransferCreditsRequest:
        return pb.TransferCreditsRequest(idempotency_key=key, from_account_id="pool", to_account_id=to, unit="USD",
                                         amount=amount)

    await rejected(ledger.stub.TransferCredits(xfer("t0", "other", "1.00"), metadata=ledger.md),
                   grpc.StatusCode.FAILED_PRECONDITION, "hierarchy")
    await rejected(ledger.stub.TransferCredits(xfer("t1", "team-a", "50.01"), metadata=ledger.md),
                   grpc.StatusCode.FAILED_PRECONDITION, "limit")
    out = await ledger.stub.TransferCredits(xfer("t2", "team-a", "40.00"), metadata=ledger.md)
    (leg,) = out.legs
    dest = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=leg.destination_lot_id), metadata=ledger.md)
    assert (dest.type, dest.expires_at, dest.cost_basis, dest.origin_lot_id) == (
        pb.PURCHASED, src.expires_at, "0.9", src.lot_id)
    assert dest.balance.available == "40.00"
    back = await ledger.stub.ReverseTransfer(pb.ReverseTransferRequest(idempotency_key="rt",
                                                                       transfer_id=out.transfer_id), metadata=ledger.md)
    assert back.reversed
    s = await ledger.stub.GetLot(pb.GetLotRequest(lot_id=src.lot_id), metadata=ledger.md)
    assert (s.balance.available, s.balance.transferred_out, s.balance.reinstated) == ("100.00", "40.00", "40.00")
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert v.ok, v.violations


async def test_database_refuses_to_rewrite_the_journal(ledger: Ledger) -> None:
    await ledger.account("john")
    await ledger.grant("john", "1.00")
    conn = await asyncpg.connect(ledger.dsn)
    try:
        for sql in ("UPDATE journal SET amount = 0", "DELETE FROM journal", "TRUNCATE journal",
                    "UPDATE lots SET amount = 5", "DELETE FROM hold_resolutions"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM journal") == 1
    finally:
        await conn.close()


async def test_statement_lists_entries_with_filters_and_pages(ledger: Ledger) -> None:
    await ledger.account("john")
    await ledger.grant("john", "10.00")
    for i in range(3):
        await ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key=f"d{i}", account_id="john", unit="USD",
                                                              charges=[charge("1.00")], reference=f"evt-{i}"),
                                       metadata=ledger.md)
    page1 = await ledger.stub.ListEntries(pb.ListEntriesRequest(account_id="john", page_size=3), metadata=ledger.md)
    assert [e.kind for e in page1.entries] == [pb.GRANT, pb.DEBIT, pb.DEBIT]
    page2 = await ledger.stub.ListEntries(pb.ListEntriesRequest(account_id="john", page_token=page1.next_page_token),
                                          metadata=ledger.md)
    assert len(page2.entries) == 1 and not page2.next_page_token
    debits = await ledger.stub.ListEntries(pb.ListEntriesRequest(account_id="john", kinds=[pb.DEBIT],
                                                                 reference="evt-1"), metadata=ledger.md)
    assert [(e.kind, e.amount, e.reference) for e in debits.entries] == [(pb.DEBIT, "1.00", "evt-1")]
