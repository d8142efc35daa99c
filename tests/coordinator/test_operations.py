"""Billing cycles, outage compensation, the expiry schedule and idempotent start-up set-up."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.activities import _invoice_view
from coordinator.messages import (
    BillingCycleInput,
    BillingCycleResult,
    CompensateOutageInput,
    CompensateOutageResult,
    FinalizeInvoiceInput,
    Progress,
    SweepResult,
)
from coordinator.schedules import EXPIRE_SCHEDULE, RELEASE_SCHEDULE, RESOLVE_SCHEDULE, ensure_schedules
from coordinator.starter import start_or_attach
from coordinator.workflows import WORKFLOWS, BillingCycleWorkflow, CompensateOutageWorkflow, FinalizeInvoiceWorkflow
from harness.faults import FaultPlan
from service_runtime import metrics
from stack.scenario import PERIOD_START, seed_customer, ts
from tests.coordinator.conftest import FAST, TENANT, Stack, eventually

# August 2026 periods are due (period end + the tests' 400-day grace). Each test its own instant: the
# cycle's workflow id is derived from it, and the Temporal server is shared by the session.
AS_OF = "2027-10-10T00:00:00+00:00"
AS_OF_RESUME = "2027-10-11T00:00:00+00:00"
CUSTOMERS = 5
HISTORIES = Path(__file__).parent / "histories"


async def _progress(handle: WorkflowHandle[object, object]) -> Progress:
    return await handle.query("progress", result_type=Progress)


async def _run_chain(handle: WorkflowHandle[object, object]) -> list[WorkflowExecutionStatus | None]:
    """Statuses of every run of a workflow id, oldest first (continue-as-new leaves a chain)."""
    runs = [wf async for wf in handle._client.list_workflows(f"WorkflowId = '{handle.id}'")]
    return [wf.status for wf in sorted(runs, key=lambda wf: wf.start_time)]


async def _replay_in_default_sandbox(stack: Stack, workflow_ids: list[str]) -> int:
    """Replays every run of each workflow id with the SDK's default sandbox (the workflow modules
    re-imported per run, every restriction on; the worker passes our modules through): a
    non-deterministic or restricted call in a workflow fails here. Returns the runs replayed."""
    replayer, replayed = Replayer(workflows=WORKFLOWS), 0
    for wf_id in workflow_ids:
        run_id: str | None = None  # the latest run, then back along the continue-as-new chain
        while True:
            history = await stack.client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
            result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
            assert result.replay_failure is None
            replayed += 1
            started = history.events[0].workflow_execution_started_event_attributes
            if not started.continued_execution_run_id:
                break
            run_id = started.continued_execution_run_id
    return replayed


async def _assert_finalized_once(stack: Stack, customers: list[str]) -> None:
    numbers = []
    for customer in customers:
        listed = await stack.services.invoice.ListInvoices(ipb.ListInvoicesRequest(customer_id=customer),
                                                           metadata=stack.md)
        [inv] = listed.invoices
        assert inv.status == ipb.FINALIZED, (customer, ipb.InvoiceStatus.Name(inv.status))
        holds = await stack.holds(inv.invoice_id)
        assert [h.status for h in holds] == [lpb.COMMITTED], holds  # exactly one committed reservation
        assert holds[0].posted == inv.credits_applied == "50.00"
        bal = await stack.balance(f"acct-{customer}")
        assert (bal.consumed, bal.held) == ("50.00", "0.00")
        numbers.append(inv.number)
    assert sorted(numbers) == [f"INV-{n:06d}" for n in range(1, len(customers) + 1)]
    await stack.verify_journal()


async def test_billing_cycle_drafts_and_finalizes_every_due_invoice_across_continue_as_new(stack: Stack) -> None:
    customers = [f"cyc-{n}" for n in range(CUSTOMERS)]
    for n, customer in enumerate(customers):  # odd ones have no draft yet: the cycle creates it
        await seed_customer(stack.services, customer, draft=n % 2 == 0)
    finalized = metrics.SAGA_OUTCOMES.labels("finalize-invoice", "finalized")
    counted = finalized._value.get()
    async with stack.worker():
        handle = await stack.client.start_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, AS_OF, concurrency=2, max_per_run=2),
            id=naming.cycle_workflow_id(TENANT, AS_OF), task_queue=stack.task_queue)
        result: BillingCycleResult = await handle.result()
        assert (result.finalized, result.failed, result.failures) == (CUSTOMERS, 0, [])
        # each inline saga counted as a FinalizeInvoice workflow's would be (the dashboards' saga outcomes)
        assert finalized._value.get() == counted + CUSTOMERS
        progress = await _progress(stack.client.get_workflow_handle(handle.id))
        assert (progress.total, progress.done, progress.failed, progress.stage) == (CUSTOMERS, CUSTOMERS, 0, "done")
        chain = await eventually(lambda: _run_chain(handle), lambda c: len(c) >= 3)
        assert chain[:-1] == [WorkflowExecutionStatus.CONTINUED_AS_NEW] * (len(chain) - 1)
        assert chain[-1] == WorkflowExecutionStatus.COMPLETED
        # Running the same cycle again finds nothing due: no second invoice, no second debit.
        again = await stack.client.execute_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, AS_OF), id=f"{handle.id}/again",
            task_queue=stack.task_queue)
        assert (again.finalized, again.failed) == (0, 0)
    await _assert_finalized_once(stack, customers)
    # The sagas ran inline in the cycle's runs: no FinalizeInvoice workflow; each invoice's hold and
    # prepare key name the run of the cycle that finalized it.
    runs = {naming.parse_hold_key(h.hold_key) for c in customers for i in await _invoice_ids(stack, c)
            for h in await stack.holds(i)}
    chain_runs = [wf.run_id async for wf in stack.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert {run for _, run in runs} <= set(chain_runs) and len(runs) == CUSTOMERS, (runs, chain_runs)
    for invoice_id, _ in runs:
        ids = f"WorkflowId = '{naming.finalize_workflow_id(TENANT, invoice_id)}'"
        assert [wf async for wf in stack.client.list_workflows(ids)] == []
    assert await _replay_in_default_sandbox(stack, [handle.id]) == len(chain)
    # The cycle hands each saga the draft it created (odd customers): the saga does not read it again; a
    # saga of a period whose draft existed (even customers) reads it once. Every saga splits and prepares.
    types: Counter[str] = Counter()
    for run_id in chain_runs:
        types.update(await _local_activity_types(stack, handle.id, run_id))
    drafted = CUSTOMERS // 2
    assert (types["invoice.create_draft"], types["invoice.get_invoice"]) == (drafted, CUSTOMERS - drafted), types
    assert types["invoice.prepare_finalize"] == types["invoice.commit_finalize"] == CUSTOMERS, types
    assert types["invoice.split_draft"] >= CUSTOMERS, types


async def _invoice_ids(stack: Stack, customer: str) -> list[str]:
    listed = await stack.services.invoice.ListInvoices(ipb.ListInvoicesRequest(customer_id=customer), metadata=stack.md)
    return [inv.invoice_id for inv in listed.invoices]


async def _local_activity_types(stack: Stack, workflow_id: str, run_id: str | None = None) -> list[str]:
    """The activity type of each local-activity marker in the workflow's history, in order."""
    history = await stack.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    out = []
    for e in history.events:
        if e.HasField("marker_recorded_event_attributes") and "data" in e.marker_recorded_event_attributes.details:
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            out.append(str(json.loads(data).get("activity_type", "")))
    return out


