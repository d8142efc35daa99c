"""Recurring allowances on a real Temporal dev server, through the billing front door and the CLI.

The time-skipping test server does not implement Schedules (CreateSchedule answers "Method
temporal.api.workflowservice.v1.WorkflowService/CreateSchedule is unimplemented", temporal-test-server
of temporalio 1.35), so months are driven by the schedule's own backfill on the dev server: Temporal
starts each backfilled run with its period's scheduled time, exactly as the schedule does at a real
period start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from credits.billing.v1 import billing_pb2 as bpb
from credits.ledger.v1 import ledger_pb2 as lpb
from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy, WorkflowExecutionStatus
from temporalio.service import RPCError

from coordinator import naming
from coordinator.allowances import Cadence, period_containing, prorate
from service_runtime.proto_time import from_timestamp, to_timestamp
from tests.coordinator.conftest import TENANT, Stack, eventually
from tests.coordinator.test_worker_process import worker_process
from tests.tenancy import add_tenant_key

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "acct-allowance"


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
async def schedules(stack: Stack) -> AsyncIterator[list[str]]:
    """Allowance schedule ids a test creates: deleted afterwards (the dev server outlives the test)."""
    created: list[str] = []
    yield created
    for schedule_id in created:
        with contextlib.suppress(RPCError):
            await stack.client.get_schedule_handle(schedule_id).delete()


async def _account(stack: Stack, account_id: str = ACCOUNT) -> None:
    await stack.services.ledger.CreateAccount(lpb.CreateAccountRequest(
        idempotency_key=f"acct-{account_id}", account_id=account_id, name=account_id), metadata=stack.md)


async def _lots(stack: Stack, allowance_id: str, account_id: str = ACCOUNT) -> list[lpb.Lot]:
    resp = await stack.services.ledger.ListLots(lpb.ListLotsRequest(account_id=account_id, unit="USD",
                                                                    include_empty=True), metadata=stack.md)
    return sorted((lot for lot in resp.lots if lot.campaign_id == allowance_id),
                  key=lambda lot: lot.effective_at.seconds)


def _window(lot: lpb.Lot) -> tuple[datetime, datetime, str]:
    return from_timestamp(lot.effective_at, "effective_at"), from_timestamp(lot.expires_at, "expires_at"), lot.amount


def _config(**kw: Any) -> bpb.AllowanceConfig:
    fields: dict[str, Any] = {"account_id": ACCOUNT, "amount": "1000.00", "unit": "USD"}
    fields.update(kw)
    return bpb.AllowanceConfig(**fields)


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def _runs(stack: Stack, allowance_id: str) -> list[Any]:
    query = f'CreditsTenant = "{TENANT}" AND CreditsAllowance = "{allowance_id}"'
    return [wf async for wf in stack.client.list_workflows(query)]


async def test_a_monthly_allowance_grants_one_lot_per_month_across_a_killed_worker(
        stack: Stack, tmp_path: Path, schedules: list[str]) -> None:
    """Three simulated months (sign-up on 16 January, pro-rated; February and March whole), each lot
    expiring at its month's end; the worker is SIGKILLed after the ledger wrote the sign-up lot and
    before the worker heard back, and the same months are backfilled twice: still exactly 3 lots."""
    await _account(stack)
    signals, log = tmp_path / "signals", tmp_path / "workers.log"
    signals.mkdir()
    months = ScheduleBackfill(start_at=at(2026, 1, 1) - timedelta(seconds=1), end_at=at(2026, 3, 1, 0, 0, 1),
                              overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    async with stack.front_door() as door:
        with worker_process(stack, log, "grant_credits:after:block", signals) as first:
            allowance = await door.CreateAllowance(bpb.CreateAllowanceRequest(
                allowance_id="monthly-1000", config=_config(
                    starts_at=to_timestamp(at(2026, 1, 16)),
                    rollover=bpb.RolloverPolicy(max_percent=50, expires_after_s=31 * 86400))),
                metadata=stack.md)
            assert allowance.schedule_id == "credits-allowance/acme/monthly-1000"
            schedules.append(allowance.schedule_id)
            await eventually(lambda: _exists(signals / "reached"), bool, timeout_s=60)
            assert len(await _lots(stack, "monthly-1000")) == 1  # written; the worker has not heard yet
            schedule = stack.client.get_schedule_handle(allowance.schedule_id)
            await schedule.backfill(months)  # January again, February, March: while the grant is stuck
            os.kill(first.pid, signal.SIGKILL)
            assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
        with worker_process(stack, log):  # a fresh process picks every run up
            await schedule.backfill(months)  # and the same months once more
            runs = await eventually(lambda: _runs(stack, "monthly-1000"),
                                    lambda rs: len(rs) >= 4 and all(r.status != WorkflowExecutionStatus.RUNNING
                                                                    for r in rs), timeout_s=120)
        first_grant = await stack.client.get_workflow_handle(allowance.first_grant_operation_id).result()
    lots = await _lots(stack, "monthly-1000")
    assert [_window(lot) for lot in lots] == [
        (at(2026, 1, 16), at(2026, 2, 1), "516.12"),  # 1000.00 x 16/31 days, rounded down to cents
        (at(2026, 2, 1), at(2026, 3, 1), "1000.00"),
        (at(2026, 3, 1), at(2026, 4, 1), "1000.00"),
    ]
    assert {(lpb.LotType.Name(lot.type), lot.source) for lot in lots} == {("PROMOTIONAL", "allowance")}
    assert first_grant["outcome"] == "granted" and first_grant["lot_id"] == lots[0].lot_id
    assert {r.status for r in runs} == {WorkflowExecutionStatus.COMPLETED}
    assert {r.id for r in runs} >= {f"{allowance.schedule_id}-run-2026-0{m}-01T00:00:00Z" for m in (1, 2, 3)}
    history = await stack.client.get_workflow_handle(allowance.first_grant_operation_id).fetch_history()
    assert any(e.activity_task_started_event_attributes.attempt > 1 for e in history.events
               if e.HasField("activity_task_started_event_attributes")), "the killed grant should have been retried"
    # Each month's unused part rolls over as configured (at most 50% of the lot, for 31 days) once the
    # lot settles: the account has no subscription, so the sweep settles it at once.
    await stack.services.ledger.ExpireLots(lpb.ExpireLotsRequest(idempotency_key="sweep-1", account_id=ACCOUNT),
                                           metadata=stack.md)
    resp = await stack.services.ledger.ListLots(lpb.ListLotsRequest(account_id=ACCOUNT, unit="USD",
                                                                    include_empty=True), metadata=stack.md)
    by_origin = {lot.origin_lot_id: lot for lot in resp.lots if lot.type == lpb.ROLLOVER}
    assert [(_window(by_origin[lot.lot_id]), by_origin[lot.lot_id].cost_basis == lot.cost_basis) for lot in lots] == [
        ((at(2026, 2, 1), at(2026, 3, 4), "258.06"), True),
        ((at(2026, 3, 1), at(2026, 4, 1), "500.00"), True),
        ((at(2026, 4, 1), at(2026, 5, 2), "500.00"), True),
    ]
    await stack.verify_journal()


async def test_allowance_api_create_is_idempotent_and_fields_are_named(stack: Stack, schedules: list[str]) -> None:
    await _account(stack)
    async with stack.worker(), stack.front_door() as door:
        schedules.append(naming.allowance_schedule_id(TENANT, "api-1"))

        async def refused(config: bpb.AllowanceConfig, field: str, allowance_id: str = "api-1",
                          code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await door.CreateAllowance(bpb.CreateAllowanceRequest(allowance_id=allowance_id, config=config),
                                           metadata=stack.md)
            assert err.value.code() == code and field in (err.value.details() or ""), err.value.details()

        await refused(_config(), "allowance_id", allowance_id="has space")
        await refused(_config(amount="-5"), "config.amount")
        await refused(_config(amount="10.001"), "config.amount")  # USD keeps 2 decimals
        await refused(_config(unit="XYZ"), "config.unit")
        await refused(_config(account_id=""), "config.account_id")
        await refused(_config(lot_type="COMPENSATORY"), "config.lot_type")
        await refused(_config(priority=101), "config.priority")
        await refused(_config(cadence=9), "config.cadence")  # type: ignore[arg-type]
        await refused(_config(starts_at=to_timestamp(datetime.now(UTC) + timedelta(days=3660))), "config.starts_at")
        await refused(_config(rollover=bpb.RolloverPolicy(max_percent=101)), "config.rollover.max_percent")
        with pytest.raises(RPCError):  # a refused request changed nothing
            await stack.client.get_schedule_handle(schedules[0]).describe()

        config = _config(first_grant=bpb.FULL, reason="plan allowance")
        created = await door.CreateAllowance(bpb.CreateAllowanceRequest(allowance_id="api-1", config=config),
                                             metadata=stack.md)
        again = await door.CreateAllowance(bpb.CreateAllowanceRequest(allowance_id="api-1", config=config),
                                           metadata=stack.md)
        assert again.created_at == created.created_at and again.config == created.config
        assert created.first_grant_operation_id == again.first_grant_operation_id
        await refused(_config(amount="2000.00"), "allowance_id", code=grpc.StatusCode.ALREADY_EXISTS)
        result = await stack.client.get_workflow_handle(created.first_grant_operation_id).result()
        assert (result["outcome"], result["amount"]) == ("granted", "1000.00")  # FULL: the whole sign-up period
        [lot] = await _lots(stack, "api-1")
        period = period_containing(Cadence.MONTHLY, from_timestamp(created.config.starts_at, "starts_at"))
        assert (from_timestamp(lot.effective_at, "e"), from_timestamp(lot.expires_at, "x")) == \
            (from_timestamp(created.config.starts_at, "starts_at"), period.end)
        assert lot.reason_code == "plan allowance"
        op = await door.GetOperation(bpb.GetOperationRequest(operation_id=created.first_grant_operation_id),
                                     metadata=stack.md)
        assert (op.kind, op.status, op.outcome) == ("credits-allowance", bpb.COMPLETED, "granted")

        got = await door.GetAllowance(bpb.GetAllowanceRequest(allowance_id="api-1"), metadata=stack.md)
        assert (got.config.cadence, got.config.first_grant, got.config.lot_type) == (bpb.MONTHLY, bpb.FULL,
                                                                                    "PROMOTIONAL")
        assert not got.paused and from_timestamp(got.next_grant_at, "next_grant_at") == period.end


async def test_pause_resume_list_delete_and_tenant_isolation(stack: Stack, schedules: list[str]) -> None:
    """On a tenant of its own (the dev server is shared by the tests), so its listing is exactly its own."""
    dsns = [stack.ledger_dsn, stack.invoice_dsn]
    tenant = f"iso{time.monotonic_ns()}"
    md = [("x-api-key", await add_tenant_key(dsns, tenant, "admin"))]
    readonly = [("x-api-key", await add_tenant_key(dsns, tenant, "readonly"))]
    globex = [("x-api-key", await add_tenant_key(dsns, f"globex{time.monotonic_ns()}", "admin"))]
    for account_id in (ACCOUNT, "acct-other"):
        await stack.services.ledger.CreateAccount(lpb.CreateAccountRequest(
            idempotency_key=f"acct-{account_id}", account_id=account_id, name=account_id), metadata=md)
    schedules.extend(naming.allowance_schedule_id(tenant, a) for a in ("a1", "a2", "b1"))
    async with stack.worker(), stack.front_door() as door:
        for allowance_id, account in (("a1", ACCOUNT), ("a2", ACCOUNT), ("b1", "acct-other")):
            await door.CreateAllowance(bpb.CreateAllowanceRequest(
                allowance_id=allowance_id, config=_config(account_id=account, first_grant=bpb.NONE)),
                metadata=md)

        paused = await door.PauseAllowance(bpb.PauseAllowanceRequest(allowance_id="a1", note="contract on hold"),
                                           metadata=md)
        assert (paused.paused, paused.note, paused.HasField("next_grant_at")) == (True, "contract on hold", False)
        schedule = stack.client.get_schedule_handle(naming.allowance_schedule_id(tenant, "a1"))
        assert (await schedule.describe()).schedule.state.paused  # what the Temporal UI shows
        await schedule.unpause(note="resumed in the Temporal UI")  # and what it changes, the API sees
        got = await door.GetAllowance(bpb.GetAllowanceRequest(allowance_id="a1"), metadata=md)
        assert (got.paused, got.note) == (False, "resumed in the Temporal UI")
        again = await door.ResumeAllowance(bpb.ResumeAllowanceRequest(allowance_id="a1"), metadata=md)
        assert not again.paused  # resuming a running allowance changes nothing but the note

        own = md

        async def listed(request: bpb.ListAllowancesRequest, md: Any = None) -> list[str]:
            out, token = [], ""
            while True:
                request.page_token = token
                page = await door.ListAllowances(request, metadata=md or own)
                out += [a.allowance_id for a in page.allowances]
                token = page.next_page_token
                if not token:
                    return sorted(out)

        assert await eventually(lambda: listed(bpb.ListAllowancesRequest(page_size=1)),
                                lambda ids: ids == ["a1", "a2", "b1"])
        assert await eventually(lambda: listed(bpb.ListAllowancesRequest(account_id="acct-other")),
                                lambda ids: ids == ["b1"])
        assert await listed(bpb.ListAllowancesRequest(), readonly) == ["a1", "a2", "b1"]
        assert await listed(bpb.ListAllowancesRequest(), globex) == []
        for call in (door.GetAllowance(bpb.GetAllowanceRequest(allowance_id="a1"), metadata=globex),
                     door.PauseAllowance(bpb.PauseAllowanceRequest(allowance_id="a1"), metadata=globex),
                     door.DeleteAllowance(bpb.DeleteAllowanceRequest(allowance_id="a1"), metadata=globex)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await door.DeleteAllowance(bpb.DeleteAllowanceRequest(allowance_id="a1"), metadata=readonly)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        gone = await door.DeleteAllowance(bpb.DeleteAllowanceRequest(allowance_id="a1"), metadata=md)
        assert gone.deleted
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await door.DeleteAllowance(bpb.DeleteAllowanceRequest(allowance_id="a1"), metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "allowance_id" in (err.value.details() or "")
        retried = await door.DeleteAllowance(bpb.DeleteAllowanceRequest(allowance_id="a1", allow_missing=True),
                                             metadata=md)
        assert not retried.deleted
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await door.GetAllowance(bpb.GetAllowanceRequest(allowance_id="a1"), metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        resp = await stack.services.ledger.ListLots(lpb.ListLotsRequest(account_id=ACCOUNT, include_empty=True),
                                                    metadata=md)
        assert list(resp.lots) == []  # first_grant NONE: nothing for the sign-up period


async def _creditctl(stack: Stack, billing_addr: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "CREDITS_BILLING_ADDR": billing_addr, "CREDITS_API_KEY": stack.services.key}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl.main", "allowances", *args, cwd=ROOT,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_creditctl_allowances(stack: Stack, schedules: list[str]) -> None:
    from coordinator.front_door import create_front_door

    await _account(stack)
    server, port, pool = await create_front_door(stack.client, stack.ledger_dsn, stack.task_queue,
                                                 ledger_addr=stack.ledger_addr)
    addr = f"127.0.0.1:{port}"
    schedules.append(naming.allowance_schedule_id(TENANT, "cli-weekly"))
    try:
        async with stack.worker():
            code, out, err = await _creditctl(stack, addr, "create", "cli-weekly", "--account", ACCOUNT, "--amount",
                                              "70.00", "--every", "weekly", "--first-grant", "none", "--json")
            assert code == 0, err
            created = json.loads(out)
            assert (created["cadence"], created["first_grant"], created["paused"]) == ("WEEKLY", "NONE", False)
            next_grant = datetime.fromisoformat(created["next_grant_at"])
            assert (next_grant.weekday(), next_grant.time()) == (0, datetime.min.time())  # Monday, 00:00 UTC
            assert timedelta(0) < next_grant - datetime.now(UTC) <= timedelta(days=7)
            code, out, err = await _creditctl(stack, addr, "pause", "cli-weekly", "--note", "holiday")
            assert code == 0 and "holiday" in out and "yes" in out, err
            code, out, _ = await _creditctl(stack, addr, "show", "cli-weekly", "--json")
            assert json.loads(out)["paused"] is True
            code, out, _ = await _creditctl(stack, addr, "resume", "cli-weekly", "--json")
            assert json.loads(out)["paused"] is False
            listing = await eventually(lambda: _creditctl(stack, addr, "list"), lambda r: "cli-weekly" in r[1])
            assert "70.00 USD" in listing[1] and "weekly" in listing[1] and "active" in listing[1]
            code, _, err = await _creditctl(stack, addr, "create", "cli-weekly", "--account", ACCOUNT, "--amount",
                                            "1.5.0")
            assert code != 0 and "config.amount" in err
            code, out, _ = await _creditctl(stack, addr, "delete", "cli-weekly")
            assert code == 0 and "deleted" in out
            code, out, _ = await _creditctl(stack, addr, "delete", "cli-weekly", "--allow-missing")
            assert code == 0 and "already gone" in out
    finally:
        await server.stop(0)
        await pool.close()


async def test_a_sign_up_next_month_is_granted_now_as_an_upcoming_lot(stack: Stack, schedules: list[str]) -> None:
    """starts_at ahead (within the lot horizon): the sign-up grant is a lot effective from it, `upcoming`
    until then, pro-rated over the rest of its period; nothing is available before it."""
    await _account(stack)
    starts = (datetime.now(UTC) + timedelta(days=40)).replace(microsecond=0)
    period = period_containing(Cadence.MONTHLY, starts)
    async with stack.worker(), stack.front_door() as door:
        schedules.append(naming.allowance_schedule_id(TENANT, "later"))
        created = await door.CreateAllowance(bpb.CreateAllowanceRequest(
            allowance_id="later", config=_config(starts_at=to_timestamp(starts))), metadata=stack.md)
        result = await stack.client.get_workflow_handle(created.first_grant_operation_id).result()
    owed = prorate("1000.00", 2, period.end - starts, period.end - period.start)
    assert (result["outcome"], result["amount"]) == ("granted", owed)
    [lot] = await _lots(stack, "later")
    assert (from_timestamp(lot.effective_at, "e"), from_timestamp(lot.expires_at, "x")) == (starts, period.end)
    bal = await stack.balance(ACCOUNT)
    assert (bal.available, bal.upcoming) == ("0.00", owed)
