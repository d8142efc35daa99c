"""Seeded random histories on a real ledger: the books stay balanced, complete and exact per lot.

Random grants (paid at several cost bases, promotional, compensatory), debits, holds committed in part
or released, reversals (invoice voids), transfers and their reversals, voided grants and expiry sweeps,
under both breakage methods, projected in small batches (so transfer legs and lots straddle batches):
verify_books finds nothing, the liability roll-forward of every month balances, the liability equals
the lots' remaining money, and once every lot expired both methods agree lot by lot.
"""

from __future__ import annotations

import random
from datetime import timedelta

import asyncpg
import grpc
import pytest
from credits.finance.v1 import finance_pb2 as fpb
from credits.ledger.v1 import ledger_pb2 as pb

from finance.storage import projector
from finance.storage.verify import verify_books
from service_runtime.proto_time import to_timestamp
from tests.finance.conftest import Books

ACCOUNTS = ("root", "team-a", "team-b")


async def _try(call: object) -> object | None:
    try:
        return await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:  # refusals (insufficient credit, nothing to reverse) are part of the game
        assert e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), e
        return None


async def random_history(b: Books, tenant: str, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    md = b.md(tenant)
    L = b.ledger
    for i, account in enumerate(ACCOUNTS):
        await L.CreateAccount(pb.CreateAccountRequest(idempotency_key=f"a{i}", account_id=account,
                                                      parent_account_id="" if i == 0 else "root"), metadata=md)
    lots: list[str] = []
    debits: list[str] = []
    transfers: list[str] = []
    for n in range(steps):
        b.clock.now += timedelta(hours=rng.randint(1, 30))
        account = rng.choice(ACCOUNTS)
        op = rng.random()
        if op < 0.2 or not lots:
            kind = rng.choice([pb.PURCHASED, pb.PURCHASED, pb.PROMOTIONAL, pb.COMPENSATORY])
            lot = await L.GrantCredits(pb.GrantCreditsRequest(
                idempotency_key=f"g{n}", account_id=account, type=kind, unit="USD",
                amount=f"{rng.randint(1, 50000) / 100:.2f}", reason_code="r", incident_id="i",
                cost_basis=rng.choice(["1", "0.8", "0.333333333"]) if kind == pb.PURCHASED else "",
                campaign_id=rng.choice(["", "spring"]),
                expires_at=to_timestamp(b.clock.now + timedelta(days=rng.randint(2, 40)))), metadata=md)
            lots.append(lot.lot_id)
        elif op < 0.55:
            hold = await _try(L.DebitCredits(pb.DebitCreditsRequest(
                idempotency_key=f"d{n}", account_id=account, unit="USD", reference=f"inv-{n}", up_to=True,
                charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="m",
                                   amount=f"{rng.randint(1, 20000) / 100:.2f}")]), metadata=md))
            if hold is not None:
                debits.append(hold.hold_key)  # type: ignore[attr-defined]
        elif op < 0.65:
            key = f"h{n}"
            held = await _try(L.ReserveCredits(pb.ReserveCreditsRequest(
                idempotency_key=key, hold_key=key, account_id=account, unit="USD", up_to=True,
                charges=[pb.Charge(charge_id="c", kind=pb.USAGE, name="m", amount="50.00")]), metadata=md))
            if held is not None and held.reserved not in ("0", "0.00"):  # type: ignore[attr-defined]
                if rng.random() < 0.7:
                    await L.CommitHold(pb.CommitHoldRequest(idempotency_key=f"c{n}", hold_key=key,
                                                            amount="10.00" if rng.random() < 0.3 else ""), metadata=md)
                    debits.append(key)
                else:
                    await L.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key=f"r{n}", hold_key=key), metadata=md)
        elif op < 0.72 and debits:
            await _try(L.ReverseHold(pb.ReverseHoldRequest(idempotency_key=f"v{n}", hold_key=debits.pop(
                rng.randrange(len(debits))), reason="void"), metadata=md))
        elif op < 0.82:
            src, dst = rng.sample(ACCOUNTS, 2)
            moved = await _try(L.TransferCredits(pb.TransferCreditsRequest(
                idempotency_key=f"t{n}", from_account_id=src, to_account_id=dst, unit="USD",
                amount=f"{rng.randint(1, 5000) / 100:.2f}"), metadata=md))
            if moved is not None:
                transfers.append(moved.transfer_id)  # type: ignore[attr-defined]
        elif op < 0.86 and transfers:
            await _try(L.ReverseTransfer(pb.ReverseTransferRequest(
                idempotency_key=f"rt{n}", transfer_id=transfers.pop(rng.randrange(len(transfers)))), metadata=md))
        elif op < 0.9:
            await _try(L.VoidGrant(pb.VoidGrantRequest(idempotency_key=f"vg{n}", lot_id=rng.choice(lots),
                                                       reason="refund"), metadata=md))
        else:
            await L.ExpireLots(pb.ExpireLotsRequest(idempotency_key=f"x{n}"), metadata=md)