async def test_a_cycle_recorded_with_the_draft_as_a_regular_activity_replays() -> None:
    """A cycle history recorded before the drafts became local activities (`billing-cycle-local-draft`
    unpatched: `invoice.create_draft` scheduled as an activity) replays with the current code."""
    path = HISTORIES / "billing_cycle_regular_draft.json"
    history = WorkflowHistory.from_json("billing-cycle/recorded", path.read_text())
    assert any(e.activity_task_scheduled_event_attributes.activity_type.name == "invoice.create_draft"
               for e in history.events)
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


async def test_billing_cycle_resumes_on_a_new_worker_and_finalizes_each_invoice_once(stack: Stack) -> None:
    customers = [f"res-{n}" for n in range(CUSTOMERS)]
    for customer in customers:
        await seed_customer(stack.services, customer)
    faults = FaultPlan().add("prepare_finalize", "after", "block")  # the first saga hangs after PREPARED
    async with stack.worker(faults):
        handle = await start_or_attach(stack.client, BillingCycleWorkflow.run,
                                       BillingCycleInput(TENANT, AS_OF_RESUME, concurrency=3),
                                       id=naming.cycle_workflow_id(TENANT, AS_OF_RESUME), task_queue=stack.task_queue)
        await asyncio.wait_for(faults.reached.wait(), 30)
        progress = await _progress(handle)
        assert progress.total == CUSTOMERS and progress.done < CUSTOMERS and "finalizing" in progress.stage
        # A duplicate start of the cycle attaches to the running one.
        twin = await start_or_attach(stack.client, BillingCycleWorkflow.run, BillingCycleInput(TENANT, AS_OF_RESUME),
                                     id=handle.id, task_queue=stack.task_queue)
        assert (await twin.describe()).run_id == (await handle.describe()).run_id
        # Leaving the block stops the worker with the prepare call's response lost in flight.
    faults.release_blocked()
    async with stack.worker():
        result = await stack.client.get_workflow_handle(handle.id, result_type=BillingCycleResult).result()
    assert (result.finalized, result.failed) == (CUSTOMERS, 0)
    await _assert_finalized_once(stack, customers)


