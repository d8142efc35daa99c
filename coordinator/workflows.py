"""Temporal workflows: the finalization and void sagas, billing cycles, outage credits, sweeps.

The finalization saga (SPEC §10): read lot boundaries -> split the draft -> reserve credits (hold
keyed by the invoice) -> prepare the invoice with the credit applications -> record the decision
-> commit the hold -> commit the invoice. Before the decision every failure (and cancellation)
runs the compensations registered so far, newest first; after it, the commits retry until done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from coordinator import naming
    from coordinator import search_attributes as sa
    from coordinator.activities import CoordinatorActivities, InvoiceActivities, LedgerActivities
    from coordinator.messages import (
        BillingCycleInput,
        BillingCycleResult,
        CompensateOutageInput,
        CompensateOutageResult,
        CreateDraftInput,
        ExpireInput,
        FinalizeInvoiceInput,
        FinalizeInvoiceResult,
        GrantInput,
        HoldInput,
        HoldView,
        InvoiceRef,
        InvoiceStepInput,
        InvoiceView,
        ListDueInput,
        ListHoldsInput,
        ListInDoubtInput,
        LotBoundariesInput,
        OwnerRef,
        PrepareFinalizeInput,
        Progress,
        ReserveInput,
        SagaTimeouts,
        SplitInput,
        SweepInput,
        SweepResult,
        VoidInvoiceInput,
        VoidInvoiceResult,
    )

T = TypeVar("T")
# Activities one finalization runs on the happy path (the bench's bare baseline runs as many no-ops):
# get_invoice, get_lot_boundaries, split_draft, reserve_credits, prepare_finalize, commit_hold,
# commit_finalize.
SAGA_ACTIVITIES = 7


def _retry(t: SagaTimeouts) -> RetryPolicy:
    return RetryPolicy(initial_interval=timedelta(seconds=t.retry_initial_s), backoff_coefficient=2.0,
                       maximum_interval=timedelta(seconds=t.retry_max_s), maximum_attempts=0)


async def _step(fn: Any, arg: Any, t: SagaTimeouts, summary: str | None = None) -> Any:
    """A prepare-phase step: transport faults retry with backoff until the step's time limit.

    `summary` labels the activity in the Temporal UI. The sagas' happy-path steps go without: their
    activity names say what they do, the saga's current details say where it is, and each summary is
    one more payload the worker converts and visits three times per workflow task (about 0.6 ms of
    worker and server CPU per step here). Compensations and resolutions keep theirs."""
    return await workflow.execute_activity_method(
        fn, arg, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s),
        schedule_to_close_timeout=timedelta(seconds=t.prepare_phase_step_limit_s), retry_policy=_retry(t),
        summary=summary)


async def _until_done(fn: Any, arg: Any, t: SagaTimeouts, summary: str | None = None) -> Any:
    """A step that may not be given up (commit after the decision, compensation): retried forever and
    shielded from workflow cancellation, which would otherwise abandon it half-way."""
    task = asyncio.ensure_future(workflow.execute_activity_method(
        fn, arg, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s), retry_policy=_retry(t),
        summary=summary))
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()
            workflow.logger.info("cancellation ignored while %s: it must complete", summary or fn.__name__)


async def _tenants(t: SagaTimeouts) -> list[str]:
    return await workflow.execute_activity_method(
        CoordinatorActivities.list_tenants, start_to_close_timeout=timedelta(seconds=t.step_start_to_close_s),
        retry_policy=_retry(t), summary="list tenants")


_BEFORE_DECISION = "Before the decision: a failure or cancellation now runs the compensations."
_AFTER_DECISION = "The decision is recorded: the commits are retried until they succeed."


class _Checklist:
    """A saga's progress for people: the `progress` query's stage, and the Temporal UI's current
    details, a checklist of the saga's steps (done / now / to do) under a title, with a note.
    Current details are answered from workflow state, not written to history: they cost nothing."""

    def __init__(self, title: str, steps: tuple[str, ...]) -> None:
        self.title, self.steps = title, steps
        self.stage, self.step = "starting", 0

    def at(self, stage: str, step: int, note: str = _BEFORE_DECISION) -> None:
        self.stage, self.step = stage, step
        lines = [f"**{self.title}**", ""]
        for i, name in enumerate(self.steps):
            lines.append(f"{'✓' if i < step else '→' if i == step else '·'} {i + 1}. {name}")
        workflow.set_current_details("\n".join(lines + (["", note] if note else [])))


_FINALIZE_STEPS = (
    "read the draft invoice", "read the credit lot boundaries inside the period", "split line items at them",
    "reserve credits (a hold keyed by the invoice)", "record the credit applications (invoice PREPARED)",
    "decision recorded (CreditsOutcome=committed)", "commit the credit hold", "finalize the invoice")
_VOID_STEPS = ("read the invoice", "find its committed credit hold", "prepare the void (VOID_PENDING)",
               "decision recorded (CreditsOutcome=voiding)", "reverse the debits onto their original lots",
               "mark the invoice VOIDED")

_SA_KEYS = {"tenant": sa.TENANT, "customer": sa.CUSTOMER, "invoice": sa.INVOICE, "period": sa.PERIOD,
            "outcome": sa.OUTCOME}


def _set(**values: str) -> None:
    workflow.upsert_search_attributes([_SA_KEYS[name].value_set(value) for name, value in values.items() if value])


def _set_unless_given(**values: str) -> None:
    """Upserts the values the starter did not already give with the start request (`sa.at_start`):
    a saga started by the front door, a billing cycle or the bench costs no upsert here."""
    given = workflow.info().typed_search_attributes
    missing = {name: value for name, value in values.items() if given.get(_SA_KEYS[name]) != value}
    if missing:
        _set(**missing)


class _Saga:
    """Compensations registered before their step; run newest first, each until it succeeds."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], Awaitable[Any]]] = []

    def on_failure(self, undo: Callable[[], Awaitable[Any]]) -> None:
        self._undo.append(undo)

    async def compensate(self) -> None:
        for undo in reversed(self._undo):
            await undo()


