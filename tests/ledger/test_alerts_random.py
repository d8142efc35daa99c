"""Once per crossing under replays and restarts, against an independent model (seeded random).

Random sequences of grants, debits (some refused for want of credit) and voids run against a real
ledger server, with random replays of earlier requests (same key: a retry or a duplicate delivery) and
random restarts of the server on the same database. The model knows nothing of the rule machinery:
it tracks the account's available balance from the answers and counts, per threshold, each time the
balance goes from at-or-above to below it (a crossing: one `balance.low`) and back (one
`balance.recovered`), and the same for zero (DEPLETED). The stored events must be exactly those, by id.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from credits.alerts.v1 import alerts_pb2 as apb
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.server import create_ledger_server
from ledger_service.storage import MIGRATIONS_DIR
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.settings import Settings
from tests.ledger.alert_helpers import create_rule, events
from tests.ledger.conftest import Ledger
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key

THRESHOLDS = (2000, 500)  # minor units (USD cents)


@dataclass
class Model:
    """Available balance and, per subject, firing or not and the crossings so far; the events they imply."""

    available: int = 0
    firing: dict[str, bool] = field(default_factory=dict)
    crossings: dict[str, int] = field(default_factory=dict)
    expected: list[str] = field(default_factory=list)

    def settle(self) -> None:
        conditions = {f"low/acct/below:{t}": self.available < t for t in THRESHOLDS}
        conditions["zero/acct/depleted"] = self.available <= 0
        for subject, below in conditions.items():
            if below == self.firing.get(subject, False):
                continue
            self.firing[subject] = below
            if below:
                self.crossings[subject] = self.crossings.get(subject, 0) + 1
                self.expected.append(f"{subject}/{self.crossings[subject]}")
            else:
                self.expected.append(f"{subject}/{self.crossings[subject]}/recovered")


@asynccontextmanager
async def running(dsn: str, key: str) -> AsyncIterator[Ledger]:
    server, port, pool = await create_ledger_server(dsn, "127.0.0.1:0", Settings())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Ledger(ledger_pb2_grpc.LedgerServiceStub(channel), dsn, key, port, channel)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()


def _cents(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


async def _apply(ledger: Ledger, model: Model, op: tuple[str, object], lots: list[str]) -> bool:
    """Runs a new request; updates the model; False when the ledger refused it (nothing changed)."""
    kind, request = op
    md = ledger.md
    if kind == "grant":
        assert isinstance(request, pb.GrantCreditsRequest)
        lot = await ledger.stub.GrantCredits(request, metadata=md)
        if lot.lot_id not in lots:
            lots.append(lot.lot_id)
            model.available += _cents(request.amount)
    elif kind == "debit":
        assert isinstance(request, pb.DebitCreditsRequest)
        amount = _cents(request.charges[0].amount)
        try:
            await ledger.stub.DebitCredits(request, metadata=md)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and amount > model.available, err.details()
            return False
        model.available -= amount
    else:
        assert isinstance(request, pb.VoidGrantRequest)
        try:
            done = await ledger.stub.VoidGrant(request, metadata=md)
        except grpc.aio.AioRpcError as err:  # a lot already voided or used up
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            return False
        model.available -= _cents(done.voided_amount)
    return True


@pytest.mark.parametrize("seed", [7, 1788, 4242])
async def test_one_event_per_crossing_under_replays_and_restarts(seed: int) -> None:
    rng = random.Random(seed)
    dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
    key = await add_tenant_key(dsn, "tenant-a")
    model, lots, done_ops = Model(), [], []
    restarts = replays = 0
    ledger_cm = running(dsn, key)
    ledger = await ledger_cm.__aenter__()
    try:
        await ledger.account("acct")
        await create_rule(ledger, rule_id="low", account_id="acct", unit="USD", kind=apb.LOW_BALANCE,
                          thresholds=[f"{t // 100}.{t % 100:02d}" for t in THRESHOLDS])
        await create_rule(ledger, rule_id="zero", unit="USD", kind=apb.DEPLETED)
        for step in range(120):
            roll = rng.random()
            if roll < 0.05:
                await ledger_cm.__aexit__(None, None, None)
                ledger_cm = running(dsn, key)
                ledger = await ledger_cm.__aenter__()
                restarts += 1
                continue
            if roll < 0.2 and done_ops:
                kind, request = rng.choice(done_ops)
                before = model.available
                try:
                    await getattr(ledger.stub, {"grant": "GrantCredits", "debit": "DebitCredits",
                                                "void": "VoidGrant"}[kind])(request, metadata=ledger.md)
                except grpc.aio.AioRpcError as err:  # a refused debit stays refused (nothing was stored)
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert model.available == before
                replays += 1
                continue
            if roll < 0.45:
                op: tuple[str, object] = ("grant", pb.GrantCreditsRequest(
                    idempotency_key=f"g{step}", account_id="acct", unit="USD", type=pb.PURCHASED,
                    amount=f"{rng.randint(1, 30)}.{rng.randint(0, 99):02d}"))
            elif roll < 0.92 or not lots:
                op = ("debit", pb.DebitCreditsRequest(
                    idempotency_key=f"d{step}", account_id="acct", unit="USD",
                    charges=[pb.Charge(amount=f"{rng.randint(0, 12)}.{rng.randint(1, 99):02d}", kind=pb.USAGE)]))
            else:
                op = ("void", pb.VoidGrantRequest(idempotency_key=f"v{step}", lot_id=rng.choice(lots),
                                                  reason="random void"))
            if await _apply(ledger, model, op, lots):
                done_ops.append(op)
                model.settle()  # evaluated on a change only: a refused request changes nothing
        stored = [e.event_id for e in await events(ledger)]
    finally:
        await ledger_cm.__aexit__(None, None, None)
    assert restarts and replays and len(model.expected) >= 4, (restarts, replays, model.expected)
    assert len(stored) == len(set(stored))  # no event twice
    assert sorted(stored) == sorted(model.expected)  # (one transaction may hold several events: any order)