async def test_billing_cycle_keeps_its_window_full_while_one_saga_hangs(stack: Stack) -> None:
    """Concurrency 2, due periods two per page: one saga's prepare call hangs. The sagas run inline and
    share the cycle's workflow task, so the hung call holds the others for one attempt at most: it is
    cut after 3 s and retried after a durable timer (2 s), and meanwhile the other slot keeps going —
    a saga that started after the cut finishes before the hung one does. Lock-step batches would start
    no saga until the hung one ended."""
    as_of = "2027-10-12T00:00:00+00:00"
    customers = [f"win-{n}" for n in range(6)]
    for customer in customers:
        await seed_customer(stack.services, customer)
    faults = FaultPlan().add("prepare_finalize", "before", "block")
    async with stack.worker(faults):
        handle = await stack.client.start_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, as_of, concurrency=2, page_size=2),
            id=naming.cycle_workflow_id(TENANT, as_of), task_queue=stack.task_queue)
        await asyncio.wait_for(faults.reached.wait(), 30)
        progress = await eventually(lambda: _progress(handle), lambda p: p.done >= 1)
        assert progress.stage.startswith("finalizing: ") and "in flight" in progress.stage
        result: BillingCycleResult = await handle.result()
        faults.release_blocked()
    assert (result.finalized, result.failed, result.runs) == (len(customers), 0, 1)
    assert result.pages >= 3  # six periods, two per page
    spans = []  # per saga, from its reserve to its commit (the hold's created and resolved times)
    for customer in customers:
        [inv] = (await stack.services.invoice.ListInvoices(ipb.ListInvoicesRequest(customer_id=customer),
                                                           metadata=stack.md)).invoices
        [hold] = await stack.holds(inv.invoice_id)
        created, resolved = hold.created_at.ToDatetime(), hold.resolved_at.ToDatetime()
        spans.append((resolved - created, created, resolved))
    _, hung_started, hung_closed = max(spans)
    cut = hung_started + timedelta(seconds=2.5)  # its first attempt is cut 3 s after it was sent
    t0 = min(started for _, started, _ in spans)
    assert any(cut < started and closed < hung_closed for _, started, closed in spans), [
        (round((a - t0).total_seconds(), 2), round((b - t0).total_seconds(), 2)) for _, a, b in spans]
    await _assert_finalized_once(stack, customers)


async def _accounts(stack: Stack, names: list[str]) -> None:
    for account in names:
        await stack.services.ledger.CreateAccount(lpb.CreateAccountRequest(
            idempotency_key=f"acct-{account}", account_id=account, name=account), metadata=stack.md)