@workflow.defn(name="FinalizeInvoice")
class FinalizeInvoiceWorkflow:
    def __init__(self) -> None:
        self._decision = ""
        self._checks = _Checklist("Finalize invoice", _FINALIZE_STEPS)

    @workflow.query
    def progress(self) -> Progress:
        stage = self._checks.stage
        return Progress(total=1, done=1 if stage == "finalized" else 0, stage=stage)

    @workflow.run
    async def run(self, inp: FinalizeInvoiceInput) -> FinalizeInvoiceResult:
        info = workflow.info()
        t, tenant = inp.timeouts, inp.tenant_id

        def key(step: str) -> str:
            return naming.step_key(info.workflow_id, info.run_id, step)

        hold_key = naming.hold_key(inp.invoice_id, info.run_id)
        prepare_key = key("prepare")
        _set_unless_given(tenant=tenant, invoice=inp.invoice_id, outcome=sa.PREPARING)
        self._checks.title = f"Finalize invoice {inp.invoice_id} (tenant {tenant})"
        self._checks.at("reading the invoice", 0)
        inv: InvoiceView = await _step(InvoiceActivities.get_invoice, InvoiceRef(tenant, inp.invoice_id), t)
        _set_unless_given(customer=inv.customer_id, period=sa.period_of(inv.period_start))
        self._checks.title = (f"Finalize invoice {inp.invoice_id} of {inv.customer_id}, period "
                       f"{sa.period_of(inv.period_start)} (tenant {tenant})")
        if inv.status == "FINALIZED":
            _set(outcome="already_finalized")
            return self._result(inv, "already_finalized", "")
        if inv.status != "DRAFT":
            _set(outcome="rejected")
            raise ApplicationError(f"invoice {inv.invoice_id} is {inv.status}, not DRAFT", type="Rejected",
                                   non_retryable=True)
        saga = _Saga()
        try:
            await self._prepare(inp, inv, saga, hold_key, prepare_key, key)
        except BaseException as err:
            failed_at = self._checks.step
            self._checks.at("compensating", failed_at, f"Failed before the decision ({err}): compensating.")
            await saga.compensate()
            self._checks.at("compensated", failed_at,
                            "Compensated: the hold is released and the invoice is a DRAFT again.")
            _set(outcome="compensated")
            if isinstance(err, ApplicationError | asyncio.CancelledError):
                raise
            raise ApplicationError(f"finalization compensated: {err}", type="Compensated", non_retryable=True) from err
        # The commit point: from here on nothing is compensated; commits retry until they succeed.
        self._decision = "commit"
        self._checks.at("committing", 6, _AFTER_DECISION)
        _set(outcome=sa.COMMITTED)
        await _until_done(LedgerActivities.commit_hold,
                          HoldInput(tenant, key("commit_hold"), hold_key, must_succeed=True), t)
        self._checks.at("committing", 7, _AFTER_DECISION)
        final: InvoiceView = await _until_done(
            InvoiceActivities.commit_finalize,
            InvoiceStepInput(tenant, key("commit_finalize"), inp.invoice_id, prepare_key, must_succeed=True), t)
        self._checks.at("finalized", len(_FINALIZE_STEPS),
                        f"Finalized as {final.number}: credits {final.credits_applied}, due {final.amount_due}.")
        # No upsert: "committed" stands, and Completed + committed reads "finalized" (one visibility
        # write fewer per saga); the result, the front door and the metrics say "finalized".
        return self._result(final, "finalized", hold_key)

    async def _prepare(self, inp: FinalizeInvoiceInput, inv: InvoiceView, saga: _Saga, hold_key: str,
                       prepare_key: str, key: Callable[[str], str]) -> None:
        t, tenant = inp.timeouts, inp.tenant_id
        self._checks.at("reading lot boundaries", 1)
        split_at: list[str] = await _step(
            LedgerActivities.get_lot_boundaries,
            LotBoundariesInput(tenant, inv.ledger_account_id, inv.currency, inv.period_start, inv.period_end), t)
        self._checks.at("splitting the draft", 2)
        split = await _step(InvoiceActivities.split_draft, SplitInput(tenant, inv.invoice_id, split_at), t)
        saga.on_failure(lambda: _until_done(
            LedgerActivities.release_hold,
            HoldInput(tenant, key("release_hold"), hold_key, inv.ledger_account_id, naming.RELEASE_REASON,
                      must_succeed=True), t, "compensate: release the credit hold"))
        self._checks.at("reserving credits", 3)
        hold: HoldView = await _step(
            LedgerActivities.reserve_credits,
            ReserveInput(tenant, key("reserve"), hold_key, inv.ledger_account_id, inv.currency, split.charges,
                         inv.invoice_id), t)
        saga.on_failure(lambda: _until_done(
            InvoiceActivities.abort_finalize,
            InvoiceStepInput(tenant, key("abort_finalize"), inv.invoice_id, prepare_key, naming.RELEASE_REASON,
                             must_succeed=True), t, "compensate: return the invoice to DRAFT"))
        self._checks.at("preparing the invoice", 4)
        await _step(InvoiceActivities.prepare_finalize,
                    PrepareFinalizeInput(tenant, prepare_key, inv.invoice_id, split_at, hold.allocations,
                                         split.draft_digest), t)

    @staticmethod
    def _result(inv: InvoiceView, outcome: str, hold_key: str) -> FinalizeInvoiceResult:
        return FinalizeInvoiceResult(inv.invoice_id, outcome, inv.number, inv.subtotal, inv.credits_applied,
                                     inv.amount_due, hold_key)


