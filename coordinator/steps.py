"""The sagas' steps as workflow code: how an activity is run (retried until its limit, or until done),
and the commit and abort sequences of both sagas, shared by the sagas and the in-doubt resolver.

The resolver settles a lost run's work by that run's recorded decision with exactly the calls, and
the idempotency keys, the run itself would have made (`FinalizationRun`, `VoidRun`): a commit the
run had already sent and the resolver's are one and the same to the participants.

Runs inside the workflow sandbox (imported through by `coordinator.workflows`): no I/O, no state.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from coordinator import naming
from coordinator.activities import CoordinatorActivities, InvoiceActivities, LedgerActivities
from coordinator.messages import (
    AllocationSpec,
    ChargeSpec,
    HoldInput,
    HoldStatus,
    HoldView,
    InvoiceStepInput,
    InvoiceView,
    ListHoldsInput,
    SagaTimeouts,
)
from coordinator.naming import Step
from service_runtime.rates import applied_minor


def _retry(t: SagaTimeouts) -> RetryPolicy:
    return RetryPolicy(initial_interval=timedelta(seconds=t.retry_initial_s), backoff_coefficient=2.0,
                       maximum_interval=timedelta(seconds=t.retry_max_s), maximum_attempts=0)


async def run_step(fn: Any, arg: Any, t: SagaTimeouts, summary: str | None = None, *, local: bool = False) -> Any:
    """A prepare-phase step: transport faults retry with backoff until the step's time limit.

    `summary` labels the activity in the Temporal UI. The sagas' happy-path steps go without: their
    activity names say what they do, the saga's current details say where it is, and each summary is
    one more payload the worker converts and visits three times per workflow task (about 0.6 ms of
    worker and server CPU per step here). Compensations and resolutions keep theirs.

    `local`: as a local activity (one marker in history, no task round trip through the server). Only
    for a step that is idempotent by its key: a worker crash before the marker runs it again, and the
    participant answers the repeat with the first outcome."""
    if local:
        return await _local(fn, arg, t, schedule_to_close_s=t.prepare_phase_step_limit_s)
    return await workflow.execute_activity_method(
        fn, arg, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s),
        schedule_to_close_timeout=timedelta(seconds=t.prepare_phase_step_limit_s), retry_policy=_retry(t),
        summary=summary)


async def run_read(fn: Any, arg: Any, t: SagaTimeouts, local: bool = True) -> Any:
    """A read-only prepare-phase step (read the invoice, lot boundaries, split the draft) as a local
    activity: it runs in the worker inside the workflow task and leaves one marker in history instead
    of a scheduled/started/completed triple and a workflow-task round trip. Safe because it changes
    nothing: a worker crash before the marker runs it again. Same limits and retries as run_step;
    `local=False` (histories recorded before) runs it as a regular activity."""
    if not local:
        return await run_step(fn, arg, t)
    return await _local(fn, arg, t, schedule_to_close_s=t.prepare_phase_step_limit_s)


async def _local(fn: Any, arg: Any, t: SagaTimeouts, *, schedule_to_close_s: float | None) -> Any:
    """A local activity whose failure reaches the workflow as a regular activity's does: an
    ActivityError naming the activity, caused by what the participant answered (a local activity's
    own failure comes unwrapped, and would read as the workflow's own ApplicationError)."""
    try:
        threshold = t.local_retry_threshold_s
        return await workflow.execute_local_activity_method(
            fn, arg, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s),
            schedule_to_close_timeout=timedelta(seconds=schedule_to_close_s) if schedule_to_close_s else None,
            retry_policy=_retry(t),
            local_retry_threshold=timedelta(seconds=threshold) if threshold is not None else None)
    except ApplicationError as err:
        definition = activity._Definition.from_callable(fn)
        raise ActivityError("local activity failed", scheduled_event_id=0, started_event_id=0, identity="",
                            activity_type=definition.name if definition and definition.name else fn.__name__,
                            activity_id="", retry_state=None) from err


async def run_until_done(fn: Any, arg: Any, t: SagaTimeouts, summary: str | None = None, *,
                         local: bool = False, activity_id: str | None = None) -> Any:
    """A step that may not be given up (commit after the decision, compensation): retried forever and
    shielded from workflow cancellation, which would otherwise abandon it half-way. `local`: as a
    local activity (see run_step; only for a step idempotent by its key). `activity_id`: the regular
    activity's id in history (else Temporal's sequence number)."""
    if local:
        task = asyncio.ensure_future(_local(fn, arg, t, schedule_to_close_s=None))
    else:
        task = asyncio.ensure_future(workflow.execute_activity_method(
            fn, arg, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s), retry_policy=_retry(t),
            summary=summary, activity_id=activity_id))
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()
            workflow.logger.info("cancellation ignored while %s: it must complete", summary or fn.__name__)


