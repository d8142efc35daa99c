"""Two-phase holds (SPEC §5): reserve, commit, release, TTL, tombstones, one resolution."""

import asyncio

import grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, rejected


def reserve(key: str, amount: str, account: str = "acme", **kw: object) -> pb.ReserveCreditsRequest:
    return pb.ReserveCreditsRequest(idempotency_key=f"r-{key}", hold_key=key, account_id=account, unit="USD",
                                    charges=[charge(amount)], **kw)  # type: ignore[arg-type]


async def balance(ledger: Ledger, account: str = "acme") -> pb.BalanceBucket:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=ledger.md)
    return bal.totals[0]


async def test_reserve_is_all_or_nothing_unless_up_to(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "10.00")
    await rejected(ledger.stub.ReserveCredits(reserve("h1", "10.01"), metadata=ledger.md),
                   grpc.StatusCode.FAILED_PRECONDITION, "insufficient credits", "charges[0].amount")
    b = await balance(ledger)
    assert (b.available, b.held) == ("10.00", "0.00")
    hold = await ledger.stub.ReserveCredits(reserve("h2", "12.00", up_to=True), metadata=ledger.md)
    assert (hold.requested, hold.reserved, hold.status) == ("12.00", "10.00", pb.PENDING)
    b = await balance(ledger)
    assert (b.available, b.held) == ("0.00", "10.00")


async def test_commit_partial_releases_the_rest(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "10.00")
    await ledger.stub.ReserveCredits(reserve("h1", "6.00"), metadata=ledger.md)
    await rejected(ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c0", hold_key="h1", amount="6.01"),
                                          metadata=ledger.md), grpc.StatusCode.INVALID_ARGUMENT, "amount", "exceeds")
    hold = await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c1", hold_key="h1", amount="4.00"),
                                        metadata=ledger.md)
    assert (hold.status, hold.posted, hold.released) == (pb.COMMITTED, "4.00", "2.00")
    b = await balance(ledger)
    assert (b.available, b.held, b.consumed) == ("6.00", "0.00", "4.00")


async def test_one_resolution_per_hold(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "10.00")
    await ledger.stub.ReserveCredits(reserve("h1", "5.00"), metadata=ledger.md)
    await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c1", hold_key="h1"), metadata=ledger.md)
    # The same resolution again (another key, e.g. a retrying coordinator) returns the hold.
    again = await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c2", hold_key="h1"),
                                         metadata=ledger.md)
    assert again.status == pb.COMMITTED and again.posted == "5.00"
    await rejected(ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="x1", hold_key="h1"),
                                           metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "committed")
    await rejected(ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c3", hold_key="h1", amount="1.00"),
                                          metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "another amount")
    await ledger.stub.ReserveCredits(reserve("h2", "1.00"), metadata=ledger.md)
    rel = await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="x2", hold_key="h2"), metadata=ledger.md)
    assert rel.status == pb.RELEASED
    await rejected(ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c4", hold_key="h2"),
                                          metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "RELEASED")
    b = await balance(ledger)
    assert (b.available, b.held, b.consumed) == ("5.00", "0.00", "5.00")


async def test_release_before_reserve_leaves_a_tombstone(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "10.00")
    await rejected(ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="x0", hold_key="late"),
                                           metadata=ledger.md), grpc.StatusCode.INVALID_ARGUMENT, "account_id")
    tomb = await ledger.stub.ReleaseHold(
        pb.ReleaseHoldRequest(idempotency_key="x1", hold_key="late", account_id="acme"), metadata=ledger.md)
    assert tomb.status == pb.TOMBSTONE
    # The compensation may be retried: same answer.
    again = await ledger.stub.ReleaseHold(
        pb.ReleaseHoldRequest(idempotency_key="x2", hold_key="late", account_id="acme"), metadata=ledger.md)
    assert again.status == pb.TOMBSTONE
    await rejected(ledger.stub.ReserveCredits(reserve("late", "1.00"), metadata=ledger.md),
                   grpc.StatusCode.FAILED_PRECONDITION, "released before it was reserved")
    assert (await balance(ledger)).held == "0.00"


async def test_ttl_sweep_releases_only_real_time_holds(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "10.00")
    await ledger.stub.ReserveCredits(reserve("rt", "1.00", ttl_s=1, release_on_ttl=True), metadata=ledger.md)
    await ledger.stub.ReserveCredits(reserve("saga", "2.00", ttl_s=1), metadata=ledger.md)
    await asyncio.sleep(1.1)
    await rejected(ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c", hold_key="rt"),
                                          metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "TTL")
    out = await ledger.stub.ReleaseExpiredHolds(pb.ReleaseExpiredHoldsRequest(idempotency_key="sweep1"),
                                                metadata=ledger.md)
    assert list(out.hold_keys) == ["rt"]
    saga = await ledger.stub.GetHold(pb.GetHoldRequest(hold_key="saga"), metadata=ledger.md)
    assert saga.status == pb.PENDING  # never resolved by time alone: the coordinator decides
    b = await balance(ledger)
    assert (b.available, b.held) == ("8.00", "2.00")