@workflow.defn(name="VoidInvoice")
class VoidInvoiceWorkflow:
    """Prepare the void -> (decision) -> reverse the debits onto their lots -> commit the void."""

    def __init__(self) -> None:
        self._checks = _Checklist("Void invoice", _VOID_STEPS)

    @workflow.query
    def progress(self) -> Progress:
        stage = self._checks.stage
        return Progress(total=1, done=1 if stage == "voided" else 0, stage=stage)

    @workflow.run
    async def run(self, inp: VoidInvoiceInput) -> VoidInvoiceResult:
        info = workflow.info()
        t, tenant = inp.timeouts, inp.tenant_id

        def key(step: str) -> str:
            return naming.step_key(info.workflow_id, info.run_id, step)

        _set_unless_given(tenant=tenant, invoice=inp.invoice_id, outcome=sa.PREPARING)
        self._checks.title = f"Void invoice {inp.invoice_id} (tenant {tenant})"
        self._checks.at("reading the invoice", 0)
        inv: InvoiceView = await _step(InvoiceActivities.get_invoice, InvoiceRef(tenant, inp.invoice_id), t)
        _set_unless_given(customer=inv.customer_id, period=sa.period_of(inv.period_start))
        if inv.status == "VOIDED":
            _set(outcome="already_voided")
            return VoidInvoiceResult(inv.invoice_id, "already_voided")
        if inv.status != "FINALIZED":
            _set(outcome="rejected")
            raise ApplicationError(f"invoice {inv.invoice_id} is {inv.status}, not FINALIZED", type="Rejected",
                                   non_retryable=True)
        saga = _Saga()
        try:
            self._checks.at("finding the committed hold", 1)
            holds: list[HoldView] = await _step(
                LedgerActivities.list_holds,
                ListHoldsInput(tenant, "COMMITTED", hold_key_prefix=f"{naming.HOLD_PREFIX}{inv.invoice_id}/"), t)
            saga.on_failure(lambda: _until_done(
                InvoiceActivities.abort_void, InvoiceStepInput(tenant, key("abort_void"), inv.invoice_id,
                                                               must_succeed=True), t,
                "compensate: return the invoice to FINALIZED"))
            self._checks.at("preparing the void", 2)
            await _step(InvoiceActivities.prepare_void,
                        InvoiceStepInput(tenant, key("prepare_void"), inv.invoice_id, reason=inp.reason), t)
        except BaseException as err:
            failed_at = self._checks.step
            self._checks.at("compensating", failed_at, f"Failed before the decision ({err}): compensating.")
            await saga.compensate()
            self._checks.at("compensated", failed_at, "Compensated: the invoice is FINALIZED again.")
            _set(outcome="compensated")
            raise
        self._checks.at("voiding", 4, _AFTER_DECISION)
        _set(outcome="voiding")
        reversed_key, reinstated = "", Decimal(0)
        for hold in holds:
            if Decimal(hold.posted or "0") == 0:
                continue
            legs = await _until_done(LedgerActivities.reverse_reference,
                                     HoldInput(tenant, key(f"reverse/{hold.hold_key}"), hold.hold_key,
                                               reason=inp.reason or "invoice voided", must_succeed=True), t)
            reversed_key = hold.hold_key
            reinstated += sum((Decimal(a.amount) for a in legs), Decimal(0))
        self._checks.at("voiding", 5, _AFTER_DECISION)
        await _until_done(InvoiceActivities.commit_void,
                          InvoiceStepInput(tenant, key("commit_void"), inv.invoice_id, must_succeed=True), t)
        self._checks.at("voided", len(_VOID_STEPS), f"Voided: {reinstated} credits reinstated onto their lots.")
        _set(outcome="voided")
        return VoidInvoiceResult(inv.invoice_id, "voided", reversed_key, str(reinstated))