async def test_compensate_outage_grants_once_per_account_even_if_started_twice_or_resumed(stack: Stack) -> None:
    accounts = [f"outage-{n}" for n in range(5)]
    await _accounts(stack, accounts)
    inp = CompensateOutageInput(TENANT, "inc-42", accounts, "10.00", "USD", "2030-01-01T00:00:00+00:00",
                                "api outage", concurrency=2, max_per_run=2)
    wf_id = naming.outage_workflow_id(TENANT, "inc-42")
    faults = FaultPlan().add("grant_credits", "after", "block")  # a grant commits, its reply is lost
    async with stack.worker(faults):
        first, second = await asyncio.gather(*(start_or_attach(
            stack.client, CompensateOutageWorkflow.run, inp, id=wf_id, task_queue=stack.task_queue)
            for _ in range(2)))
        assert (await first.describe()).run_id == (await second.describe()).run_id
        await asyncio.wait_for(faults.reached.wait(), 30)
        progress = await _progress(first)
        assert progress.total == len(accounts) and progress.stage == "granting"
    faults.release_blocked()
    async with stack.worker():
        result = await stack.client.get_workflow_handle(wf_id, result_type=CompensateOutageResult).result()
        progress = await _progress(stack.client.get_workflow_handle(wf_id))
        assert (progress.done, progress.total, progress.stage) == (len(accounts), len(accounts), "done")
        # Started again after it completed: attaches to the finished operation, grants nothing new.
        again = await start_or_attach(stack.client, CompensateOutageWorkflow.run, inp, id=wf_id,
                                      task_queue=stack.task_queue, result_type=CompensateOutageResult)
        assert (await again.result()).lot_ids == result.lot_ids
    assert result.accounts == len(accounts) and len(set(result.lot_ids)) == len(accounts)
    for account in accounts:
        lots = await stack.services.ledger.ListLots(lpb.ListLotsRequest(account_id=account), metadata=stack.md)
        assert [(lot.type, lot.amount, lot.incident_id) for lot in lots.lots] == [(lpb.COMPENSATORY, "10.00",
                                                                                  "inc-42")]
        bal = await stack.balance(account)
        assert (bal.granted, bal.available) == ("10.00", "10.00")
    assert Counter(await _run_chain(stack.client.get_workflow_handle(wf_id)))[
        WorkflowExecutionStatus.CONTINUED_AS_NEW] >= 1
    await stack.verify_journal()


async def test_schedules_and_search_attributes_are_set_up_idempotently_and_expiry_runs(stack: Stack) -> None:
    client = stack.client
    assert await sa.register(client) == []  # the session fixture already registered them: nothing to add
    assert await sa.register(client) == []
    await _accounts(stack, ["acct-expiring"])
    await stack.services.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="expiring-grant", account_id="acct-expiring", type=lpb.PROMOTIONAL, unit="USD",
        amount="25.00", effective_at=ts(PERIOD_START), expires_at=ts(PERIOD_START.replace(month=9))),
        metadata=stack.md)
    try:
        created = await ensure_schedules(client, stack.task_queue, expire_every_s=3600, resolve_every_s=3600)
        assert sorted(created) == sorted([EXPIRE_SCHEDULE, RESOLVE_SCHEDULE, RELEASE_SCHEDULE])
        assert await ensure_schedules(client, stack.task_queue) == []  # second start-up: nothing new
        listed = [s.id async for s in await client.list_schedules()]
        assert Counter(listed)[EXPIRE_SCHEDULE] == 1 and Counter(listed)[RESOLVE_SCHEDULE] == 1
        async with stack.worker():
            schedule = client.get_schedule_handle(EXPIRE_SCHEDULE)
            await schedule.trigger()
            desc = await eventually(schedule.describe, lambda d: len(d.info.recent_actions) >= 1)
            started = desc.info.recent_actions[0].action
            run = client.get_workflow_handle(started.workflow_id, run_id=started.first_execution_run_id,
                                             result_type=SweepResult)
            result = await run.result()
            # A real-time hold whose caller vanished (a gateway lease, a reserve never committed) comes
            # back once its TTL passed, by the release schedule.
            await _accounts(stack, ["acct-realtime"])
            await stack.services.ledger.GrantCredits(lpb.GrantCreditsRequest(
                idempotency_key="rt-grant", account_id="acct-realtime", type=lpb.PURCHASED, unit="USD",
                amount="10.00"), metadata=stack.md)
            release = client.get_schedule_handle(RELEASE_SCHEDULE)
            # The schedule also runs on its own every 30 s (a loaded machine reaches that), and such a run
            # may release the hold before the one triggered below: count every run started after the hold.
            before = len((await release.describe()).info.recent_actions)
            await stack.services.ledger.ReserveCredits(lpb.ReserveCreditsRequest(
                idempotency_key="rt-hold", hold_key="rt-hold", account_id="acct-realtime", unit="USD", ttl_s=1,
                release_on_ttl=True, charges=[lpb.Charge(charge_id="c", kind=lpb.USAGE, amount="4.00")]),
                metadata=stack.md)
            await asyncio.sleep(2.1)  # the sweep's as_of has whole seconds
            triggered = len((await release.describe()).info.recent_actions)
            await release.trigger()
            desc = await eventually(release.describe, lambda d: len(d.info.recent_actions) > triggered)
            released = 0
            for action in desc.info.recent_actions[before:]:
                released += (await client.get_workflow_handle(
                    action.action.workflow_id, run_id=action.action.first_execution_run_id,
                    result_type=SweepResult).result()).released_holds
            hold = await stack.services.ledger.GetHold(lpb.GetHoldRequest(hold_key="rt-hold"), metadata=stack.md)
        assert (result.tenants, result.expired_lots) == (1, 1)
        bal = await stack.balance("acct-expiring")
        assert (bal.expired, bal.available) == ("25.00", "0.00")
        assert released >= 1 and hold.status == lpb.RELEASED  # by the schedule's sweep (this hold at least)
        rt = await stack.balance("acct-realtime")
        assert (rt.held, rt.available) == ("0.00", "10.00")
        await stack.verify_journal()
    finally:
        for schedule_id in (EXPIRE_SCHEDULE, RESOLVE_SCHEDULE, RELEASE_SCHEDULE):
            await client.get_schedule_handle(schedule_id).delete()