async def test_debit_reserves_and_commits_in_one_call(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "3.00")
    req = pb.DebitCreditsRequest(idempotency_key="d1", account_id="acme", unit="USD", charges=[charge("2.00")],
                                 reference="evt-1")
    first = await ledger.stub.DebitCredits(req, metadata=ledger.md)
    replay = await ledger.stub.DebitCredits(req, metadata=ledger.md)
    assert first == replay and first.status == pb.COMMITTED
    await rejected(ledger.stub.DebitCredits(
        pb.DebitCreditsRequest(idempotency_key="d2", account_id="acme", unit="USD", charges=[charge("2.00")]),
        metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "insufficient")
    b = await balance(ledger)
    assert (b.available, b.consumed) == ("1.00", "2.00")


async def test_batch_debits_report_each_outcome(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.account("beta")
    await ledger.grant("acme", "5")
    await ledger.grant("beta", "1")
    debits = [pb.DebitCreditsRequest(idempotency_key=f"b{i}", account_id="acme", unit="USD",
                                     charges=[charge("1.00")]) for i in range(7)]
    debits.append(pb.DebitCreditsRequest(idempotency_key="bb", account_id="beta", unit="USD", charges=[charge("1")]))
    debits.append(pb.DebitCreditsRequest(idempotency_key="", account_id="beta", unit="USD", charges=[charge("1")]))
    out = await ledger.stub.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=debits), metadata=ledger.md)
    ok = [r.HasField("hold") for r in out.results]
    assert ok == [True] * 5 + [False, False, True, False]
    assert out.results[5].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "debits[8].idempotency_key" in out.results[8].error.message
    assert (await balance(ledger, "acme")).consumed == "5.00"


async def test_1000_concurrent_reserves_on_500_credits(ledger: Ledger) -> None:
    await ledger.account("hot")
    await ledger.grant("hot", "500", unit="token")

    async def one(i: int) -> bool:
        try:
            await ledger.stub.ReserveCredits(
                pb.ReserveCreditsRequest(idempotency_key=f"k{i}", hold_key=f"h{i}", account_id="hot", unit="token",
                                         charges=[charge("1")]), metadata=ledger.md)
            return True
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            return False

    results = await asyncio.gather(*(one(i) for i in range(1000)))
    assert sum(results) == 500
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="hot"), metadata=ledger.md)
    assert (bal.totals[0].available, bal.totals[0].held) == ("0", "500")
    lots = await ledger.stub.ListLots(pb.ListLotsRequest(account_id="hot", include_empty=True), metadata=ledger.md)
    assert all(not lot.balance.available.startswith("-") for lot in lots.lots)
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert v.ok, v.violations


async def test_an_up_to_reserve_of_nothing_is_an_empty_hold_that_commits_and_reverses(ledger: Ledger) -> None:
    """A $0 invoice's finalization reserves nothing: the hold exists (its key is the saga's record on
    the ledger side), commits with nothing posted and reverses to nothing; balances do not move."""
    await ledger.account("acme")
    await ledger.grant("acme", "10.00")
    await rejected(ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r0", hold_key="h0", account_id="acme", unit="USD"), metadata=ledger.md),
        grpc.StatusCode.INVALID_ARGUMENT, "charges")
    empty = pb.ReserveCreditsRequest(idempotency_key="r1", hold_key="h1", account_id="acme", unit="USD", up_to=True)
    hold = await ledger.stub.ReserveCredits(empty, metadata=ledger.md)
    assert (hold.status, hold.requested, hold.reserved, len(hold.allocations)) == (pb.PENDING, "0.00", "0.00", 0)
    hold = await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c1", hold_key="h1"), metadata=ledger.md)
    assert (hold.status, hold.posted or "0.00") == (pb.COMMITTED, "0.00")
    back = await ledger.stub.ReverseHold(pb.ReverseHoldRequest(idempotency_key="v1", hold_key="h1", reason="void"),
                                         metadata=ledger.md)
    assert list(back.reinstated) == []
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(idempotency_key="r2", hold_key="h2", account_id="acme",
                                                              unit="USD", up_to=True), metadata=ledger.md)
    rel = await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="x2", hold_key="h2"), metadata=ledger.md)
    assert rel.status == pb.RELEASED
    b = await balance(ledger)
    assert (b.available, b.held, b.consumed) == ("10.00", "0.00", "0.00")