@workflow.defn(name="BillingCycle")
class BillingCycleWorkflow:
    """Drafts and finalizes every due invoice of a tenant, `concurrency` child sagas at a time."""

    def __init__(self) -> None:
        self._progress = Progress(stage="listing due periods")

    @workflow.query
    def progress(self) -> Progress:
        return self._progress

    @workflow.run
    async def run(self, inp: BillingCycleInput) -> BillingCycleResult:
        t = SagaTimeouts()
        tenant = inp.tenant_id
        _set(tenant=tenant, period=inp.as_of[:10], outcome="running")
        self._progress = Progress(total=inp.done + inp.failed, done=inp.done, failed=inp.failed,
                                  stage="listing due periods")
        attempted = set(inp.failures)
        processed_this_run = 0
        while True:
            due = await _step(InvoiceActivities.list_due, ListDueInput(tenant, inp.as_of), t,
                              "list periods due for invoicing")
            todo = [p for p in due if f"{p.customer_id}@{p.period_start}" not in attempted]
            self._progress.total = inp.done + inp.failed + len(todo)
            if not todo:
                break
            if processed_this_run >= inp.max_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp)
            batch = todo[: max(1, inp.concurrency)]
            self._progress.stage = f"finalizing {len(batch)} invoices"
            results = await asyncio.gather(*(self._one(tenant, inp.as_of, p) for p in batch))
            for period, ok in zip(batch, results, strict=True):
                label = f"{period.customer_id}@{period.period_start}"
                if ok:
                    inp.done += 1
                else:
                    inp.failed += 1
                    inp.failures.append(label)
                    attempted.add(label)
                processed_this_run += 1
            self._progress.done, self._progress.failed = inp.done, inp.failed
        self._progress.stage = "done"
        _set(outcome="completed" if inp.failed == 0 else "completed_with_failures")
        return BillingCycleResult(tenant, inp.as_of, inp.done, inp.failed, inp.failures)

    async def _one(self, tenant: str, as_of: str, period: Any) -> bool:
        t = SagaTimeouts()
        invoice_id = period.invoice_id
        try:
            if not invoice_id:
                draft = await _step(InvoiceActivities.create_draft,
                                    CreateDraftInput(tenant, f"cycle/{tenant}/{period.customer_id}/"
                                                     f"{period.period_start}", period.customer_id,
                                                     period.period_start), t,
                                    f"draft the invoice of {period.customer_id}")
                invoice_id = draft.invoice_id
            await workflow.execute_child_workflow(
                FinalizeInvoiceWorkflow.run, FinalizeInvoiceInput(tenant, invoice_id),
                id=naming.finalize_workflow_id(tenant, invoice_id),
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                parent_close_policy=ParentClosePolicy.ABANDON,
                search_attributes=sa.at_start(tenant, invoice_id, period.customer_id, period.period_start),
                static_summary=f"Finalize invoice {invoice_id} of {period.customer_id}")
            return True
        except (ChildWorkflowError, ApplicationError, ActivityError):
            return False
        except WorkflowAlreadyStartedError:
            return True  # finalized (or finalizing) elsewhere: the next listing shows whether it finished


