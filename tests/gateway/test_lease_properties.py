"""Seeded random gate schedules (as tests/ledger/test_invariants.py does for the ledger).

Pure part: random take/settle sequences on one lease keep 0 <= used <= reserved and
used = open estimates + what settled tickets charged.
Against a real ledger: several gates on one account authorize, settle at random actual costs,
report, crash (no report, no close) and start; after every step every authorization is backed
(the ledger holds at least what the gates used and have not committed); at the end the crashed
gates' leases come back on TTL, the rest is drained by the live gates, and the account is spent
exactly: consumed = granted, nothing held — no overspend, and no credit left unused while demanded.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from gateway.gate import Denial, Gate, GateConfig, Ticket
from gateway.leases import Lease
from service_runtime.proto_time import to_timestamp
from tests.ledger.conftest import Ledger

SEEDS = [3, 17, 2024]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lease_never_authorizes_more_than_it_holds(seed: int) -> None:
    rng = random.Random(seed)
    lease = Lease("h", rng.randint(1, 500), 0.0)
    open_estimates: list[int] = []
    charged = 0
    for _ in range(2000):
        if open_estimates and rng.random() < 0.5:
            estimate = open_estimates.pop(rng.randrange(len(open_estimates)))
            actual = rng.randint(0, estimate * 2)
            excess = lease.settle(estimate, actual)
            assert 0 <= excess <= max(0, actual - estimate)
            charged += actual - excess
        else:
            cost = rng.randint(1, 20)
            before = lease.used
            if lease.take(cost):
                open_estimates.append(cost)
            else:
                assert before + cost > lease.reserved and lease.used == before
        assert 0 <= lease.used <= lease.reserved
        assert lease.used == sum(open_estimates) + charged
        assert lease.open_tickets == len(open_estimates)


def _config(rng: random.Random) -> GateConfig:
    return GateConfig(unit="token", report_interval_s=3600, lease_ttl_s=1, lease_horizon_s=rng.choice([0.1, 1, 5]),
                      min_lease=rng.randint(1, 30), max_lease=rng.randint(30, 120))


async def _balance(ledger: Ledger) -> pb.BalanceBucket:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acct"), metadata=ledger.md)
    return next(b for b in bal.totals if b.unit == "token")


def _uncommitted(gate: Gate) -> int:
    return sum(lease.used for acct in gate._accounts.values()
               for lease in [*([acct.current] if acct.current else []), *acct.retired] if not lease.committed)


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_gate_schedules_spend_exactly_what_exists(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    granted = rng.randint(80, 400)
    await ledger.account("acct")
    await ledger.grant("acct", str(granted), unit="token")
    live: list[Gate] = []
    crashed: list[Gate] = []
    open_tickets: list[tuple[Gate, Ticket]] = []
    for step in range(160):
        roll = rng.random()
        if not live or roll < 0.05:
            gate = Gate(ledger.stub, ledger.key, _config(rng), gate_id=f"s{seed}-{step}")
            await gate.start()
            live.append(gate)
        elif roll < 0.09 and len(live) > 1:  # a gate dies: no report, no close, its open tickets never settle
            gate = live.pop(rng.randrange(len(live)))
            assert gate._ticker is not None
            gate._ticker.cancel()
            crashed.append(gate)
            open_tickets = [(g, t) for g, t in open_tickets if g is not gate]
        elif roll < 0.2:
            await rng.choice(live)._report(force=False)
        elif roll < 0.55 and open_tickets:
            gate, ticket = open_tickets.pop(rng.randrange(len(open_tickets)))
            await gate.settle(ticket, rng.randint(0, ticket.estimate + 2))
        else:
            gate = rng.choice(live)
            decision = await gate.authorize("acct", rng.randint(1, 6))
            if decision.allowed:
                assert decision.ticket is not None
                open_tickets.append((gate, decision.ticket))
            else:
                assert decision.reason is Denial.INSUFFICIENT, decision
        bal = await _balance(ledger)
        # Backed: what live gates used and have not committed is held by the ledger for them.
        assert int(bal.held) >= sum(_uncommitted(g) for g in live)
        assert int(bal.consumed) + int(bal.held) + int(bal.available) == granted
    for gate, ticket in open_tickets:
        await gate.settle(ticket, ticket.estimate)
    await ledger.stub.ReleaseExpiredHolds(pb.ReleaseExpiredHoldsRequest(
        idempotency_key=f"ttl-{seed}", as_of=to_timestamp(datetime.now(UTC) + timedelta(seconds=3))),
        metadata=ledger.md)
    for gate in live:  # demand lasts: drain what is left, one credit at a time
        await gate._report(force=True)
    spent = True
    while spent:  # until a whole round of the live gates finds nothing left
        spent = False
        for gate in live:
            while (decision := await gate.authorize("acct", 1)).allowed:
                assert decision.ticket is not None
                await gate.settle(decision.ticket, 1)
                spent = True
            await gate._report(force=True)
    for gate in live:
        await gate.close()
    bal = await _balance(ledger)
    assert (int(bal.consumed), bal.held, bal.available) == (granted, "0", "0")
