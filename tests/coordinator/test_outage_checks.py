"""Finding 4 of the hardening pass: CompensateOutage with account ids [a1, "nope", a2] answered OK,
granted a1 and a2, then ended FAILED with "Activity task failed". Now every account is checked up
front (NOT_FOUND naming each missing one; nothing starts, nothing is granted); inside the workflow
a failure names the account and the step; grants above the coordinator key's limits end as grant
requests for a second person, listed in the result."""

from __future__ import annotations

import json

import grpc
import pytest
from credits.billing.v1 import billing_pb2 as bpb
from credits.ledger.v1 import ledger_pb2 as lpb
from temporalio.client import WorkflowFailureError

from coordinator import naming
from coordinator.messages import CompensateOutageInput, CompensateOutageResult
from coordinator.starter import start_or_attach
from coordinator.workflows import CompensateOutageWorkflow
from tests.coordinator.conftest import TENANT, Stack


async def _accounts(stack: Stack, names: list[str]) -> None:
    for account in names:
        await stack.services.ledger.CreateAccount(lpb.CreateAccountRequest(
            idempotency_key=f"acct-{account}", account_id=account, name=account), metadata=stack.md)


async def _lots(stack: Stack, account: str) -> list[lpb.Lot]:
    return list((await stack.services.ledger.ListLots(lpb.ListLotsRequest(account_id=account),
                                                      metadata=stack.md)).lots)


async def test_missing_accounts_are_named_up_front_and_nothing_starts(stack: Stack) -> None:
    await _accounts(stack, ["a1", "a2"])
    async with stack.front_door() as billing:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await billing.CompensateOutage(bpb.CompensateOutageRequest(
                incident_id="inc-check", account_ids=["a1", "nope", "a2", "gone", "nope"], amount="5.00",
                unit="USD"), metadata=stack.md)
    err = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    details = err.details() or ""
    assert details.startswith("account_ids: 2 of 4 accounts not found")
    assert "account_ids[1] 'nope'" in details and "account_ids[3] 'gone'" in details and "a1" not in details
    wf_id = naming.outage_workflow_id(TENANT, "inc-check")
    assert not [w async for w in stack.client.list_workflows(f"WorkflowId = '{wf_id}'")]
    assert await _lots(stack, "a1") == [] and await _lots(stack, "a2") == []


async def test_a_failure_inside_the_workflow_names_the_account_and_the_step(stack: Stack) -> None:
    """Started past the front door's check (as by a client of the workflow itself)."""
    await _accounts(stack, ["b1"])
    inp = CompensateOutageInput(TENANT, "inc-inside", ["b1", "vanished"], "5.00", "USD", "", "api outage",
                                concurrency=1)
    wf_id = naming.outage_workflow_id(TENANT, "inc-inside")
    async with stack.worker():
        handle = await start_or_attach(stack.client, CompensateOutageWorkflow.run, inp, id=wf_id,
                                       task_queue=stack.task_queue, result_type=CompensateOutageResult)
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        async with stack.front_door() as billing:
            op = await billing.GetOperation(bpb.GetOperationRequest(operation_id=wf_id), metadata=stack.md)
    message = str(info.value.cause)
    assert "account 'vanished' at step ledger.grant_credits" in message and "NOT_FOUND" in message
    assert "1 of 2 accounts were granted before" in message
    assert op.status == bpb.FAILED and "account 'vanished'" in op.error
    assert [lot.amount for lot in await _lots(stack, "b1")] == ["5.00"]


async def test_grants_above_the_coordinators_limits_become_requests_for_a_second_person(stack: Stack) -> None:
    await _accounts(stack, ["c1", "c2"])
    await stack.services.ledger.SetSupportGrantLimits(lpb.SetSupportGrantLimitsRequest(
        idempotency_key="limits-c", unit="USD", max_per_grant="10", max_per_day="10"), metadata=stack.md)
    async with stack.worker(), stack.front_door() as billing:
        op = await billing.CompensateOutage(bpb.CompensateOutageRequest(
            incident_id="inc-limits", account_ids=["c1", "c2"], amount="10.00", unit="USD", wait=True,
            wait_timeout_s=60), metadata=stack.md)
    assert op.status == bpb.COMPLETED, op.error
    result = json.loads(op.result_json)
    assert len(result["lot_ids"]) == 1 and len(result["pending_requests"]) == 1  # 20 > 10 a day for its key
    pending = await stack.services.ledger.GetGrantRequest(lpb.GetGrantRequestRequest(
        request_id=result["pending_requests"][0]), metadata=stack.md)
    assert pending.status == lpb.PENDING_APPROVAL and pending.limit_exceeded == "max_per_day"