@workflow.defn(name="CompensateOutage")
class CompensateOutageWorkflow:
    """Grants compensatory credits to many accounts: one idempotent grant per (incident, account)."""

    def __init__(self) -> None:
        self._progress = Progress()

    @workflow.query
    def progress(self) -> Progress:
        return self._progress

    @workflow.run
    async def run(self, inp: CompensateOutageInput) -> CompensateOutageResult:
        t = SagaTimeouts()
        _set(tenant=inp.tenant_id, outcome="granting")
        total = len(inp.account_ids)
        self._progress = Progress(total=total, done=inp.offset, stage="granting")
        started = inp.offset
        while inp.offset < total:
            if inp.offset - started >= inp.max_per_run:
                workflow.continue_as_new(inp)
            batch = inp.account_ids[inp.offset: inp.offset + max(1, inp.concurrency)]
            lots = await asyncio.gather(*(_until_done(
                LedgerActivities.grant_credits,
                GrantInput(inp.tenant_id, f"outage/{inp.incident_id}/{account}", account, inp.amount, inp.unit,
                           "COMPENSATORY", inp.expires_at, inp.incident_id, inp.reason), t,
                f"grant {inp.amount} {inp.unit} to {account}") for account in batch))
            inp.granted.extend(lots)
            inp.offset += len(batch)
            self._progress.done = inp.offset
        self._progress.stage = "done"
        _set(outcome="completed")
        return CompensateOutageResult(inp.incident_id, total, inp.granted)