async def test_a_run_that_finds_the_invoice_finalized_by_another_run_at_prepare_compensates_and_ends(
        stack: Stack) -> None:
    """A run that read the invoice as a DRAFT and reserves only after another run of it has committed (as a
    billing cycle's inline saga may, delayed by a worker crash, while the front door finalizes it: found by
    `creditctl chaos --cycle`): the other run's hold is no longer PENDING, so this one goes on, and its prepare
    is refused. Its compensation's AbortFinalize carries a prepare key the invoice was never prepared with:
    a null compensation (nothing of this run is frozen), not a refusal retried for ever, which kept the
    saga — and its whole billing cycle — running for good. It releases its hold and ends compensated; the
    invoice stays as the first run finalized it, with the customer's $50."""
    invoice_id = await seed_customer(stack.services, "late-1")
    stale = _invoice_view(await stack.invoice(invoice_id))  # the DRAFT, as the late run read it
    async with stack.worker():
        first = await stack.start_finalize(invoice_id)
        assert (await first.result()).outcome == "finalized"
        late = await stack.client.start_workflow(
            FinalizeInvoiceWorkflow.run, FinalizeInvoiceInput(TENANT, invoice_id, FAST, local_reads=True, draft=stale),
            id=f"late-run/{TENANT}/{invoice_id}", task_queue=stack.task_queue)
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(late.result(), 60)
    assert isinstance(failed.value.cause, ApplicationError) and failed.value.cause.type == "Compensated", failed.value
    assert "PrepareFinalize refused" in str(failed.value.cause)
    holds = {h.hold_key: h.status for h in await stack.holds(invoice_id)}
    assert sorted(holds.values()) == [lpb.COMMITTED, lpb.RELEASED], holds
    inv = await stack.invoice(invoice_id)
    assert (inv.status, inv.credits_applied, inv.number) == (ipb.FINALIZED, "50.00", (await first.result()).number)
    assert await stack.assert_both_or_neither(invoice_id, "acct-late-1") == "finalized"


async def test_a_cycle_gives_way_to_another_run_already_finalizing_the_invoice(stack: Stack) -> None:
    """The front door finalizes an invoice (its run has reserved the customer's $50 and is held before
    the prepare) while a billing cycle reaches the same invoice inline. One run per invoice holds credits:
    the cycle's run finds the older run's pending hold, gives way and releases what it reserved (nothing
    was left), so the invoice is finalized once, by the first run, with all $50 applied. (Without the
    rule the cycle would prepare first with no credits and finalize the invoice at full price.)"""
    as_of = "2027-10-13T00:00:00+00:00"
    invoice_id = await seed_customer(stack.services, "race-1")
    faults = FaultPlan().add("prepare_finalize", "before", "block")
    async with stack.worker(faults):
        front = await stack.start_finalize(invoice_id)
        await asyncio.wait_for(faults.reached.wait(), 30)
        cycle: BillingCycleResult = await stack.client.execute_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, as_of, concurrency=2),
            id=naming.cycle_workflow_id(TENANT, as_of), task_queue=stack.task_queue)
        assert (cycle.finalized, cycle.failed) == (0, 1) and cycle.failures[0].startswith("race-1@"), cycle
        faults.release_blocked()
        result = await front.result()
    assert (result.outcome, result.credits_applied) == ("finalized", "50.00"), result
    holds = {h.hold_key: h.status for h in await stack.holds(invoice_id)}
    assert sorted(holds.values()) == [lpb.COMMITTED, lpb.RELEASED], holds
    assert await stack.assert_both_or_neither(invoice_id, "acct-race-1") == "finalized"
