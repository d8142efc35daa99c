"""Property (issue #10): sweeps at random instants never change what an invoice is paid, and conservation holds.

Two accounts get the same seeded history — grants with windows across four invoice periods (some
with a rollover policy), each period's invoice as reserve + commit with service times inside it,
voids (ReverseHold, EXPIRE_AT_ONCE) of earlier invoices, and after each invoice the settlement
the coordinator records (invoiced_through = the period's end) followed by a sweep (the saga's
post-commit step). Account "a" additionally gets ExpireLots at random instants in between;
account "b" none. Every invoice must get exactly the same credits on both (for lots without a
rollover policy that is the same as no sweep at all: a settled lot can pay no later charge), and
every lot keeps granted + reinstated = available + pending_expiry + held + consumed + expired +
voided + transferred_out, with the journal replay equal to the projection.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import ts

NOW = datetime.now(UTC).replace(microsecond=0)
BASE = NOW - timedelta(days=50)
PERIOD = timedelta(days=10)
ACCOUNTS = ("a", "b")


def _instant(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


async def _grants(ledger: Ledger, rng: random.Random, n: int) -> None:
    for i in range(n):
        effective = _instant(rng, BASE - timedelta(days=5), BASE + timedelta(days=35))
        expires = effective + timedelta(days=rng.randint(3, 25))
        req = pb.GrantCreditsRequest(type=rng.choice([pb.PROMOTIONAL, pb.PURCHASED]), unit="USD",
                                     amount=f"{rng.randint(5, 30)}.{rng.randint(0, 99):02d}",
                                     priority=rng.randint(1, 3) * 10, effective_at=ts(effective),
                                     expires_at=ts(expires))
        if rng.random() < 0.4:
            req.rollover.CopyFrom(pb.RolloverPolicy(max_percent=rng.choice([0, 25, 50]),
                                                    max_amount=rng.choice(["", "4.00"]),
                                                    expires_after_s=rng.choice([0, 12 * 86400])))
        for account in ACCOUNTS:
            one = pb.GrantCreditsRequest()
            one.CopyFrom(req)
            one.idempotency_key, one.account_id = f"g{i}-{account}", account
            await ledger.stub.GrantCredits(one, metadata=ledger.md)


async def _sweep(ledger: Ledger, account: str, key: str, as_of: datetime | None = None) -> None:
    req = pb.ExpireLotsRequest(idempotency_key=key, account_id=account)
    if as_of is not None:
        req.as_of.CopyFrom(ts(as_of))
    await ledger.stub.ExpireLots(req, metadata=ledger.md)


async def _invoice(ledger: Ledger, rng: random.Random, period: int) -> dict[str, str]:
    start = BASE + period * PERIOD
    charges = [pb.Charge(charge_id=f"li{k}", kind=pb.USAGE, amount=f"{rng.randint(1, 15)}.00",
                         service_start=ts(t), service_end=ts(t))
               for k, t in enumerate(sorted(_instant(rng, start, start + PERIOD) for _ in range(3)))]
    posted = {}
    for account in ACCOUNTS:
        key = f"invoice/{account}/{period}"
        await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
            idempotency_key=f"r{key}", hold_key=key, account_id=account, unit="USD", up_to=True,
            charges=charges), metadata=ledger.md)
        hold = await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key=f"c{key}", hold_key=key),
                                            metadata=ledger.md)
        posted[account] = sorted((a.charge_id, a.posted) for a in hold.allocations)  # type: ignore[assignment]
    return posted


async def _check_lots(ledger: Ledger) -> None:
    for account in ACCOUNTS:
        lots = await ledger.stub.ListLots(pb.ListLotsRequest(account_id=account, include_empty=True, page_size=1000),
                                          metadata=ledger.md)
        for lot in lots.lots:
            b = lot.balance
            d = [Decimal(x or "0") for x in (b.granted, b.reinstated, b.available, b.pending_expiry, b.held,
                                              b.consumed, b.expired, b.voided, b.transferred_out)]
            assert min(d) >= 0 and d[0] + d[1] == sum(d[2:]), lot
    verify = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert verify.ok, verify.violations


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_random_sweeps_change_no_invoice_and_keep_conservation(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    for account in ACCOUNTS:
        await ledger.account(account)
        await ledger.stub.RecordSettlement(pb.RecordSettlementRequest(
            idempotency_key=f"s0-{account}", account_id=account, invoiced_through=ts(BASE)), metadata=ledger.md)
    await _grants(ledger, rng, 6)
    sweeps = 0
    for period in range(4):
        if rng.random() < 0.7:
            sweeps += 1
            await _sweep(ledger, "a", f"random-{sweeps}", _instant(rng, BASE, NOW))
        posted = await _invoice(ledger, rng, period)
        assert posted["a"] == posted["b"], (period, posted)
        if period and rng.random() < 0.5:
            voided = rng.randrange(period)
            for account in ACCOUNTS:
                rev = await ledger.stub.ReverseHold(pb.ReverseHoldRequest(
                    idempotency_key=f"v{account}{voided}", hold_key=f"invoice/{account}/{voided}",
                    expired_lot_policy=pb.EXPIRE_AT_ONCE), metadata=ledger.md)
                assert rev.hold_key  # reversed (a second void of the same invoice replays)
        if rng.random() < 0.7:
            sweeps += 1
            await _sweep(ledger, "a", f"random-{sweeps}", _instant(rng, BASE, NOW))
        for account in ACCOUNTS:  # the finalization's settlement, then the sweep
            await ledger.stub.RecordSettlement(pb.RecordSettlementRequest(
                idempotency_key=f"s{period + 1}-{account}", account_id=account,
                invoiced_through=ts(BASE + (period + 1) * PERIOD)), metadata=ledger.md)
            await _sweep(ledger, account, f"settled-{period}-{account}")
        await _check_lots(ledger)
    bal = {a: (await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id=a), metadata=ledger.md)).totals[0]
           for a in ACCOUNTS}
    assert (bal["a"].consumed, bal["a"].expired, bal["a"].transferred_out) == (
        bal["b"].consumed, bal["b"].expired, bal["b"].transferred_out)
