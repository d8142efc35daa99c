"""Auto top-up end to end: a real ledger, the top-up saga (coordinator AutoTopUpWorkflow) on a real Temporal dev
server with its starter and worker (ledger_service/topups/saga.py), the HTTP payment adapter, and the local
payment server (harness/payments) approving, declining, pending, answering late and losing responses."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import grpc
import pytest
from credits.alerts.v1 import alerts_pb2 as apb
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from coordinator import naming
from harness.payments.server import Behaviour, PaymentServer
from ledger_service.server import create_ledger_server
from ledger_service.storage import MIGRATIONS_DIR
from ledger_service.topups.http_provider import HttpPaymentProvider
from ledger_service.topups.saga import RunningTopUps, TopUpSettings, start_topups
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.settings import Settings
from service_runtime.temporal_server import TemporalDevServer
from tests.ledger.alert_helpers import alerts_stub, debit, events
from tests.ledger.conftest import Ledger
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key

FAST = TopUpSettings(retry_initial_s=0.1, retry_max_s=0.3, pending_poll_s=0.1, poll_s=0.1, lease_s=2, step_timeout_s=5)
_queues = itertools.count()


@pytest.fixture(scope="module")
def temporal() -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(headless=True).start()
    yield server
    server.stop()


@pytest.fixture
async def ledger() -> AsyncIterator[Ledger]:
    """The ledger fixture with a tenant of its own per test: the sagas' workflow ids (tenant/account/crossing)
    stay unique on the one Temporal server of this module."""
    dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
    server, port, pool = await create_ledger_server(dsn, "127.0.0.1:0", Settings())
    key = await add_tenant_key(dsn, f"tenant-{uuid.uuid4().hex[:8]}")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Ledger(ledger_pb2_grpc.LedgerServiceStub(channel), dsn, key, port, channel)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()


@pytest.fixture
async def payments() -> AsyncIterator[tuple[PaymentServer, str]]:
    server = PaymentServer()
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


@pytest.fixture
async def client(temporal: TemporalDevServer) -> Client:
    return await Client.connect(temporal.address)


@pytest.fixture
def settings() -> TopUpSettings:
    return TopUpSettings(**{**FAST.__dict__, "task_queue": f"topups-{next(_queues)}"})  # type: ignore[arg-type]


@pytest.fixture
async def executor(ledger: Ledger, payments: tuple[PaymentServer, str], client: Client,
                   settings: TopUpSettings) -> AsyncIterator[Callable]:
    """Starts the top-up starter and saga worker beside the ledger (as the ledger process does)."""
    running: list[tuple[RunningTopUps, HttpPaymentProvider]] = []

    async def start(timeout_s: float = 2.0) -> RunningTopUps:
        provider = HttpPaymentProvider(payments[1], timeout_s=timeout_s)
        started = await start_topups(ledger.dsn, provider, client, settings)
        running.append((started, provider))
        return started

    yield start
    for started, provider in running:
        await started.stop()
        await provider.close()


async def _policy(ledger: Ledger, key: str = "p1", **fields: object) -> apb.TopUpPolicy:
    policy = apb.TopUpPolicy(**{"account_id": "acme", "unit": "USD", "threshold": "10.00", "amount": "50.00",
                                "payment_method": "pm_ok", "enabled": True, **fields})  # type: ignore[arg-type]
    return await alerts_stub(ledger).SetTopUpPolicy(apb.SetTopUpPolicyRequest(idempotency_key=key, policy=policy),
                                                    metadata=ledger.md)


async def _topups(ledger: Ledger) -> list[apb.TopUp]:
    page = await alerts_stub(ledger).ListTopUps(apb.ListTopUpsRequest(account_id="acme"), metadata=ledger.md)
    return list(page.topups)


async def _until(probe: Callable, timeout_s: float = 20) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _available(ledger: Ledger) -> str:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acme"), metadata=ledger.md)
    return bal.totals[0].available


async def _topup_lots(ledger: Ledger) -> list[pb.Lot]:
    lots = await ledger.stub.ListLots(pb.ListLotsRequest(account_id="acme", include_empty=True), metadata=ledger.md)
    return [lot for lot in lots.lots if lot.source == "auto_topup"]


async def test_policy_refusals(ledger: Ledger) -> None:
    await ledger.account("acme")
    for fields, field in [({"amount": "", "target": ""}, "policy.amount"), ({"target": "20"}, "policy.amount"),
                          ({"amount": "", "target": "5"}, "policy.target"), ({"payment_method": ""}, "payment_method"),
                          ({"unit": "token"}, "policy.unit"), ({"account_id": "ghost"}, "account_id"),
                          ({"max_daily": "10"}, "policy.max_daily"), ({"threshold": "0"}, "policy.threshold")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _policy(ledger, f"bad-{field}-{len(fields)}", **fields)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), fields
        assert field in (err.value.details() or ""), (fields, err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await alerts_stub(ledger).GetTopUpPolicy(apb.GetTopUpPolicyRequest(account_id="acme", unit="USD"),
                                                 metadata=ledger.md)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_crossing_charges_once_and_credits_once(ledger: Ledger, payments: tuple[PaymentServer, str],
                                                        executor: Callable, client: Client) -> None:
    server, _ = payments
    await ledger.account("acme")
    made = await _policy(ledger, max_daily="100.00")
    assert made.threshold == "10.00" and made.enabled
    await ledger.grant("acme", "20.00", key="g1")
    await executor()
    await debit(ledger, "acme", "12.00", "d1")     # 8.00 < 10.00: the crossing
    await debit(ledger, "acme", "1.00", "d2")      # still below: no second top-up
    await _until(lambda: _granted(ledger, 1))
    assert await _available(ledger) == "57.00"
    (charge,) = server.charges.values()
    assert charge.amount == 5000 and charge.currency == "USD" and charge.key == "topup/acme/USD/1"
    (lot,) = await _topup_lots(ledger)
    assert lot.amount == "50.00" and lot.type == pb.PURCHASED and lot.cost_basis == "1"
    (topup,) = await _topups(ledger)
    assert topup.charge_id == charge.charge_id and topup.lot_id == lot.lot_id
    saga = client.get_workflow_handle(naming.topup_workflow_id(await _tenant(ledger), topup.topup_id))
    assert await saga.result() == {"topup_id": topup.topup_id, "status": "GRANTED", "charge_id": charge.charge_id,
                                   "lot_id": lot.lot_id}
    assert (await saga.describe()).status == WorkflowExecutionStatus.COMPLETED
    with pytest.raises(WorkflowAlreadyStartedError):  # the crossing's id: never a second saga for it
        await client.start_workflow("AutoTopUp", id=saga.id, task_queue="nobody",
                                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    await debit(ledger, "acme", "50.00", "d3")     # 7.00: a new crossing (re-armed by the top-up)
    await _until(lambda: _granted(ledger, 2))
    assert len(server.captured) == 2 and len(await _topup_lots(ledger)) == 2
    await debit(ledger, "acme", "50.00", "d4")     # a third: 150 > the daily cap of 100 -> CAPPED, no charge
    found = await _until(lambda: _status(ledger, 3, apb.CAPPED))
    assert found and len(server.charges) == 2
    assert [e.event_type for e in await events(ledger, account_id="acme")] == ["topup.capped"]


async def _tenant(ledger: Ledger) -> str:
    conn = await asyncpg.connect(ledger.dsn)
    try:
        return str(await conn.fetchval("SELECT DISTINCT tenant_id FROM topups"))
    finally:
        await conn.close()


async def _granted(ledger: Ledger, n: int) -> bool:
    return sum(t.status == apb.GRANTED for t in await _topups(ledger)) >= n


async def _status(ledger: Ledger, crossing: int, status: int) -> bool:
    return any(t.crossing == crossing and t.status == status for t in await _topups(ledger))


@pytest.mark.parametrize("behaviour", [Behaviour(lose_responses=2), Behaviour(late_s=0.5),
                                       Behaviour(fail_requests=3), Behaviour(outcome="pending", pending_lookups=3)])
async def test_unknown_outcomes_are_asked_again_never_assumed(
        ledger: Ledger, payments: tuple[PaymentServer, str], executor: Callable, behaviour: Behaviour) -> None:
    server, _ = payments
    server.behaviours["pm_ok"] = behaviour
    await ledger.account("acme")
    await _policy(ledger)
    await ledger.grant("acme", "20.00", key="g1")
    await executor(timeout_s=0.3)
    await debit(ledger, "acme", "15.00", "d1")
    await _until(lambda: _granted(ledger, 1))
    if behaviour.late_s:
        behaviour.late_s = 0  # once the saga has seen timeouts, let it hear the answer
    assert len(server.charges) == 1 and len(server.captured) == 1   # never charged twice
    assert len(await _topup_lots(ledger)) == 1                     # credited exactly once
    assert await _available(ledger) == "55.00"
    (topup,) = await _topups(ledger)
    assert topup.attempts >= 2


async def test_a_restart_after_the_charge_finds_it_and_credits_once(
        ledger: Ledger, payments: tuple[PaymentServer, str], executor: Callable) -> None:
    """The first worker charges and dies before hearing back (a lost response, then stopped); the next
    one finds the charge by its key and credits it once."""
    server, _ = payments
    server.behaviours["pm_ok"] = Behaviour(lose_responses=1)
    await ledger.account("acme")
    await _policy(ledger)
    await ledger.grant("acme", "20.00", key="g1")
    first = await executor()
    await debit(ledger, "acme", "15.00", "d1")
    await _until(_charged(server))
    await first.stop()
    conn = await asyncpg.connect(ledger.dsn)
    try:
        status = await conn.fetchval("SELECT status FROM topups")
        await conn.execute("UPDATE topups SET next_attempt_at = now()")  # its lease would run out
    finally:
        await conn.close()
    assert status == "CHARGING" and not await _topup_lots(ledger)
    await executor()
    await _until(lambda: _granted(ledger, 1))
    assert len(server.charges) == 1 and len(await _topup_lots(ledger)) == 1


def _charged(server: PaymentServer) -> Callable:
    async def probe() -> bool:
        return bool(server.charges)

    return probe


async def test_consecutive_declines_disable_the_policy(ledger: Ledger, payments: tuple[PaymentServer, str],
                                                       executor: Callable) -> None:
    server, _ = payments
    server.behaviours["pm_bad"] = Behaviour(outcome="declined")
    await ledger.account("acme")
    await _policy(ledger, payment_method="pm_bad", failure_limit=2)
    await ledger.grant("acme", "100.00", key="g1")
    await executor()
    await debit(ledger, "acme", "95.00", "d1")                 # 5.00: crossing 1
    await _until(lambda: _status(ledger, 1, apb.DECLINED))
    await ledger.grant("acme", "20.00", key="up1")             # 25.00: re-armed
    await debit(ledger, "acme", "20.00", "d2")                 # 5.00: crossing 2, the second decline
    await _until(lambda: _status(ledger, 2, apb.DECLINED))
    policy = await alerts_stub(ledger).GetTopUpPolicy(apb.GetTopUpPolicyRequest(account_id="acme", unit="USD"),
                                                      metadata=ledger.md)
    assert not policy.enabled and policy.consecutive_failures == 2 and "declines" in policy.disabled_reason
    await ledger.grant("acme", "20.00", key="up2")
    await debit(ledger, "acme", "20.00", "d3")                 # a third crossing: the policy is off
    await asyncio.sleep(0.5)
    assert len(await _topups(ledger)) == 2 and len(server.charges) == 2
    assert not await _topup_lots(ledger) and not server.captured
    assert "topup.disabled" in [e.event_type for e in await events(ledger, account_id="acme")]


@pytest.mark.parametrize("behaviour", [Behaviour(), Behaviour(lose_responses=1),
                                       Behaviour(outcome="pending", pending_lookups=2), Behaviour(outcome="declined")])
async def test_the_stripe_adapter_against_a_stripe_like_server(ledger: Ledger, payments: tuple[PaymentServer, str],
                                                              behaviour: Behaviour, client: Client,
                                                              settings: TopUpSettings) -> None:
    """The `stripe` package's own client (aiohttp), pointed at the local server's PaymentIntents subset."""
    from ledger_service.topups.stripe_provider import StripePaymentProvider

    server, url = payments
    server.behaviours["pm_card"] = behaviour
    await ledger.account("acme")
    await _policy(ledger, payment_method="cus_1/pm_card")
    await ledger.grant("acme", "20.00", key="g1")
    provider = StripePaymentProvider("sk_test_local", api_base=url, timeout_s=2)
    started = await start_topups(ledger.dsn, provider, client, settings)
    try:
        await debit(ledger, "acme", "15.00", "d1")
        wanted = apb.DECLINED if behaviour.outcome == "declined" else apb.GRANTED
        await _until(lambda: _status(ledger, 1, wanted))
    finally:
        await started.stop()
        await provider.close()
    (charge,) = server.charges.values()
    assert charge.key == "topup/acme/USD/1" and charge.amount == 5000 and charge.payment_method == "pm_card"
    lots = await _topup_lots(ledger)
    assert len(lots) == (0 if behaviour.outcome == "declined" else 1)
    (topup,) = await _topups(ledger)
    assert topup.charge_id.startswith("pi_")
