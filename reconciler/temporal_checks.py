"""Temporal's side: each committed invoice's owning run recorded its decision, and no saga still runs.

Also `temporal_calls_settled()`: the Temporal client completes each call from one of its own (Rust)
threads, which runs a little Python to do so (`loop.call_soon_threadsafe`) and is, about one call
in three, still inside it when the awaiting coroutine has already resumed. A short-lived process
(`creditctl reconcile`) that exits at that moment has the interpreter finalize under that thread,
which then aborts the process (`Fatal Python error: PyGILState_Release`, exit status -6) after the
report was printed. So the reconciler returns only once no such thread is still inside that
hand-off: the exit status stays the report's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from coordinator import decisions, naming
from coordinator.search_attributes import DECIDED_OUTCOMES, OUTCOME, CreditsOutcome
from invoice_service.domain.states import Status
from reconciler.invoice_checks import Invoice, Owner
from reconciler.report import Check, ReconcileReport, TenantFindings, Violation

log = logging.getLogger(__name__)

# A billing cycle runs finalizations inline: while it runs, sagas are in flight.
SAGAS_RUNNING = 'ExecutionStatus = "Running" AND WorkflowType IN ("FinalizeInvoice", "VoidInvoice", "BillingCycle")'
VOID_DECIDED = frozenset({CreditsOutcome.VOIDING, CreditsOutcome.VOIDED})
_DESCRIBE_CONCURRENCY = 16


async def check_decisions(client: Client, found: TenantFindings, owners: list[Owner],
                          invoices: dict[str, Invoice]) -> None:
    """A committed invoice's owning run recorded the commit decision; a voided one's void workflow
    recorded the void decision."""
    sem = asyncio.Semaphore(_DESCRIBE_CONCURRENCY)

    async def outcome(workflow_id: str, run_id: str | None) -> str:
        async with sem:
            try:
                desc = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return "missing"
                raise
            return str(desc.typed_search_attributes.get(OUTCOME) or "")

    async def committed(run_id: str) -> tuple[str, set[str]]:
        """(the cycle, the invoices it decided to commit) of a billing cycle's run."""
        async with sem:
            workflow_id = await decisions.workflow_of_run(client, run_id)
            if workflow_id is None:
                return "", set()
            try:
                return workflow_id, await decisions.committed_in_run(client, workflow_id, run_id)
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return workflow_id, set()
                raise

    # A billing cycle's run finalized many invoices inline (its prepare keys name the run only): its
    # history is read once for all of them.
    cycle_runs = sorted({o.run_id for o in owners if not o.workflow_id})
    decided = dict(zip(cycle_runs, await asyncio.gather(*(committed(run) for run in cycle_runs)), strict=True))
    single = [o for o in owners if o.workflow_id]
    finals = await asyncio.gather(*(outcome(o.workflow_id, o.run_id) for o in single))
    for owner in owners:
        if not owner.workflow_id:
            found.count("decisions")
            cycle, committed_invoices = decided[owner.run_id]
            if owner.invoice_id not in committed_invoices:
                found.bad(Check.DECISION, f"invoice is {invoices[owner.invoice_id].status.value} but the billing "
                          f"cycle's run that finalized it ({cycle or 'not found'}) recorded no commit decision for "
                          "it (no commit of its hold was scheduled)", invoice_id=owner.invoice_id,
                          workflow_id=cycle, run_id=owner.run_id)
    for owner, out in zip(single, finals, strict=True):
        found.count("decisions")
        if out not in DECIDED_OUTCOMES:
            found.bad(Check.DECISION, f"invoice is {invoices[owner.invoice_id].status.value} but its owning run "
                      f"recorded no commit decision (outcome={out or 'none'})", invoice_id=owner.invoice_id,
                      workflow_id=owner.workflow_id, run_id=owner.run_id)
    voided = [i for i, inv in sorted(invoices.items()) if inv.status == Status.VOIDED]
    void_ids = [naming.void_workflow_id(found.tenant_id, i) for i in voided]
    voids = await asyncio.gather(*(outcome(wf, None) for wf in void_ids))
    for invoice_id, workflow_id, out in zip(voided, void_ids, voids, strict=True):
        found.count("decisions")
        if out not in VOID_DECIDED:
            found.bad(Check.DECISION, f"invoice is VOIDED but its void workflow recorded no void decision "
                      f"(outcome={out or 'none'})", invoice_id=invoice_id, workflow_id=workflow_id)


async def check_quiet(client: Client, report: ReconcileReport) -> None:
    async for wf in client.list_workflows(SAGAS_RUNNING):
        if wf.status == WorkflowExecutionStatus.RUNNING:
            report.violations.append(Violation(Check.QUIET.value, naming.tenant_of(wf.id) or "?",
                                               "saga still running: the system is not quiet",
                                               {"workflow_id": wf.id, "run_id": wf.run_id}))


async def running_sagas(client: Client) -> int:
    """How many FinalizeInvoice / VoidInvoice workflows are still running."""
    return len([wf async for wf in client.list_workflows(SAGAS_RUNNING)])


def _handing_off(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Threads the `threading` module did not start that are inside `loop.call_soon_threadsafe` right
    now: a native client (the Temporal client's runtime threads) handing a call's result to the loop.
    Other foreign threads (parked in Python for good, like pytest-xdist's receiver) are not waited for."""
    handoff = getattr(type(loop).call_soon_threadsafe, "__code__", None)
    if handoff is None:  # a loop written in C (uvloop): the hand-off runs no Python code to race with
        return []
    ours = {t.ident for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}
    busy = []
    for ident, frame in sys._current_frames().items():
        if ident in ours:
            continue
        while frame.f_back is not None:
            frame = frame.f_back
        if frame.f_code is handoff:
            busy.append(ident)
    return busy


async def temporal_calls_settled(timeout_s: float = 5.0) -> bool:
    """Waits, without holding the interpreter, until no foreign thread is still handing a result to
    this event loop (the tail of a Temporal call that already returned); False if one still is after
    `timeout_s` (logged)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    while busy := _handing_off(loop):
        if time.monotonic() > deadline:
            log.warning("%d foreign thread(s) still inside call_soon_threadsafe after %.1fs", len(busy), timeout_s)
            return False
        await asyncio.sleep(0.001)
    return True