async def list_tenants(t: SagaTimeouts) -> list[str]:
    return await workflow.execute_activity_method(
        CoordinatorActivities.list_tenants, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s),
        retry_policy=_retry(t), summary="list tenants")


def _label(why: str | None, what: str) -> str | None:
    """`why: what` as an activity summary; none on the sagas' own happy path (see `run_step`)."""
    return f"{why}: {what}" if why else None


def _nothing(_index: int) -> None:
    pass


@dataclass(frozen=True)
class SagaRun:
    """One run of a saga on one invoice, and its steps' idempotency keys."""

    tenant_id: str
    invoice_id: str
    workflow_id: str
    run_id: str

    def key(self, step: str) -> str:
        return naming.run_step_key(self.workflow_id, self.run_id, self.invoice_id, step)

    @property
    def label(self) -> str:
        """`<workflow id>/<run id>`; a billing cycle's run finalizes many invoices: `.../<invoice>`."""
        label = naming.run_label(self.workflow_id, self.run_id)
        return f"{label}/{self.invoice_id}" if naming.is_cycle_workflow(self.workflow_id) else label


class FinalizationRun(SagaRun):
    """A finalization run also owns its credit hold and the invoice's prepare key."""

    @property
    def hold_key(self) -> str:
        return naming.hold_key(self.invoice_id, self.run_id)

    @property
    def prepare_key(self) -> str:
        return naming.prepare_key(self.workflow_id, self.run_id, self.invoice_id)

    def unit_hold_key(self, unit: str) -> str:
        return naming.unit_hold_key(self.invoice_id, self.run_id, unit)


def left_after(charges: Sequence[ChargeSpec], allocations: Sequence[AllocationSpec], scale: int) -> list[ChargeSpec]:
    """The charges (amounts in the currency, `scale` decimals) still to pay after `allocations`: of a
    currency hold (amounts in the currency) or of a converted hold (units at a rate,
    service_runtime.rates). Charges paid in full are left out."""
    left = {c.charge_id: int(Decimal(c.amount).scaleb(scale)) for c in charges}
    for a in allocations:
        if a.charge_id not in left:
            continue
        if a.rate_version:
            left[a.charge_id] -= applied_minor(left[a.charge_id], Decimal(a.amount), Decimal(a.rate), scale)
        else:
            left[a.charge_id] -= int(Decimal(a.amount).scaleb(scale))
    return [dataclasses.replace(c, amount=str(Decimal(left[c.charge_id]).scaleb(-scale))) for c in charges
            if left[c.charge_id] > 0]


async def commit_finalization(run: FinalizationRun, t: SagaTimeouts, *, commit_invoice: bool = True,
                              why: str | None = None, before: Callable[[int], None] = _nothing,
                              unit_holds: Sequence[str] = (), local_finalize: bool = False,
                              decision_ids: bool = False) -> InvoiceView | None:
    """After the commit decision: commit the usage-unit holds (`unit_holds`, by unit) and the credit
    hold, then finalize the invoice (unless `commit_invoice` is False: the resolver found it already
    settled). Each is retried until done. `before(i)` is called before committing the holds (0) and
    the invoice (1); returns the finalized invoice. The holds' commits are regular activities: the
    first one's schedule is what makes the decision durable before any commit runs; the invoice's
    commit may then be local (`local_finalize`). `decision_ids`: the holds' commits get the activity
    ids `naming.commit_activity_id(hold key)` — for a run inside a billing cycle, whose decision is the
    schedule of its first commit (the cycle records no outcome per invoice)."""
    before(0)

    def ident(hold_key: str) -> str | None:
        return naming.commit_activity_id(hold_key) if decision_ids else None

    for suffix in unit_holds:
        await run_until_done(
            LedgerActivities.commit_hold,
            HoldInput(run.tenant_id, run.key(f"{Step.COMMIT_HOLD}/{suffix}"), run.unit_hold_key(suffix),
                      must_succeed=True), t, _label(why, f"commit the {suffix} credit hold"),
            activity_id=ident(run.unit_hold_key(suffix)))
    await run_until_done(
        LedgerActivities.commit_hold,
        HoldInput(run.tenant_id, run.key(Step.COMMIT_HOLD), run.hold_key, must_succeed=True), t,
        _label(why, "commit the credit hold"), activity_id=ident(run.hold_key))
    if not commit_invoice:
        return None
    before(1)
    final: InvoiceView = await run_until_done(
        InvoiceActivities.commit_finalize,
        InvoiceStepInput(run.tenant_id, run.key(Step.COMMIT_FINALIZE), run.invoice_id, run.prepare_key,
                         must_succeed=True), t, _label(why, "finalize the invoice"), local=local_finalize)
    return final