@workflow.defn(name="ExpireCredits")
class ExpireCreditsWorkflow:
    """Scheduled: turns every tenant's due unused credits into EXPIRED entries (breakage)."""

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        t = SagaTimeouts()
        as_of = workflow.now().replace(microsecond=0).isoformat()
        tenants = await _tenants(t)
        out = SweepResult(tenants=len(tenants))
        for tenant in tenants:
            out.expired_lots += await _step(LedgerActivities.expire_lots,
                                            ExpireInput(tenant, f"expire/{tenant}/{as_of}", as_of), t,
                                            f"expire due lots of {tenant}")
        return out


@workflow.defn(name="ResolveInDoubt")
class ResolveInDoubtWorkflow:
    """Scheduled: settles stale holds and PREPARED invoices by the owning workflow's recorded decision.

    Committed -> commit both sides; closed without a decision -> release the hold and abort the
    invoice; still running -> leave it to its owner; history gone -> report, touch nothing.
    """

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        t = SagaTimeouts()
        cutoff = (workflow.now() - timedelta(seconds=inp.older_than_s)).isoformat()
        tenants = await _tenants(t)
        out = SweepResult(tenants=len(tenants))
        for tenant in tenants:
            owners: dict[tuple[str, str], str] = {}  # (invoice, run) -> ledger account (may be "")
            holds: list[HoldView] = await _step(
                LedgerActivities.list_holds,
                ListHoldsInput(tenant, "PENDING", created_before=cutoff, hold_key_prefix=naming.HOLD_PREFIX), t,
                "list stale saga holds")
            for hold in holds:
                parsed = naming.parse_hold_key(hold.hold_key)
                if parsed is not None:
                    owners[parsed] = hold.account_id
            invoices: list[InvoiceView] = await _step(
                InvoiceActivities.list_in_doubt, ListInDoubtInput(tenant, ["PREPARED", "VOID_PENDING"], cutoff), t,
                "list stale PREPARED and VOID_PENDING invoices")
            voids: list[InvoiceView] = []
            for invoice in invoices:
                if invoice.status == "VOID_PENDING":
                    voids.append(invoice)
                    continue
                ref = naming.parse_prepare_key(invoice.prepare_key)
                if ref is not None:
                    owners.setdefault((invoice.invoice_id, ref[1]), invoice.ledger_account_id)
            for (invoice_id, run_id), account in sorted(owners.items()):
                await self._settle(tenant, invoice_id, run_id, account, out, t)
            for invoice in voids:
                await self._settle_void(tenant, invoice.invoice_id, out, t)
        return out

    async def _settle_void(self, tenant: str, invoice_id: str, out: SweepResult, t: SagaTimeouts) -> None:
        """A stale VOID_PENDING invoice: the latest run of its void workflow decides.

        The invoice does not record which run prepared the void; only the latest run can have (an
        earlier run's compensation returned it to FINALIZED before a new run could start). Its
        recorded decision ("voiding"/"voided") -> reverse the committed credits and mark it VOIDED
        with that run's own idempotency keys; closed without one -> back to FINALIZED.
        """
        wf_id = naming.void_workflow_id(tenant, invoice_id)
        decision = await _step(CoordinatorActivities.owner_decision, OwnerRef(wf_id, ""), t,
                               f"ask Temporal for the decision of {wf_id}")
        label = f"{wf_id}/{decision.run_id}"
        if decision.state == "running":
            out.left_running.append(label)
            return
        if decision.state == "unknown":
            out.unknown.append(wf_id)
            return

        def key(step: str) -> str:
            return naming.step_key(wf_id, decision.run_id, step)

        if decision.state == "commit":
            holds: list[HoldView] = await _step(
                LedgerActivities.list_holds,
                ListHoldsInput(tenant, "COMMITTED", hold_key_prefix=f"{naming.HOLD_PREFIX}{invoice_id}/"), t,
                "resolve: find the invoice's committed credit hold")
            for hold in holds:
                if Decimal(hold.posted or "0") == 0:
                    continue
                await _until_done(LedgerActivities.reverse_reference,
                                  HoldInput(tenant, key(f"reverse/{hold.hold_key}"), hold.hold_key,
                                            reason=decision.void_reason or "invoice voided", must_succeed=True),
                                  t,
                                  "resolve: reverse the debits onto their original lots")
            await _until_done(InvoiceActivities.commit_void,
                              InvoiceStepInput(tenant, key("commit_void"), invoice_id, must_succeed=True), t,
                              "resolve: mark the invoice VOIDED")
            out.committed.append(label)
            return
        await _until_done(InvoiceActivities.abort_void,
                          InvoiceStepInput(tenant, key("abort_void"), invoice_id, must_succeed=True), t,
                          "resolve: return the invoice to FINALIZED")
        out.aborted.append(label)

    async def _settle(self, tenant: str, invoice_id: str, run_id: str, account: str, out: SweepResult,
                      t: SagaTimeouts) -> None:
        wf_id = naming.finalize_workflow_id(tenant, invoice_id)
        label = f"{wf_id}/{run_id}"
        decision = await _step(CoordinatorActivities.owner_decision, OwnerRef(wf_id, run_id), t,
                               f"ask Temporal for the decision of {label}")
        if decision.state == "running":
            out.left_running.append(label)
            return
        if decision.state == "unknown":
            out.unknown.append(label)
            return

        def key(step: str) -> str:
            return naming.step_key(wf_id, run_id, step)

        hold_key, prepare_key = naming.hold_key(invoice_id, run_id), key("prepare")
        inv: InvoiceView = await _step(InvoiceActivities.get_invoice, InvoiceRef(tenant, invoice_id), t,
                                       f"read invoice {invoice_id}")
        prepared_by_owner = inv.status == "PREPARED" and inv.prepare_key == prepare_key
        if decision.state == "commit":
            await _until_done(LedgerActivities.commit_hold, HoldInput(tenant, key("commit_hold"), hold_key,
                                                                      must_succeed=True), t, "resolve: commit hold")
            if prepared_by_owner:
                await _until_done(InvoiceActivities.commit_finalize,
                                  InvoiceStepInput(tenant, key("commit_finalize"), invoice_id, prepare_key,
                                                   must_succeed=True), t, "resolve: finalize invoice")
            out.committed.append(label)
            return
        await _until_done(LedgerActivities.release_hold,
                          HoldInput(tenant, key("release_hold"), hold_key, account or inv.ledger_account_id,
                                    naming.RELEASE_REASON, must_succeed=True), t, "resolve: release hold")
        if prepared_by_owner:
            await _until_done(InvoiceActivities.abort_finalize,
                              InvoiceStepInput(tenant, key("abort_finalize"), invoice_id, prepare_key,
                                               naming.RELEASE_REASON, must_succeed=True), t,
                              "resolve: return invoice to DRAFT")
        out.aborted.append(label)


WORKFLOWS = [FinalizeInvoiceWorkflow, VoidInvoiceWorkflow, BillingCycleWorkflow, CompensateOutageWorkflow,
             ExpireCreditsWorkflow, ResolveInDoubtWorkflow]