async def check_books(b: Books, pool: asyncpg.Pool, tenant: str) -> list[tuple[object, ...]]:
    await projector.project(pool, tenant, window=7)  # batches of 7 entry ids: legs and lots straddle them
    async with pool.acquire() as conn:
        verification = await verify_books(conn, tenant)
        assert verification.violations == [], verification.violations[:5]
        assert verification.mismatch_minor == 0
        books = sorted((r["granted_at"], r["account_id"], r["lot_type"], r["deferred_at_grant"], r["recognized"],
                        r["breakage"], r["advance"], r["voided"], r["transferred_out"], r["units_remaining"])
                       for r in await conn.fetch("SELECT * FROM finance_lots WHERE tenant_id = $1", tenant))
    md = b.md(tenant)
    liability = await b.finance.GetLiabilityReport(fpb.GetLiabilityReportRequest(), metadata=md)
    assert all(r.matches_lots for r in liability.rows), liability
    for month in ("2025-01", "2025-02", "2025-03", "2025-04"):
        rf = await b.finance.GetLiabilityRollForward(fpb.GetLiabilityRollForwardRequest(period=month), metadata=md)
        assert all(r.balanced for r in rf.rows), (month, rf)
    return books


@pytest.mark.parametrize("seed", [11, 29])
async def test_random_histories_keep_the_books_exact(books: Books, seed: int) -> None:
    rules = '{"breakage": {"method": "PROPORTIONAL", "expected_rate": "0.3"}}'
    await books.finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r", rules_json=rules),
                                        metadata=books.md("proportional"))
    pool = await asyncpg.create_pool(books.dsn, min_size=1, max_size=2)
    try:
        start = books.clock.now
        for tenant in ("at-expiry", "proportional"):
            books.clock.now = start
            await random_history(books, tenant, seed, 90)
            await check_books(books, pool, tenant)
        books.clock.now += timedelta(days=60)  # every lot past its window: everything expires
        for tenant in ("at-expiry", "proportional"):
            await books.ledger.ExpireLots(pb.ExpireLotsRequest(idempotency_key="final"), metadata=books.md(tenant))
        a = await check_books(books, pool, "at-expiry")
        p = await check_books(books, pool, "proportional")
        assert a == p and a  # the same history (same seed), every lot settled: both methods agree lot by lot
        assert all(lot[-1] == 0 and lot[6] == 0 for lot in p)  # nothing left, no advance left
        kinds = {r[0] for r in await pool.fetch("SELECT DISTINCT kind FROM finance_entries")}
        assert kinds >= {"GRANT", "DEBIT", "HOLD", "POST", "RELEASE", "REINSTATE", "TRANSFER_OUT", "EXPIRE", "VOID"}
    finally:
        await pool.close()