async def abort_finalization(run: FinalizationRun, account_id: str, t: SagaTimeouts, *, abort_invoice: bool,
                             release_hold: bool, why: str, unit_holds: Sequence[str] = ()) -> None:
    """Without a commit decision, newest step first: return the invoice to DRAFT (if it may have been
    prepared), release the credit hold (if it may have been reserved), then the usage-unit holds
    (`unit_holds`: each unit whose reserve may have been sent). Each until done."""
    if abort_invoice:
        await run_until_done(
            InvoiceActivities.abort_finalize,
            InvoiceStepInput(run.tenant_id, run.key(Step.ABORT_FINALIZE), run.invoice_id, run.prepare_key,
                             naming.RELEASE_REASON, must_succeed=True), t,
            _label(why, "return the invoice to DRAFT"))
    if release_hold:
        await run_until_done(
            LedgerActivities.release_hold,
            HoldInput(run.tenant_id, run.key(Step.RELEASE_HOLD), run.hold_key, account_id, naming.RELEASE_REASON,
                      must_succeed=True), t,
            _label(why, "release the credit hold"))
    for suffix in reversed(unit_holds):
        await run_until_done(
            LedgerActivities.release_hold,
            HoldInput(run.tenant_id, run.key(f"{Step.RELEASE_HOLD}/{suffix}"), run.unit_hold_key(suffix),
                      account_id, naming.RELEASE_REASON, must_succeed=True), t,
            _label(why, f"release the {suffix} credit hold"))


class VoidRun(SagaRun):
    """A void run (it owns no hold: it reverses the finalization's)."""


async def committed_holds(tenant_id: str, invoice_id: str, t: SagaTimeouts, summary: str | None = None,
                          ) -> list[HoldView]:
    """The invoice's committed saga holds (one per finalization that committed: at most one)."""
    holds: list[HoldView] = await run_step(
        LedgerActivities.list_holds,
        ListHoldsInput(tenant_id, HoldStatus.COMMITTED, hold_key_prefix=naming.invoice_holds_prefix(invoice_id)),
        t, summary)
    return holds


async def commit_void(run: VoidRun, holds: list[HoldView], reason: str, t: SagaTimeouts, *,
                      why: str | None = None, before: Callable[[int], None] = _nothing) -> tuple[str, Decimal]:
    """After the void decision: reverse each committed hold's posted credits onto their original lots,
    then mark the invoice VOIDED, each until done. Returns (last hold reversed, amount reinstated)."""
    before(0)
    reversed_key, reinstated = "", Decimal(0)
    for hold in holds:
        if Decimal(hold.posted or "0") == 0:
            continue
        legs: list[AllocationSpec] = await run_until_done(
            LedgerActivities.reverse_hold,
            HoldInput(run.tenant_id, run.key(naming.reverse_step(hold.hold_key)), hold.hold_key,
                      reason=reason or naming.VOID_REASON, must_succeed=True), t,
            _label(why, "reverse the debits onto their original lots"))
        if not naming.unit_of_hold(hold.hold_key):  # units are not money: reported in the currency only
            reversed_key = hold.hold_key
            reinstated += sum((Decimal(a.amount) for a in legs), Decimal(0))
        reversed_key = reversed_key or hold.hold_key
    before(1)
    await run_until_done(
        InvoiceActivities.commit_void,
        InvoiceStepInput(run.tenant_id, run.key(Step.COMMIT_VOID), run.invoice_id, must_succeed=True), t,
        _label(why, "mark the invoice VOIDED"))
    return reversed_key, reinstated


async def abort_void(run: VoidRun, t: SagaTimeouts, *, why: str) -> None:
    """Without a void decision: return the invoice to FINALIZED, until done."""
    await run_until_done(
        InvoiceActivities.abort_void,
        InvoiceStepInput(run.tenant_id, run.key(Step.ABORT_VOID), run.invoice_id, must_succeed=True), t,
        _label(why, "return the invoice to FINALIZED"))
