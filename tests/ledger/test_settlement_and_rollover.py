"""Issue #10 on the ledger: future lot windows, settlement before breakage (SPEC §4), rollover (SPEC §8)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import rejected, ts

NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(days=20)  # "day 0" of a period that has ended: [START, END)
END = START + timedelta(days=19)


def day(n: int) -> datetime:
    return START + timedelta(days=n)


def usage(charge_id: str, amount: str, when: datetime) -> pb.Charge:
    return pb.Charge(charge_id=charge_id, kind=pb.USAGE, amount=amount, service_start=ts(when), service_end=ts(when))


async def settle(ledger: Ledger, account: str, through: datetime, key: str) -> pb.Settlement:
    return await ledger.stub.RecordSettlement(pb.RecordSettlementRequest(
        idempotency_key=key, account_id=account, invoiced_through=ts(through)), metadata=ledger.md)


async def sweep(ledger: Ledger, key: str) -> pb.ExpireLotsResponse:
    return await ledger.stub.ExpireLots(pb.ExpireLotsRequest(idempotency_key=key), metadata=ledger.md)


async def lot_of(ledger: Ledger, lot_id: str) -> pb.Lot:
    return await ledger.stub.GetLot(pb.GetLotRequest(lot_id=lot_id), metadata=ledger.md)


async def totals(ledger: Ledger, account: str) -> pb.BalanceBucket:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=ledger.md)
    return bal.totals[0]


async def test_a_lot_next_month_is_upcoming_now_and_pays_from_its_start_without_a_job(ledger: Ledger) -> None:
    await ledger.account("john")
    first = (NOW.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0)
    nxt = await ledger.grant("john", "25.00", type=pb.PROMOTIONAL, effective_at=ts(first),
                             expires_at=ts(first + timedelta(days=30)))
    assert nxt.effective_at.ToDatetime(tzinfo=UTC) == first
    b = await totals(ledger, "john")
    assert (b.available, b.upcoming, b.granted) == ("0.00", "25.00", "0.00")
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="now", account_id="john", unit="USD",
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, amount="1.00")]),
        metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "insufficient")
    # The same lot shape a few seconds ahead: nothing runs in between, and it pays from its start.
    start = datetime.now(UTC) + timedelta(seconds=2)
    soon = await ledger.grant("john", "5.00", effective_at=ts(start))
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="early", account_id="john", unit="USD",
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, amount="1.00")]),
        metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "insufficient")
    await asyncio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()) + 0.2)
    hold = await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="later", account_id="john", unit="USD",
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, amount="1.00")]),
        metadata=ledger.md)
    assert [a.lot_id for a in hold.allocations] == [soon.lot_id]
    b = await totals(ledger, "john")
    assert (b.available, b.consumed, b.upcoming) == ("4.00", "1.00", "25.00")


async def test_expiry_waits_for_settlement_the_issue_repro(ledger: Ledger) -> None:
    """PROMOTIONAL 30.00 expiring day 14; usage 20.00 on day 3 and 20.00 on day 17; the sweep runs after
    the period ended but before the invoice: nothing is breakage yet, the invoice gets 20.00 of credit."""
    await ledger.account("acme")
    await settle(ledger, "acme", START, "settle-0")  # billed by invoices, nothing invoiced yet
    promo = await ledger.grant("acme", "30.00", type=pb.PROMOTIONAL, effective_at=ts(START - timedelta(days=1)),
                               expires_at=ts(day(14)))
    out = await sweep(ledger, "sweep-1")
    assert out.lots_expired == 0
    lot = await lot_of(ledger, promo.lot_id)
    assert (lot.balance.available, lot.balance.pending_expiry, lot.balance.expired) == ("0.00", "30.00", "0.00")
    b = await totals(ledger, "acme")
    assert (b.available, b.pending_expiry, b.expired) == ("0.00", "30.00", "0.00")
    # Real-time usage now cannot touch it.
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="rt", account_id="acme", unit="USD",
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, amount="1.00")]),
        metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "insufficient")
    # The invoice: day 3 paid by the promo, day 17 (after its expiry) not.
    hold = await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r", hold_key="invoice/acme-1", account_id="acme", unit="USD", up_to=True,
        charges=[usage("li1#0", "20.00", day(3)), usage("li1#1", "20.00", day(17))]), metadata=ledger.md)
    assert hold.reserved == "20.00" and [a.charge_id for a in hold.allocations] == ["li1#0"]
    await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c", hold_key="invoice/acme-1"),
                                 metadata=ledger.md)
    assert (await sweep(ledger, "sweep-2")).lots_expired == 0  # still not settled
    s = await settle(ledger, "acme", END, "settle-1")
    assert s.billed and s.invoiced_through.ToDatetime(tzinfo=UTC) == END
    assert (await sweep(ledger, "sweep-3")).lots_expired == 1
    lot = await lot_of(ledger, promo.lot_id)
    assert (lot.balance.consumed, lot.balance.expired, lot.balance.pending_expiry) == ("20.00", "10.00", "0.00")
    expires = await ledger.stub.ListEntries(pb.ListEntriesRequest(lot_id=promo.lot_id, kinds=[pb.EXPIRE]),
                                            metadata=ledger.md)
    assert [(e.amount, e.effective_at.ToDatetime(tzinfo=UTC)) for e in expires.entries] == [("10.00", day(14))]
    assert (await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)).ok


async def test_an_account_never_billed_settles_at_once(ledger: Ledger) -> None:
    await ledger.account("rt")
    got = await ledger.stub.GetSettlement(pb.GetSettlementRequest(account_id="rt"), metadata=ledger.md)
    assert not got.billed and not got.HasField("invoiced_through")
    lot = await ledger.grant("rt", "5.00", effective_at=ts(day(0)), expires_at=ts(day(2)))
    assert (await sweep(ledger, "s")).lots_expired == 1
    assert (await lot_of(ledger, lot.lot_id)).balance.expired == "5.00"


async def test_settlement_is_monotonic_idempotent_and_checked(ledger: Ledger) -> None:
    await ledger.account("acme")
    first = await settle(ledger, "acme", day(10), "k1")
    assert first.invoiced_through.ToDatetime(tzinfo=UTC) == day(10)
    assert await settle(ledger, "acme", day(10), "k1") == first  # replay
    back = await settle(ledger, "acme", day(5), "k2")  # an older instant changes nothing
    assert back.invoiced_through.ToDatetime(tzinfo=UTC) == day(10)
    await rejected(settle(ledger, "acme", day(12), "k1"), grpc.StatusCode.ALREADY_EXISTS, "idempotency_key")
    await rejected(settle(ledger, "nobody", day(12), "k3"), grpc.StatusCode.NOT_FOUND, "account_id")
    await rejected(ledger.stub.RecordSettlement(pb.RecordSettlementRequest(idempotency_key="k4", account_id="acme"),
                                                metadata=ledger.md), grpc.StatusCode.INVALID_ARGUMENT,
                   "invoiced_through")
    got = await ledger.stub.GetSettlement(pb.GetSettlementRequest(account_id="acme"), metadata=ledger.md)
    assert got.billed and got.invoiced_through.ToDatetime(tzinfo=UTC) == day(10)


async def test_releases_and_reversals_onto_an_unsettled_lot_stay_pending_expiry(ledger: Ledger) -> None:
    await ledger.account("acme")
    await settle(ledger, "acme", START, "s0")
    promo = await ledger.grant("acme", "30.00", type=pb.PROMOTIONAL, effective_at=ts(START), expires_at=ts(day(14)))
    # An invoice attempt that aborts (released) and one that is finalized then voided (reversed).
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r1", hold_key="invoice/a", account_id="acme", unit="USD",
        charges=[usage("li#0", "12.00", day(3))]), metadata=ledger.md)
    await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="rel", hold_key="invoice/a"),
                                  metadata=ledger.md)
    lot = await lot_of(ledger, promo.lot_id)
    assert (lot.balance.pending_expiry, lot.balance.expired) == ("30.00", "0.00")
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r2", hold_key="invoice/b", account_id="acme", unit="USD",
        charges=[usage("li#0", "12.00", day(3))]), metadata=ledger.md)
    await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c2", hold_key="invoice/b"), metadata=ledger.md)
    rev = await ledger.stub.ReverseHold(pb.ReverseHoldRequest(
        idempotency_key="v", hold_key="invoice/b", expired_lot_policy=pb.EXPIRE_AT_ONCE), metadata=ledger.md)
    assert rev.expired_at_once == "0.00"
    lot = await lot_of(ledger, promo.lot_id)
    assert (lot.balance.pending_expiry, lot.balance.consumed, lot.balance.reinstated) == ("30.00", "12.00", "12.00")
    # The re-billed invoice still gets its credit; after settlement the rest is breakage, once.
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d", account_id="acme", unit="USD", charges=[usage("li#0", "12.00", day(3))]),
        metadata=ledger.md)
    await settle(ledger, "acme", END, "s1")
    assert (await sweep(ledger, "sw")).lots_expired == 1
    lot = await lot_of(ledger, promo.lot_id)
    assert (lot.balance.consumed, lot.balance.expired, lot.balance.available) == ("24.00", "18.00", "0.00")
    # A reversal onto the settled lot is breakage at once (never a credit that never expires).
    rev = await ledger.stub.ReverseHold(pb.ReverseHoldRequest(
        idempotency_key="v2", hold_key="debit:d"), metadata=ledger.md)
    assert rev.expired_at_once == "12.00"
    assert (await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)).ok


async def test_rollover_moves_up_to_the_cap_into_a_rollover_lot_once(ledger: Ledger) -> None:
    await ledger.account("acme")
    monthly = await ledger.grant(
        "acme", "100.00", type=pb.PROMOTIONAL, priority=20, cost_basis="0.5", effective_at=ts(START),
        expires_at=ts(day(10)), scope=pb.Scope(kinds=[pb.USAGE]),
        rollover=pb.RolloverPolicy(max_amount="25.00", max_percent=30, expires_after_s=30 * 86400))
    assert (monthly.rollover.max_amount, monthly.rollover.max_percent) == ("25.00", 30)
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d", account_id="acme", unit="USD", charges=[usage("u", "40.00", day(2))]),
        metadata=ledger.md)
    # Two sweeps at once, then a retry of one: exactly one rollover lot.
    outs = await asyncio.gather(sweep(ledger, "a"), sweep(ledger, "b"))
    assert outs[0].lots_expired + outs[1].lots_expired == 1
    assert (await sweep(ledger, "a")) == outs[0]
    lots = (await ledger.stub.ListLots(pb.ListLotsRequest(account_id="acme", include_empty=True),
                                       metadata=ledger.md)).lots
    rolled = [x for x in lots if x.type == pb.ROLLOVER]
    assert len(rolled) == 1
    r = rolled[0]
    assert (r.amount, r.origin_lot_id, r.priority, r.cost_basis, r.unit) == ("25.00", monthly.lot_id, 20, "0.5", "USD")
    assert list(r.scope.kinds) == [pb.USAGE] and not r.HasField("rollover")
    assert r.effective_at.ToDatetime(tzinfo=UTC) == day(10)
    assert r.expires_at.ToDatetime(tzinfo=UTC) == day(10) + timedelta(days=30)
    origin = await lot_of(ledger, monthly.lot_id)
    b = origin.balance
    assert (b.consumed, b.transferred_out, b.expired, b.available) == ("40.00", "25.00", "35.00", "0.00")
    entries = await ledger.stub.ListEntries(pb.ListEntriesRequest(reference=f"rollover/{monthly.lot_id}"),
                                            metadata=ledger.md)
    assert sorted((e.lot_id, pb.EntryKind.Name(e.kind), e.amount) for e in entries.entries) == sorted(
        [(monthly.lot_id, "TRANSFER_OUT", "25.00"), (r.lot_id, "GRANT", "25.00")])
    # The rollover lot pays usage now (after its origin's window).
    paid = await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d2", account_id="acme", unit="USD",
        charges=[pb.Charge(charge_id="c", kind=pb.USAGE, amount="5.00")]),
        metadata=ledger.md)
    assert [a.lot_id for a in paid.allocations] == [r.lot_id]
    assert (await sweep(ledger, "c")).lots_expired == 0
    assert (await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)).ok


async def test_rollover_percent_cap_waits_for_settlement_and_bad_policies_are_refused(ledger: Ledger) -> None:
    await ledger.account("acme")
    await settle(ledger, "acme", START, "s0")
    lot = await ledger.grant("acme", "10.00", effective_at=ts(START), expires_at=ts(day(5)),
                             rollover=pb.RolloverPolicy(max_percent=15))
    assert (await sweep(ledger, "x")).lots_expired == 0
    await settle(ledger, "acme", END, "s1")
    assert (await sweep(ledger, "y")).lots_expired == 1
    b = (await lot_of(ledger, lot.lot_id)).balance
    assert (b.transferred_out, b.expired) == ("1.50", "8.50")
    await rejected(ledger.grant("acme", "1.00", rollover=pb.RolloverPolicy(max_percent=101)),
                   grpc.StatusCode.INVALID_ARGUMENT, "rollover.max_percent")
    await rejected(ledger.grant("acme", "1.00", rollover=pb.RolloverPolicy(max_amount="1.001")),
                   grpc.StatusCode.INVALID_ARGUMENT, "rollover.max_amount")
    await rejected(ledger.grant("acme", "1.00", type=pb.ROLLOVER, rollover=pb.RolloverPolicy()),
                   grpc.StatusCode.INVALID_ARGUMENT, "rollover")
    await rejected(ledger.grant("acme", "1.00", rollover=pb.RolloverPolicy(expires_after_s=-1)),
                   grpc.StatusCode.INVALID_ARGUMENT, "rollover.expires_after_s")
