"""Seeded random operation sequences against the real server, checking SPEC §7 after every step.

Each step picks a valid or invalid operation at random (grant, reserve, commit, release, debit,
void, expire, reverse, transfer). After each: per lot, granted + reinstated = available + held +
consumed + expired + voided + transferred_out and no bucket is negative; and the credit granted
from outside (lots not created by a transfer) equals what the model granted through accepted
calls — so no rejected call wrote anything. At the end, journal replay must equal the projection.
"""

import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, ts

ACCOUNTS = ["root", "team-1", "team-2"]


def _d(text: str) -> int:
    return int(text.replace(".", ""))


async def check_lots(ledger: Ledger) -> int:
    """Checks every lot's invariants; returns the credit granted from outside the tenant."""
    external = 0
    for account in ACCOUNTS:
        lots = await ledger.stub.ListLots(pb.ListLotsRequest(account_id=account, include_empty=True, page_size=1000),
                                          metadata=ledger.md)
        for lot in lots.lots:
            b = lot.balance
            # on the wire, unused credit past the lot's window is pending_expiry instead of available
            vals = [_d(x) for x in (b.granted, b.reinstated, b.available, b.held, b.consumed, b.expired, b.voided,
                                    b.transferred_out, b.pending_expiry)]
            assert min(vals) >= 0, lot
            assert vals[0] + vals[1] == sum(vals[2:]), lot
        external += sum(_d(lot.amount) for lot in lots.lots if not lot.origin_lot_id)
    return external


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_operations_keep_invariants(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    await ledger.account("root")
    await ledger.account("team-1", parent="root")
    await ledger.account("team-2", parent="root")
    now = datetime.now(UTC)
    pending: list[str] = []
    committed: list[str] = []
    lots: list[str] = []
    transfers: list[str] = []
    accepted = rejected = granted = 0
    for step in range(120):
        account = rng.choice(ACCOUNTS)
        op = rng.choice(["grant", "grant", "reserve", "reserve", "commit", "release", "debit", "void", "expire",
                         "reverse", "transfer", "reverse_transfer", "bad"])
        key = f"s{seed}-{step}"
        amount = str(rng.choice([1, 2, 5, 10, 25, 40]))
        try:
            if op == "grant":
                expires = ts(now + timedelta(seconds=rng.choice([1, 3, 3600]))) if rng.random() < 0.4 else None
                lot = await ledger.stub.GrantCredits(pb.GrantCreditsRequest(
                    idempotency_key=key, account_id=account, unit="USD", amount=amount,
                    type=rng.choice([pb.PURCHASED, pb.PROMOTIONAL]), priority=rng.randint(1, 100),
                    expires_at=expires), metadata=ledger.md)
                lots.append(lot.lot_id)
                granted += _d(lot.amount)
            elif op in ("reserve", "debit"):
                req_charges = [charge(amount, charge_id="c0"), charge("1", charge_id="c1")]
                if op == "reserve":
                    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
                        idempotency_key=key, hold_key=key, account_id=account, unit="USD", charges=req_charges,
                        up_to=rng.random() < 0.3), metadata=ledger.md)
                    pending.append(key)
                else:
                    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
                        idempotency_key=key, account_id=account, unit="USD", charges=req_charges),
                        metadata=ledger.md)
                    committed.append(f"debit:{key}")
            elif op == "commit" and pending:
                hold_key = pending.pop(rng.randrange(len(pending)))
                hold = await ledger.stub.GetHold(pb.GetHoldRequest(hold_key=hold_key), metadata=ledger.md)
                part = str(rng.randint(0, _d(hold.reserved)) / 100) if rng.random() < 0.5 else ""
                await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key=key, hold_key=hold_key,
                                                                  amount=part), metadata=ledger.md)
                committed.append(hold_key)
            elif op == "release" and pending:
                hold_key = pending.pop(rng.randrange(len(pending)))
                await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key=key, hold_key=hold_key),
                                              metadata=ledger.md)
            elif op == "void" and lots:
                await ledger.stub.VoidGrant(pb.VoidGrantRequest(idempotency_key=key, lot_id=rng.choice(lots)),
                                            metadata=ledger.md)
            elif op == "expire":
                await ledger.stub.ExpireLots(pb.ExpireLotsRequest(idempotency_key=key), metadata=ledger.md)
            elif op == "reverse" and committed:
                await ledger.stub.ReverseReference(pb.ReverseReferenceRequest(
                    idempotency_key=key, hold_key=committed.pop(rng.randrange(len(committed))),
                    expired_lot_policy=rng.choice([pb.EXPIRE_AT_ONCE, pb.REINSTATE_WITH_GRACE]), grace_s=60),
                    metadata=ledger.md)
            elif op == "transfer":
                out = await ledger.stub.TransferCredits(pb.TransferCreditsRequest(
                    idempotency_key=key, from_account_id="root", to_account_id=rng.choice(ACCOUNTS[1:]), unit="USD",
                    amount=amount), metadata=ledger.md)
                transfers.append(out.transfer_id)
            elif op == "reverse_transfer" and transfers:
                await ledger.stub.ReverseTransfer(pb.ReverseTransferRequest(
                    idempotency_key=key, transfer_id=transfers.pop(rng.randrange(len(transfers)))),
                    metadata=ledger.md)
            elif op == "bad":
                await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
                    idempotency_key=key, account_id=account, unit="USD", charges=[charge("-1")]), metadata=ledger.md)
            accepted += 1
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), (
                op, err.code(), err.details())
            rejected += 1
        assert await check_lots(ledger) == granted
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert v.ok, v.violations
    assert accepted > 40 and rejected > 5
