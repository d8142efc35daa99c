"""One finalization run per invoice holds credits (`LedgerActivities._one_run_at_a_time`), checked over
seeded random schedules against the real ledger: several runs reserve for one invoice at once, in a
random order with random delays, some retrying their reserve (an activity retry replays it). Exactly one
run goes on — the one whose hold took credits first: the ledger created it first or, within one
group-commit transaction, it reserved the most — and every other gives way, on every attempt.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as lpb
from temporalio.exceptions import ApplicationError

from coordinator import naming
from coordinator.activities import LedgerActivities, first_hold, holding_since
from coordinator.keys import StaticKeyStore
from coordinator.messages import ChargeSpec, ReserveInput
from stack.scenario import seed_customer, ts
from tests.coordinator.conftest import TENANT, Stack

SEEDS = range(8)


async def _reserve(ledger: LedgerActivities, inp: ReserveInput, delay: float, attempts: int) -> bool:
    """Whether the run goes on; a replayed reserve (an activity retry) must answer the same."""
    await asyncio.sleep(delay)
    answers = []
    for _ in range(attempts):
        try:
            await ledger.reserve_credits(inp)
            answers.append(True)
        except ApplicationError as err:
            assert "gives way" in str(err) and err.non_retryable, err
            answers.append(False)
    assert len(set(answers)) == 1, (inp.hold_key, answers)
    return answers[0]


async def test_exactly_the_run_with_the_oldest_hold_goes_on(stack: Stack) -> None:
    await seed_customer(stack.services, "race-many")
    account = "acct-race-many"
    channel = grpc.aio.insecure_channel(stack.ledger_addr)
    ledger = LedgerActivities(channel, StaticKeyStore({TENANT: stack.coordinator_key}))
    # $30 of usage against the customer's $50: the first hold takes 30, the next 20, the others nothing
    charge = ChargeSpec("c1", lpb.USAGE, "input_tokens", "30.00", "2026-08-02T00:00:00+00:00",
                        "2026-08-03T00:00:00+00:00")
    try:
        for seed in SEEDS:
            rng = random.Random(seed)
            invoice = f"inv_race{seed:02d}"
            runs = [f"run-{seed}-{k}" for k in range(rng.randint(2, 5))]
            retries = {run for run in runs if rng.random() < 0.5}

            went_on = await asyncio.gather(*(
                _reserve(ledger, ReserveInput(TENANT, f"race/{run}/reserve", naming.hold_key(invoice, run), account,
                                              "USD", [charge], invoice),
                         rng.random() * 0.03, 2 if run in retries else 1)
                for run in runs))
            holds = (await stack.services.ledger.ListHolds(lpb.ListHoldsRequest(
                hold_key_prefix=naming.invoice_holds_prefix(invoice)), metadata=stack.md)).holds
            assert len(holds) == len(runs) and all(h.status == lpb.PENDING for h in holds), holds
            first = min(holds, key=lambda h: (h.created_at.seconds, h.created_at.nanos, -Decimal(h.reserved),
                                              h.hold_key))
            assert Decimal(first.reserved) == max(Decimal(h.reserved) for h in holds) == 30, holds
            assert [run for run, ok in zip(runs, went_on, strict=True) if ok] == [
                naming.parse_hold_key(first.hold_key)[1]], (seed, runs, went_on)  # type: ignore[index]
            for h in holds:  # the losers' sagas would compensate; here every hold goes back
                await stack.services.ledger.ReleaseHold(lpb.ReleaseHoldRequest(
                    idempotency_key=f"race/release/{h.hold_key}", hold_key=h.hold_key), metadata=stack.md)
    finally:
        await channel.close()


def test_the_first_hold_is_the_one_that_took_credits_first_even_within_one_transaction() -> None:
    """Seeded schedules on a simulated account: 2-5 runs reserve for one invoice in some order, each from
    what the earlier ones left; consecutive reserves share a group-commit transaction, and so its instant, at
    random; the run ids (so the hold keys) are random. The hold `first_hold` picks reserved as much as the
    one applied first, at its instant — whatever order the holds are listed in, with other holds of the
    account among them. (The key alone as the tie-break picks a run that reserved less in some schedules:
    the rule went on with a run holding nothing while the one holding the credits gave way.)"""
    by_key_alone_wrong = 0
    for seed in range(400):
        rng = random.Random(seed)
        left, asked = Decimal(rng.choice([0, 10, 50, 100, 150, 250])), Decimal(rng.choice([40, 100]))
        order = [f"{rng.getrandbits(64):016x}" for _ in range(rng.randint(2, 5))]  # application order
        holds: list[tuple[int, int, Decimal, str]] = [(1_800_000_000, 0, Decimal(7), "debit:other-usage")]
        instant = 0
        for i, run in enumerate(order):
            if i == 0 or rng.random() < 0.5:
                instant += rng.randint(1, 999)  # a new transaction, a later instant
            got = min(asked, left)
            left -= got
            holds.append((1_800_000_000, instant * 1000, got, naming.hold_key("inv_x", run)))
        rng.shuffle(holds)
        held = {key: (sec, nanos, reserved) for sec, nanos, reserved, key in holds}
        applied_first = held[naming.hold_key("inv_x", order[0])]
        assert held[first_hold(holds)] == applied_first, (seed, holds)
        saga = [h for h in holds if naming.parse_hold_key(h[3])]
        naive = min(saga, key=lambda h: (h[0], h[1], h[3]))
        by_key_alone_wrong += naive[2] != applied_first[2]
    assert by_key_alone_wrong > 0
    assert first_hold([(1, 0, Decimal(5), "debit:x")]) == ""


@pytest.mark.parametrize("key", ["inv/x/run-1", "inv/x/run-1:token", "debit:abc", "order-7"])
def test_only_saga_holds_take_part(key: str) -> None:
    """The rule concerns saga holds of a finalization run (`inv/<invoice>/<run>[:suffix]`) only."""
    assert (naming.parse_hold_key(key) is not None) == key.startswith(naming.HOLD_PREFIX)


def _hold(key: str, status: int, created: int, resolved: int = 0) -> lpb.Hold:
    h = lpb.Hold(hold_key=key, status=status)  # type: ignore[arg-type]
    h.created_at.seconds = created
    if resolved:
        h.resolved_at.seconds = resolved
    return h


def test_a_hold_resolved_after_ours_was_placed_still_counts() -> None:
    """`holding_since`: the holds that held credits at some moment since ours was created."""
    holds = [_hold("inv/x/ours", lpb.PENDING, 20),
             _hold("inv/x/released-after", lpb.RELEASED, 10, 25),   # held credits when ours was placed
             _hold("inv/x/committed-after", lpb.COMMITTED, 12, 20),  # resolved at our very instant: counted
             _hold("inv/x/released-before", lpb.RELEASED, 5, 15),    # gone before ours: not counted
             _hold("inv/x/later", lpb.PENDING, 30),
             _hold("inv/x/tomb", lpb.TOMBSTONE, 1)]
    assert [h.hold_key for h in holding_since(holds, "inv/x/ours")] == [
        "inv/x/ours", "inv/x/released-after", "inv/x/committed-after", "inv/x/later"]


async def test_a_run_gives_way_to_one_that_released_its_hold_between_our_reserve_and_our_check(stack: Stack) -> None:
    """Run A reserves the customer's $50; run B's reserve gets nothing; A then compensates (releases) before B
    checks. B must still give way: it holds nothing because A held everything when B reserved, and going
    on would finalize the invoice at full price. (Counting only PENDING holds, B went on.)"""
    await seed_customer(stack.services, "race-gone")
    account, invoice = "acct-race-gone", "inv_racegone01"
    channel = grpc.aio.insecure_channel(stack.ledger_addr)
    ledger = LedgerActivities(channel, StaticKeyStore({TENANT: stack.coordinator_key}))
    charge = ChargeSpec("c1", lpb.USAGE, "input_tokens", "80.00", "2026-08-02T00:00:00+00:00",
                        "2026-08-03T00:00:00+00:00")

    def reserve_input(run: str) -> ReserveInput:
        return ReserveInput(TENANT, f"gone/{run}/reserve", naming.hold_key(invoice, run), account, "USD", [charge],
                            invoice)

    try:
        first = await ledger.reserve_credits(reserve_input("run-a"))
        assert first.reserved == "50.00", first
        b = reserve_input("run-b")
        held = await stack.services.ledger.ReserveCredits(lpb.ReserveCreditsRequest(
            idempotency_key=b.idempotency_key, hold_key=b.hold_key, account_id=account, unit="USD", up_to=True,
            reference=invoice, charges=[lpb.Charge(charge_id="c1", kind=lpb.USAGE, name="input_tokens",
                                                   amount="80.00", service_start=ts(datetime(2026, 8, 2, tzinfo=UTC)),
                                                   service_end=ts(datetime(2026, 8, 3, tzinfo=UTC)))]),
            metadata=stack.md)
        assert held.reserved == "0.00", held
        await stack.services.ledger.ReleaseHold(lpb.ReleaseHoldRequest(
            idempotency_key="gone/run-a/release", hold_key=naming.hold_key(invoice, "run-a")), metadata=stack.md)
        with pytest.raises(ApplicationError, match="gives way"):
            await ledger._one_run_at_a_time(b)
    finally:
        await channel.close()
