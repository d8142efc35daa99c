"""The gateway library against a real ledger server: exact spend across gates, settle, denials."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from gateway.gate import Denial, Excess, Gate, GateConfig, WhenUnreachable
from service_runtime.proto_time import to_timestamp
from tests.ledger.conftest import Ledger

FAST = GateConfig(unit="token", report_interval_s=0.05, lease_ttl_s=5, lease_horizon_s=0.5, min_lease=5,
                  max_lease=200)


async def _gates(ledger: Ledger, n: int, config: GateConfig = FAST) -> list[Gate]:
    gates = [Gate(ledger.stub, ledger.key, config, gate_id=f"g{i}") for i in range(n)]
    for g in gates:
        await g.start()
    return gates


async def _balance(ledger: Ledger, account: str) -> pb.BalanceBucket:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=ledger.md)
    return next(b for b in bal.totals if b.unit == "token")


async def _demand(gate: Gate, account: str, stop: asyncio.Event, counts: list[int]) -> None:
    """One closed-loop client: authorize 1, settle it at 1, until told to stop."""
    while not stop.is_set():
        decision = await gate.authorize(account, 1)
        if decision.allowed:
            assert decision.ticket is not None
            await gate.settle(decision.ticket, 1)
            counts[0] += 1
        else:
            assert decision.reason is Denial.INSUFFICIENT, decision
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)


async def test_500_credits_buy_exactly_500_across_8_gates(ledger: Ledger) -> None:
    await ledger.account("hot")
    await ledger.grant("hot", "500", unit="token")
    gates = await _gates(ledger, 8)
    stop, counts = asyncio.Event(), [[0] for _ in gates]
    clients = [asyncio.create_task(_demand(g, "hot", stop, c)) for g, c in zip(gates, counts, strict=True)
               for _ in range(4)]
    for _ in range(400):  # demand lasts until the ledger has nothing left, held or available
        await asyncio.sleep(0.05)
        bal = await _balance(ledger, "hot")
        if bal.available == "0" and bal.held == "0":
            break
    stop.set()
    await asyncio.gather(*clients)
    for g in gates:
        await g.close()
    bal = await _balance(ledger, "hot")
    assert sum(c[0] for c in counts) == 500 == sum(g.stats.authorized for g in gates)
    assert (bal.consumed, bal.available, bal.held) == ("500", "0", "0")
    assert sum(g.stats.denials.get("insufficient", 0) for g in gates) > 0
    assert sum(g.stats.local for g in gates) > sum(g.stats.reserved for g in gates)  # mostly from leases


async def test_settle_adjusts_within_the_lease_and_debits_or_refuses_the_excess(ledger: Ledger) -> None:
    await ledger.account("a")
    await ledger.grant("a", "1000", unit="token")
    [gate] = await _gates(ledger, 1, GateConfig(unit="token", report_interval_s=60, min_lease=50, max_lease=50))
    first = await gate.authorize("a", 10)
    assert first.allowed and first.ticket is not None and first.ticket.lease is not None
    assert (await gate.settle(first.ticket, 4)).charged == 4          # less: the rest goes back to the lease
    second = await gate.authorize("a", 10)
    assert second.ticket is not None
    big = await gate.settle(second.ticket, 100)                        # more than the lease can cover
    assert (big.charged, big.debited, big.refused) == (46, 54, 0)
    await gate.close()
    bal = await _balance(ledger, "a")
    assert (bal.consumed, bal.held) == ("104", "0")

    [strict] = await _gates(ledger, 1, GateConfig(unit="token", report_interval_s=60, min_lease=20, max_lease=20,
                                                  on_excess=Excess.REFUSE))
    d = await strict.authorize("a", 10)
    assert d.ticket is not None
    assert (await strict.settle(d.ticket, 35)) == type(big)(charged=20, debited=0, refused=15)
    await strict.close()
    assert (await _balance(ledger, "a")).consumed == "124"


async def test_denials_say_why(ledger: Ledger) -> None:
    [gate] = await _gates(ledger, 1)
    unknown = await gate.authorize("nobody", 1)
    assert (unknown.allowed, unknown.reason) == (False, Denial.ACCOUNT_REFUSED) and "NOT_FOUND" in unknown.detail
    await gate.close()
    dead = grpc.aio.insecure_channel("127.0.0.1:1")
    for policy, budget, allowed in ((WhenUnreachable.FAIL_CLOSED, 0, 0), (WhenUnreachable.FAIL_OPEN, 5, 5)):
        cut = Gate(ledger_pb2_grpc.LedgerServiceStub(dead), ledger.key,
                   GateConfig(unit="token", on_unreachable=policy, fail_open_budget=budget, call_timeout_s=0.2))
        cut._scale = 0  # started without the ledger: it is unreachable
        decisions = [await cut.authorize("a", 1) for _ in range(budget + 2)]
        assert sum(d.allowed for d in decisions) == allowed
        assert decisions[-1].reason is Denial.LEDGER_UNREACHABLE
    await dead.close()


async def test_a_gate_that_vanishes_gives_its_lease_back_on_ttl(ledger: Ledger) -> None:
    await ledger.account("b")
    await ledger.grant("b", "100", unit="token")
    [gate] = await _gates(ledger, 1, GateConfig(unit="token", report_interval_s=60, lease_ttl_s=1, min_lease=40,
                                                max_lease=40))
    for _ in range(7):
        d = await gate.authorize("b", 1)
        assert d.allowed and d.ticket is not None
        await gate.settle(d.ticket, 1)
    assert gate._ticker is not None
    gate._ticker.cancel()  # the gate dies: no report, no close
    assert (await _balance(ledger, "b")).held == "40"
    await ledger.stub.ReleaseExpiredHolds(pb.ReleaseExpiredHoldsRequest(
        idempotency_key="ttl", as_of=to_timestamp(datetime.now(UTC) + timedelta(seconds=2))), metadata=ledger.md)
    bal = await _balance(ledger, "b")
    assert (bal.held, bal.available, bal.consumed) == ("0", "100", "0")  # 7 used, unreported: lost, never overspent
