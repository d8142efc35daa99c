"""Duplicate starts run once; concurrent finalizations on one account never overspend."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from stack.scenario import PERIOD_START, seed_customer, ts
from tests.coordinator.conftest import Stack


async def test_duplicate_start_attaches_to_the_same_run(stack: Stack) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        handles = await asyncio.gather(*(stack.start_finalize(invoice_id) for _ in range(5)))
        assert len({h.result_run_id for h in handles}) == 1
        results = await asyncio.gather(*(h.result() for h in handles))
        # After completion a new start attaches to the finished run (reuse policy: failed only).
        again = await stack.start_finalize(invoice_id)
        assert (await again.describe()).run_id == handles[0].result_run_id
        assert (await again.result()).number == results[0].number
    assert {r.number for r in results} == {"INV-000001"}
    assert len(await stack.holds(invoice_id)) == 1
    assert await stack.assert_both_or_neither(invoice_id, "acct-john-wick") == "finalized"


async def test_twenty_concurrent_finalizations_on_one_account_never_overspend(stack: Stack) -> None:
    pool = "acct-pool"
    first = await seed_customer(stack.services, "c-0", account_id=pool, credit="")
    await stack.services.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="pool-grant", account_id=pool, type=lpb.PURCHASED, unit="USD", amount="730.00",
        effective_at=ts(PERIOD_START)),
        metadata=stack.md)
    invoices = [first, *await asyncio.gather(*(seed_customer(stack.services, f"c-{n}", account_id=pool, credit="")
                                              for n in range(1, 20)))]
    async with stack.worker():
        handles = await asyncio.gather(*(stack.start_finalize(i) for i in invoices))
        results = await asyncio.gather(*(h.result() for h in handles))
    applied = [Decimal(r.credits_applied) for r in results]
    assert sum(applied) == Decimal("730.00")  # every cent used, none twice
    assert all(Decimal(r.credits_applied) + Decimal(r.amount_due) == Decimal("100.00") for r in results)
    bal = await stack.balance(pool)
    assert (bal.available, bal.held, bal.consumed) == ("0.00", "0.00", "730.00")
    for invoice_id in invoices:
        inv = await stack.invoice(invoice_id)
        assert inv.status == ipb.FINALIZED
        [hold] = await stack.holds(invoice_id)
        assert hold.status == lpb.COMMITTED and hold.posted == inv.credits_applied
    assert sorted(r.number for r in results) == [f"INV-{n:06d}" for n in range(1, 21)]
    await stack.verify_journal()
