"""Temporal workflows: the finalization and void sagas, billing cycles, outage credits, sweeps.

The finalization saga (SPEC §10): read lot boundaries -> split the draft -> reserve credits (hold
keyed by the invoice) -> prepare the invoice with the credit applications -> record the decision
-> commit the hold -> commit the invoice. Before the decision every failure (and cancellation)
runs the compensations of the steps sent so far, newest first; after it, the commits retry until
done. The commit and abort sequences are `coordinator.steps`, shared with the in-doubt resolver.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from coordinator import allowances, naming
    from coordinator import search_attributes as sa
    from coordinator.activities import CoordinatorActivities, InvoiceActivities, LedgerActivities, TopUpActivities
    from coordinator.messages import (
        PENDING_GRANT,
        AllocationSpec,
        BillingCycleInput,
        BillingCycleResult,
        BillingRunInput,
        BillingRunResult,
        ChargeSpec,
        CompensateOutageInput,
        CompensateOutageResult,
        CreateDraftInput,
        DuePage,
        DuePeriodView,
        ExpireInput,
        FinalizeInvoiceInput,
        FinalizeInvoiceResult,
        GrantAllowanceInput,
        GrantAllowanceResult,
        GrantInput,
        HoldStatus,
        HoldView,
        InvoiceRef,
        InvoiceStatus,
        InvoiceStepInput,
        InvoiceView,
        ListDueInput,
        ListHoldsInput,
        ListInvoicesInput,
        LotBoundariesInput,
        OwnerDecision,
        OwnerRef,
        OwnerState,
        PaymentView,
        PrepareFinalizeInput,
        Progress,
        ReserveInput,
        SagaOutcome,
        SagaTimeouts,
        SettlementsInput,
        SplitInput,
        SplitResult,
        SweepInput,
        SweepResult,
        TopUpInput,
        TopUpOutcome,
        TopUpResult,
        TopUpStep,
        VoidInvoiceInput,
        VoidInvoiceResult,
    )
    from coordinator.naming import Step
    from coordinator.search_attributes import CreditsOutcome
    from coordinator.steps import (
        FinalizationRun,
        VoidRun,
        abort_finalization,
        abort_void,
        commit_finalization,
        commit_void,
        committed_holds,
        left_after,
        list_tenants,
        run_read,
        run_step,
        run_until_done,
    )
    from service_runtime.currencies import scale_of

T = TypeVar("T")
# workflow.patched id: the resolver also settles a run's usage-unit holds (histories before it did not).
_UNIT_HOLDS = "resolve-usage-unit-holds"
# workflow.patched id: BillingCycle keeps its window full and pages due periods with a cursor.
_SLIDING_CYCLE = "billing-cycle-sliding-window"
# workflow.patched id: BillingCycle drafts a due period's invoice with a local activity (idempotent by
# its key, cycle_draft_key): a marker in the cycle's history instead of an activity's three events and a
# workflow task round trip per invoice.
_LOCAL_DRAFT = "billing-cycle-local-draft"
# workflow.patched id: BillingCycle finalizes each invoice inline, in its own run (FinalizeInvoiceWorkflow
# built with inline=True), instead of as a FinalizeInvoice child workflow (unless `child_sagas`).
_INLINE_SAGAS = "billing-cycle-inline-sagas"
# The inline sagas' steps: all of a cycle's sagas share its workflow task, which stays open while any of
# their local activities runs, so a participant call that hangs is cut short after 3 s and retried
# after a durable timer (from 2 s, doubling): the task completes meanwhile and the other sagas go on,
# rather than every saga of the cycle waiting out the default 15 s per attempt.
_INLINE_TIMEOUTS = SagaTimeouts(step_start_to_close_s=3.0, retry_initial_s=2.0, local_retry_threshold_s=1.0)
# Activities one finalization runs on the happy path (the bench's bare baseline runs as many no-ops):
# get_invoice, get_lot_boundaries, split_draft, reserve_credits, prepare_finalize, commit_hold,
# commit_finalize.
SAGA_ACTIVITIES = 7

# The worker's extern function that counts a finished saga (coordinator.worker.SagaOutcomeInterceptor):
# a workflow's ending, and each inline saga of a billing cycle as a FinalizeInvoice's would be.
SAGA_FINISHED = "credits_saga_finished"

_BEFORE_DECISION = "Before the decision: a failure or cancellation now runs the compensations."
_AFTER_DECISION = "The decision is recorded: the commits are retried until they succeed."


class _Checklist:
    """A saga's progress for people: the `progress` query's stage, and the Temporal UI's current
    details, a checklist of the saga's steps (done / now / to do) under a title, with a note.
    Current details are answered from workflow state, not written to history: they cost nothing."""

    def __init__(self, title: str, steps: tuple[str, ...], quiet: bool = False) -> None:
        self.title, self.steps, self.quiet = title, steps, quiet
        self.stage, self.step = "starting", 0

    def at(self, stage: str, step: int, note: str = _BEFORE_DECISION) -> None:
        self.stage, self.step = stage, step
        if self.quiet:  # a saga inside a billing cycle: the details are the cycle's
            return
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
            "outcome": sa.OUTCOME, "account": sa.ACCOUNT, "allowance": sa.ALLOWANCE}


def _set(**values: str) -> None:
    workflow.upsert_search_attributes([_SA_KEYS[name].value_set(str(value))
                                       for name, value in values.items() if value])


def _set_unless_given(**values: str) -> None:
    """Upserts the values the starter did not already give with the start request (`sa.at_start`):
    a saga started by the front door, a billing cycle or the bench costs no upsert here."""
    given = workflow.info().typed_search_attributes
    missing = {name: value for name, value in values.items() if given.get(_SA_KEYS[name]) != value}
    if missing:
        _set(**missing)


def failure_cause(err: BaseException) -> tuple[str, str]:
    """(service, cause) of a failed step: the participant whose activity failed ("ledger", "invoice",
    from the activity's name) and what it answered, rather than Temporal's "Activity task failed"."""
    if isinstance(err, ActivityError):
        service = (err.activity_type or "").partition(".")[0] or "coordinator"
        inner: BaseException = err.cause if err.cause is not None else err
        while isinstance(inner, ApplicationError | ActivityError) and inner.cause is not None:
            inner = inner.cause
        return service, " ".join(str(inner.message if isinstance(inner, ApplicationError) else inner).split())
    return "coordinator", " ".join(str(err).split()) or type(err).__name__


def compensated_failure(run: FinalizationRun, inv: InvoiceView, step: str, err: BaseException) -> ApplicationError:
    """The compensated finalization's failure: its message names the step, the service and the cause;
    its details (the operation's result) carry the invoice's amounts and the hold key."""
    service, cause = failure_cause(err)
    details = {"invoice_id": inv.invoice_id, "outcome": str(CreditsOutcome.COMPENSATED), "step": step,
               "service": service, "cause": cause, "subtotal": inv.subtotal, "credits_applied": inv.credits_applied,
               "amount_due": inv.amount_due, "hold_key": run.hold_key}
    _said("finalization of %s compensated at %s (%s): %s", inv.invoice_id, step, service, cause)
    return ApplicationError(f"finalization compensated at '{step}' ({service}): {cause}", details,
                            type="Compensated", non_retryable=True)


def saga_finished(workflow_type: str, outcome: str) -> None:
    """Counts a saga's ending through the worker's extern function (coordinator.worker's
    SagaOutcomeInterceptor; none where it does not run, as in the replayer), never during replay: a
    workflow's own ending, and each inline saga of a billing cycle as a FinalizeInvoice's."""
    count = workflow.extern_functions().get(SAGA_FINISHED)
    if count is not None and not workflow.unsafe.is_replaying():
        count(workflow_type, outcome)


def _said(message: str, *args: object) -> None:
    """One INFO line per outcome (a saga's, a schedule run's), as `creditctl up` and the worker log them;
    never during replay."""
    workflow.logger.info(message, *args)


def _rejected(inv: InvoiceView, expected: InvoiceStatus) -> ApplicationError:
    _said("invoice %s rejected: it is %s, not %s", inv.invoice_id, inv.status, expected)
    return ApplicationError(f"invoice {inv.invoice_id} is {inv.status}, not {expected}", type="Rejected",
                            non_retryable=True)


async def _read_invoice(tenant_id: str, invoice_id: str, t: SagaTimeouts, summary: str | None = None,
                        local: bool = False) -> InvoiceView:
    ref = InvoiceRef(tenant_id, invoice_id)
    inv: InvoiceView = (await run_read(InvoiceActivities.get_invoice, ref, t) if local
                        else await run_step(InvoiceActivities.get_invoice, ref, t, summary))
    return inv


@workflow.defn(name="FinalizeInvoice")
class FinalizeInvoiceWorkflow:
    """One invoice's finalization saga, as a workflow of its own (the front door, the CLI) — or, built
    with `inline=True`, as one of the many a billing cycle runs inside its own workflow run
    (`BillingCycleWorkflow._one`): the same steps, keys and compensations, owned by the cycle's run
    (`FinalizationRun` names it), with no search attributes or current details of its own (the
    cycle's are the cycle's) and the schedule of its first hold commit as its recorded decision."""

    def __init__(self, inline: bool = False) -> None:
        self._inline = inline
        self._decision = ""
        self._checks = _Checklist("Finalize invoice", _FINALIZE_STEPS, quiet=inline)
        self._sent: set[Step] = set()  # the prepare-phase steps sent to a participant (to compensate)
        self._unit_holds: list[str] = []  # usage units whose hold's reserve was sent (to commit or release)
        self._local_reads = False  # the read-only prepare steps as local activities (FinalizeInvoiceInput)
        self._local_steps = False  # the idempotent prepare writes and the invoice's commit too

    @workflow.query
    def progress(self) -> Progress:
        stage = self._checks.stage
        return Progress(total=1, done=1 if stage == "finalized" else 0, stage=stage)

    @workflow.run
    async def run(self, inp: FinalizeInvoiceInput) -> FinalizeInvoiceResult:
        info = workflow.info()
        _set_unless_given(tenant=inp.tenant_id, invoice=inp.invoice_id, outcome=CreditsOutcome.PREPARING)
        return await self.finalize(inp, FinalizationRun(inp.tenant_id, inp.invoice_id, info.workflow_id, info.run_id))

    def _outcome(self, outcome: CreditsOutcome) -> None:
        if not self._inline:
            _set(outcome=outcome)

    async def finalize(self, inp: FinalizeInvoiceInput, run: FinalizationRun) -> FinalizeInvoiceResult:
        t, tenant = inp.timeouts, inp.tenant_id
        self._checks.title = f"Finalize invoice {inp.invoice_id} (tenant {tenant})"
        self._checks.at("reading the invoice", 0)
        self._local_reads = inp.local_reads
        self._local_steps = inp.local_steps
        given = inp.draft
        inv = (given if given is not None and given.invoice_id == inp.invoice_id and given.status == InvoiceStatus.DRAFT
               else await _read_invoice(tenant, inp.invoice_id, t, local=self._local_reads))
        if not self._inline:
            _set_unless_given(customer=inv.customer_id, period=sa.period_of(inv.period_start))
        self._checks.title = (f"Finalize invoice {inp.invoice_id} of {inv.customer_id}, period "
                              f"{sa.period_of(inv.period_start)} (tenant {tenant})")
        if inv.status == InvoiceStatus.FINALIZED:
            self._outcome(CreditsOutcome.ALREADY_FINALIZED)
            _said("invoice %s already finalized as %s", inv.invoice_id, inv.number)
            return self._result(inv, SagaOutcome.ALREADY_FINALIZED, "")
        if inv.status != InvoiceStatus.DRAFT:
            self._outcome(CreditsOutcome.REJECTED)
            raise _rejected(inv, InvoiceStatus.DRAFT)
        try:
            await self._prepare(run, inv, t)
        except GeneratorExit:  # the worker evicts this run from its cache: nothing happened, nothing to undo
            raise
        except BaseException as err:
            failed_at = self._checks.stage
            await self._compensate(run, inv, t, err)
            if isinstance(err, ApplicationError | asyncio.CancelledError):
                raise
            raise compensated_failure(run, inv, failed_at, err) from err
        # The commit point: from here on nothing is compensated; commits retry until they succeed. A
        # workflow of its own records it as its outcome; inline, the first commit's schedule records it.
        self._decision = "commit"
        self._outcome(CreditsOutcome.COMMITTED)
        final = await commit_finalization(run, t, unit_holds=self._unit_holds, local_finalize=self._local_steps,
                                          before=lambda i: self._checks.at("committing", 6 + i, _AFTER_DECISION),
                                          decision_ids=self._inline)
        assert final is not None
        self._checks.at("finalized", len(_FINALIZE_STEPS),
                        f"Finalized as {final.number}: credits {final.credits_applied}, due {final.amount_due}.")
        # No upsert: "committed" stands, and Completed + committed reads "finalized" (one visibility
        # write fewer per saga); the result, the front door and the metrics say "finalized".
        _said("invoice %s finalized as %s: subtotal %s, credits %s, due %s", final.invoice_id, final.number,
              final.subtotal, final.credits_applied, final.amount_due)
        return self._result(final, SagaOutcome.FINALIZED, run.hold_key)

    async def _prepare(self, run: FinalizationRun, inv: InvoiceView, t: SagaTimeouts) -> None:
        tenant = run.tenant_id
        self._checks.at("reading lot boundaries", 1)
        split_at: list[str] = []
        for unit in (inv.currency, *inv.usage_units):  # lots in a usage unit bound the usage they may pay too
            instants: list[str] = await run_read(
                LedgerActivities.get_lot_boundaries,
                LotBoundariesInput(tenant, inv.ledger_account_id, unit, inv.period_start, inv.period_end), t,
                self._local_reads)
            split_at = sorted({*split_at, *instants}) if split_at else instants
        self._checks.at("splitting the draft", 2)
        split = await run_read(InvoiceActivities.split_draft, SplitInput(tenant, inv.invoice_id, split_at), t,
                               self._local_reads)
        self._checks.at("reserving credits", 3)
        covers = await self._reserve_units(run, inv, split, t)
        if covers:  # what is left to pay in the currency, net of the covered units' value
            split = await run_read(InvoiceActivities.split_draft,
                                   SplitInput(tenant, inv.invoice_id, split_at, covers), t, self._local_reads)
        self._sent.add(Step.RESERVE)  # from here a hold may exist even if no reply comes back
        hold: HoldView = await run_step(
            LedgerActivities.reserve_credits,
            ReserveInput(tenant, run.key(Step.RESERVE), run.hold_key, inv.ledger_account_id, inv.currency,
                         split.charges, inv.invoice_id, skip_units=inv.usage_units), t, local=self._local_steps)
        converted, notes = await self._reserve_converted(run, inv, split.charges, hold, t)
        self._checks.at("preparing the invoice", 4)
        self._sent.add(Step.PREPARE)
        await run_step(InvoiceActivities.prepare_finalize,
                       PrepareFinalizeInput(tenant, run.prepare_key, inv.invoice_id, split_at,
                                            [*covers, *hold.allocations, *converted], split.draft_digest,
                                            credit_notes=notes), t, local=self._local_steps)

    async def _reserve_converted(self, run: FinalizationRun, inv: InvoiceView, charges: list[ChargeSpec],
                                 hold: HoldView, t: SagaTimeouts) -> tuple[list[AllocationSpec], list[str]]:
        """Published conversion rates: what the currency lots left unpaid, credit unit by credit unit
        (sorted), each in a hold of its own at the rates in force; returns their allocations and the
        notes on credit that could not pay."""
        scale = scale_of(inv.currency)
        assert scale is not None
        left = left_after(charges, hold.allocations, scale)
        allocations: list[AllocationSpec] = []
        notes = list(hold.notes)
        for unit in hold.convertible:
            if not left:
                break
            suffix = naming.converted_hold_suffix(unit, inv.currency)
            self._unit_holds.append(suffix)  # sent before it runs: it may land and lose its reply
            held: HoldView = await run_step(
                LedgerActivities.reserve_converted,
                ReserveInput(run.tenant_id, run.key(naming.reserve_units_step(suffix)), run.unit_hold_key(suffix),
                             inv.ledger_account_id, unit, left, inv.invoice_id, currency=inv.currency), t,
                local=self._local_steps)
            allocations.extend(held.allocations)
            notes.extend(held.notes)
            left = left_after(left, held.allocations, scale)
        return allocations, notes

    async def _reserve_units(self, run: FinalizationRun, inv: InvoiceView, split: SplitResult,
                             t: SagaTimeouts) -> list[AllocationSpec]:
        """Usage units as credits: one hold per usage unit (`unit_hold_key`) on the usage it may pay,
        before the currency; returns its allocations (units covered, per charge and lot)."""
        covers: list[AllocationSpec] = []
        for unit in sorted({c.unit for c in split.unit_charges}):
            self._unit_holds.append(unit)  # sent before it runs: it may land and lose its reply
            held: HoldView = await run_step(
                LedgerActivities.reserve_units,
                ReserveInput(run.tenant_id, run.key(naming.reserve_units_step(unit)), run.unit_hold_key(unit),
                             inv.ledger_account_id, unit, [c for c in split.unit_charges if c.unit == unit],
                             inv.invoice_id), t, local=self._local_steps)
            covers.extend(held.allocations)
        return covers

    async def _compensate(self, run: FinalizationRun, inv: InvoiceView, t: SagaTimeouts, err: BaseException) -> None:
        failed_at = self._checks.step
        self._checks.at("compensating", failed_at, f"Failed before the decision ({err}): compensating.")
        await abort_finalization(run, inv.ledger_account_id, t, abort_invoice=Step.PREPARE in self._sent,
                                 release_hold=Step.RESERVE in self._sent, why="compensate",
                                 unit_holds=self._unit_holds)
        self._checks.at("compensated", failed_at, "Compensated: the hold is released and the invoice is a DRAFT again.")
        self._outcome(CreditsOutcome.COMPENSATED)

    @staticmethod
    def _result(inv: InvoiceView, outcome: SagaOutcome, hold_key: str) -> FinalizeInvoiceResult:
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
        run = VoidRun(tenant, inp.invoice_id, info.workflow_id, info.run_id)
        _set_unless_given(tenant=tenant, invoice=inp.invoice_id, outcome=CreditsOutcome.PREPARING)
        self._checks.title = f"Void invoice {inp.invoice_id} (tenant {tenant})"
        self._checks.at("reading the invoice", 0)
        inv = await _read_invoice(tenant, inp.invoice_id, t)
        _set_unless_given(customer=inv.customer_id, period=sa.period_of(inv.period_start))
        if inv.status == InvoiceStatus.VOIDED:
            _set(outcome=CreditsOutcome.ALREADY_VOIDED)
            _said("invoice %s already voided", inv.invoice_id)
            return VoidInvoiceResult(inv.invoice_id, SagaOutcome.ALREADY_VOIDED)
        if inv.status != InvoiceStatus.FINALIZED:
            _set(outcome=CreditsOutcome.REJECTED)
            raise _rejected(inv, InvoiceStatus.FINALIZED)
        holds = await self._prepare(run, inp.reason, t)
        _set(outcome=CreditsOutcome.VOIDING)
        reversed_key, reinstated = await commit_void(
            run, holds, inp.reason, t, before=lambda i: self._checks.at("voiding", 4 + i, _AFTER_DECISION))
        self._checks.at("voided", len(_VOID_STEPS), f"Voided: {reinstated} credits reinstated onto their lots.")
        _set(outcome=CreditsOutcome.VOIDED)
        _said("invoice %s voided: %s credits reinstated onto their lots", inv.invoice_id, reinstated)
        return VoidInvoiceResult(inv.invoice_id, SagaOutcome.VOIDED, reversed_key, str(reinstated))

    async def _prepare(self, run: VoidRun, reason: str, t: SagaTimeouts) -> list[HoldView]:
        """Find the committed holds, prepare the void; compensated (and re-raised) on any failure."""
        prepare_sent = False
        try:
            self._checks.at("finding the committed hold", 1)
            holds = await committed_holds(run.tenant_id, run.invoice_id, t)
            self._checks.at("preparing the void", 2)
            prepare_sent = True
            await run_step(InvoiceActivities.prepare_void,
                           InvoiceStepInput(run.tenant_id, run.key(Step.PREPARE_VOID), run.invoice_id, reason=reason),
                           t)
            return holds
        except GeneratorExit:  # evicted from the worker's cache (see FinalizeInvoiceWorkflow.run)
            raise
        except BaseException as err:
            failed_at = self._checks.step
            self._checks.at("compensating", failed_at, f"Failed before the decision ({err}): compensating.")
            if prepare_sent:
                await abort_void(run, t, why="compensate")
            self._checks.at("compensated", failed_at, "Compensated: the invoice is FINALIZED again.")
            _set(outcome=CreditsOutcome.COMPENSATED)
            service, cause = failure_cause(err)
            _said("void of %s compensated at %s (%s): %s", run.invoice_id, self._checks.steps[failed_at], service,
                  cause)
            raise


@workflow.defn(name="BillingCycle")
class BillingCycleWorkflow:
    """Drafts and finalizes every due invoice of a tenant with `concurrency` child sagas in flight at
    all times: the next starts as soon as one ends (no lock-step batches waiting for their slowest).

    Due periods come a page at a time from the invoice service's cursor (`invoice.list_due_periods`:
    each page costs what it lists), read when the queue runs dry. After `max_per_run` sagas (or when
    Temporal suggests it) the run stops starting new ones, lets those in flight finish and continues
    as new with the cursor, the periods of the page not started yet and its counts — a cycle of any
    size keeps a small history. Progress: the `progress` query, the Temporal UI's current details and
    the result (finalized, failed, pages, runs)."""

    def __init__(self) -> None:
        self._progress = Progress(stage="listing due periods")

    @workflow.query
    def progress(self) -> Progress:
        return self._progress

    @workflow.run
    async def run(self, inp: BillingCycleInput) -> BillingCycleResult:
        tenant = inp.tenant_id
        _set(tenant=tenant, period=inp.as_of[:10], outcome=CreditsOutcome.RUNNING)
        if not workflow.patched(_SLIDING_CYCLE):
            return await self._run_batches(inp)  # histories recorded before the sliding window
        inp.runs += 1
        queue = list(inp.queued)
        in_flight: dict[asyncio.Task[bool], DuePeriodView] = {}
        started = 0
        while True:
            stopping = started >= inp.max_per_run or workflow.info().is_continue_as_new_suggested()
            while not stopping and len(in_flight) < max(1, inp.concurrency):
                if not queue and not inp.listed_all:
                    queue = await self._next_page(inp)
                if not queue:
                    break
                period = queue.pop(0)
                in_flight[asyncio.ensure_future(self._one(tenant, period, inp.child_sagas))] = period
                started += 1
                stopping = started >= inp.max_per_run
            self._report(inp, len(in_flight), len(queue))
            if not in_flight:
                break
            finished, _ = await workflow.wait(list(in_flight), return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                period = in_flight.pop(task)
                self._count(inp, naming.due_period_label(period.customer_id, period.period_start), task.result())
        if queue or not inp.listed_all:
            inp.queued = queue
            workflow.continue_as_new(inp)
        self._progress.stage = "done"
        self._report(inp, 0, 0)
        _set(outcome=CreditsOutcome.COMPLETED if inp.failed == 0 else CreditsOutcome.COMPLETED_WITH_FAILURES)
        return BillingCycleResult(tenant, inp.as_of, inp.done, inp.failed, inp.failures, inp.pages, inp.runs)

    async def _next_page(self, inp: BillingCycleInput) -> list[DuePeriodView]:
        self._progress.stage = "listing due periods"
        page: DuePage = await run_step(
            InvoiceActivities.list_due_periods,
            ListDueInput(inp.tenant_id, inp.as_of, inp.page_size or _cycle_page_size(inp.concurrency), inp.page_token),
            SagaTimeouts(), "list periods due for invoicing")
        inp.pages += 1
        inp.page_token = page.next_page_token
        inp.listed_all = not page.next_page_token
        return page.periods

    def _report(self, inp: BillingCycleInput, in_flight: int, queued: int) -> None:
        """The progress query and the current details: counts so far; the total grows page by page."""
        p = self._progress
        p.done, p.failed = inp.done, inp.failed
        p.total = inp.done + inp.failed + in_flight + queued
        if p.stage != "done":
            p.stage = f"finalizing: {in_flight} in flight, {queued} queued"
        more = "all due periods listed" if inp.listed_all else "more due periods to list"
        workflow.set_current_details("\n".join([
            f"**Billing cycle of {inp.tenant_id} as of {inp.as_of}**", "",
            f"finalized {inp.done} · failed {inp.failed} · in flight {in_flight} (of {inp.concurrency}) · "
            f"queued {queued}", f"pages listed {inp.pages} ({more}) · run {inp.runs}",
            *([f"failed: {', '.join(inp.failures[-10:])}"] if inp.failures else [])]))

    async def _run_batches(self, inp: BillingCycleInput) -> BillingCycleResult:
        """The cycle as it ran before the sliding window (lock-step batches, the first page re-listed
        each time): kept only so that cycles started by an older worker replay and finish."""
        t = SagaTimeouts()
        tenant = inp.tenant_id
        self._progress = Progress(total=inp.done + inp.failed, done=inp.done, failed=inp.failed,
                                  stage="listing due periods")
        attempted = set(inp.failures)
        processed_this_run = 0
        while True:
            due: list[DuePeriodView] = await run_step(InvoiceActivities.list_due_subscriptions,
                                                      ListDueInput(tenant, inp.as_of), t,
                                                      "list periods due for invoicing")
            todo = [p for p in due if naming.due_period_label(p.customer_id, p.period_start) not in attempted]
            self._progress.total = inp.done + inp.failed + len(todo)
            if not todo:
                break
            if processed_this_run >= inp.max_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp)
            batch = todo[: max(1, inp.concurrency)]
            self._progress.stage = f"finalizing {len(batch)} invoices"
            results = await asyncio.gather(*(self._one(tenant, p, True) for p in batch))
            for period, ok in zip(batch, results, strict=True):
                label = naming.due_period_label(period.customer_id, period.period_start)
                self._count(inp, label, ok)
                if not ok:
                    attempted.add(label)
                processed_this_run += 1
            self._progress.done, self._progress.failed = inp.done, inp.failed
        self._progress.stage = "done"
        _set(outcome=CreditsOutcome.COMPLETED if inp.failed == 0 else CreditsOutcome.COMPLETED_WITH_FAILURES)
        _said("billing cycle of %s as of %s: %d finalized, %d failed%s", tenant, inp.as_of, inp.done, inp.failed,
              f" ({', '.join(inp.failures[:5])})" if inp.failures else "")
        return BillingCycleResult(tenant, inp.as_of, inp.done, inp.failed, inp.failures)

    @staticmethod
    def _count(inp: BillingCycleInput, label: str, ok: bool) -> None:
        if ok:
            inp.done += 1
            return
        inp.failed += 1
        inp.failures.append(label)

    @staticmethod
    async def _inline(saga: FinalizeInvoiceInput, run: FinalizationRun) -> bool:
        """One invoice's saga inside this run; its outcome is counted as a FinalizeInvoice's would be."""
        try:
            result = await FinalizeInvoiceWorkflow(inline=True).finalize(saga, run)
        except GeneratorExit:  # the worker evicts the cycle from its cache: nothing ended
            raise
        except ApplicationError as err:
            ended = {"Compensated": CreditsOutcome.COMPENSATED, "Rejected": CreditsOutcome.REJECTED}
            saga_finished("FinalizeInvoice", ended.get(err.type or "", "failed"))
            raise
        except asyncio.CancelledError:
            saga_finished("FinalizeInvoice", "cancelled")
            raise
        except Exception:
            saga_finished("FinalizeInvoice", "failed")
            raise
        saga_finished("FinalizeInvoice", str(result.outcome))
        return True

    async def _one(self, tenant: str, period: DuePeriodView, child_saga: bool) -> bool:
        """Drafts the period's invoice if it has none yet, then finalizes it: inline, as a finalization
        run of this cycle's run (its hold `inv/<invoice>/<cycle run id>`, its prepare key naming the
        cycle; the schedule of its first hold commit records its decision in this history), or — for
        `child_saga` and histories from before — as a FinalizeInvoice child workflow of its own."""
        t = SagaTimeouts()
        invoice_id = period.invoice_id
        draft: InvoiceView | None = None  # the saga reads a draft the cycle did not create itself
        try:
            if not invoice_id:
                draft = await run_step(
                    InvoiceActivities.create_draft,
                    CreateDraftInput(tenant, naming.cycle_draft_key(tenant, period.customer_id, period.period_start,
                                                                    period.subscription_id),
                                     period.customer_id, period.period_start, period.subscription_id), t,
                    f"draft the invoice of {period.customer_id}", local=workflow.patched(_LOCAL_DRAFT))
                invoice_id = draft.invoice_id
            if not child_saga and workflow.patched(_INLINE_SAGAS):
                info = workflow.info()
                run = FinalizationRun(tenant, invoice_id, info.workflow_id, info.run_id)
                return await self._inline(FinalizeInvoiceInput(
                    tenant, invoice_id, _INLINE_TIMEOUTS, local_reads=True, local_steps=True, draft=draft), run)
            await workflow.execute_child_workflow(
                FinalizeInvoiceWorkflow.run,
                FinalizeInvoiceInput(tenant, invoice_id, local_reads=True, local_steps=True, draft=draft),
                id=naming.finalize_workflow_id(tenant, invoice_id),
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                parent_close_policy=ParentClosePolicy.ABANDON,
                search_attributes=sa.at_start(tenant, invoice_id, period.customer_id, period.period_start),
                static_summary=f"Finalize invoice {invoice_id} of {period.customer_id}")
            return True
        except (ChildWorkflowError, ApplicationError, ActivityError):
            return False
        except WorkflowAlreadyStartedError:
            return True  # finalized (or finalizing) elsewhere


@workflow.defn(name="BillingRun")
class BillingRunWorkflow:
    """Every tenant's billing cycle as of one instant, in parallel under one global limit
    (`BillingRunInput`). Invariant: the shares of the cycles in flight sum to at most `limit`, and a
    cycle keeps at most its share of sagas in flight, so the sagas in flight across every tenant never
    exceed `limit`. A tenant's cycle is the child workflow `RunBillingCycle` would start for that
    instant: if one is already running there it is counted in `running_elsewhere`, not started twice."""

    def __init__(self) -> None:
        self._progress = Progress(stage="listing tenants")

    @workflow.query
    def progress(self) -> Progress:
        return self._progress

    @workflow.run
    async def run(self, inp: BillingRunInput) -> BillingRunResult:
        _set(period=inp.as_of[:10], outcome=CreditsOutcome.RUNNING)
        inp.runs += 1
        if not inp.listed:
            inp.queued = sorted(set(inp.tenants)) if inp.tenants else await list_tenants(SagaTimeouts())
            inp.listed = True
        limit, in_flight = max(1, inp.limit), dict[asyncio.Task[BillingCycleResult | None], tuple[str, int]]()
        started = 0
        while True:
            used = sum(share for _, share in in_flight.values())
            while inp.queued and used < limit and started < inp.max_per_run:
                tenant, share = inp.queued.pop(0), min(max(1, inp.per_tenant), limit - used)
                in_flight[asyncio.ensure_future(self._cycle(tenant, inp.as_of, share))] = (tenant, share)
                used, started = used + share, started + 1
            self._report(inp, in_flight)
            if not in_flight:
                break
            finished, _ = await workflow.wait(list(in_flight), return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                tenant, _share = in_flight.pop(task)
                self._count(inp, tenant, task)
        if inp.queued:
            workflow.continue_as_new(inp)
        self._progress.stage = "done"
        self._report(inp, {})
        _set(outcome=CreditsOutcome.COMPLETED if inp.failed == 0 else CreditsOutcome.COMPLETED_WITH_FAILURES)
        _said("billing run as of %s: %d tenant cycles, %d finalized, %d failed", inp.as_of, inp.cycles,
              inp.finalized, inp.failed)
        return BillingRunResult(inp.as_of, inp.cycles, inp.finalized, inp.failed, inp.failures,
                                inp.running_elsewhere, inp.runs)

    @staticmethod
    async def _cycle(tenant: str, as_of: str, share: int) -> BillingCycleResult | None:
        """The tenant's cycle to its end; None when that cycle is already running elsewhere."""
        try:
            return await workflow.execute_child_workflow(
                BillingCycleWorkflow.run, BillingCycleInput(tenant, as_of, concurrency=share),
                id=naming.cycle_workflow_id(tenant, as_of), parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=f"Billing cycle of {tenant} as of {as_of} ({share} in flight)")
        except WorkflowAlreadyStartedError:
            return None

    @staticmethod
    def _count(inp: BillingRunInput, tenant: str, task: asyncio.Task[BillingCycleResult | None]) -> None:
        try:
            result = task.result()
        except ChildWorkflowError as err:  # the cycle itself failed (not one of its sagas)
            inp.failed += 1
            inp.failures.append(f"{tenant}: cycle failed ({err.cause or err})"[:200])
            return
        if result is None:
            inp.running_elsewhere.append(tenant)
            return
        inp.cycles += 1
        inp.finalized += result.finalized
        inp.failed += result.failed
        inp.failures.extend(f"{tenant}: {label}" for label in result.failures[: max(0, 100 - len(inp.failures))])

    def _report(self, inp: BillingRunInput, in_flight: dict[asyncio.Task[BillingCycleResult | None],
                                                             tuple[str, int]]) -> None:
        p = self._progress
        p.done, p.failed = inp.finalized, inp.failed
        p.total = inp.cycles + len(in_flight) + len(inp.queued) + len(inp.running_elsewhere)
        running = ", ".join(f"{tenant} ({share})" for tenant, share in in_flight.values())
        if p.stage != "done":
            p.stage = f"tenant cycles: {len(in_flight)} running, {len(inp.queued)} queued"
        workflow.set_current_details("\n".join([
            f"**Billing run of every tenant as of {inp.as_of}** (at most {inp.limit} sagas in flight, "
            f"{inp.per_tenant} per tenant)", "",
            f"tenant cycles done {inp.cycles} · running {len(in_flight)} · queued {len(inp.queued)} · "
            f"finalized {inp.finalized} · failed {inp.failed}",
            *([f"running: {running}"] if running else []),
            *([f"already running elsewhere: {', '.join(inp.running_elsewhere[-10:])}"] if inp.running_elsewhere
              else [])]))


def _cycle_page_size(concurrency: int) -> int:
    """Due periods per page: a few windows' worth, so pages are cheap and continue-as-new carries few."""
    return min(500, max(50, 4 * concurrency))


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
        _set(tenant=inp.tenant_id, outcome=CreditsOutcome.GRANTING)
        total = len(inp.account_ids)
        self._progress = Progress(total=total, done=inp.offset, stage="granting")
        started = inp.offset
        while inp.offset < total:
            if inp.offset - started >= inp.max_per_run:
                workflow.continue_as_new(inp)
            batch = inp.account_ids[inp.offset: inp.offset + max(1, inp.concurrency)]
            lots = await asyncio.gather(*(self._grant(inp, account, t) for account in batch), return_exceptions=True)
            failed = [(a, err) for a, err in zip(batch, lots, strict=True) if isinstance(err, BaseException)]
            for _, err in failed:
                if isinstance(err, asyncio.CancelledError):
                    raise err
            if failed:
                self._progress.failed = len(failed)
                raise _grant_failed(inp, failed, inp.offset)
            inp.granted.extend(str(lot) for lot in lots)
            inp.offset += len(batch)
            self._progress.done = inp.offset
        self._progress.stage = "done"
        _set(outcome=CreditsOutcome.COMPLETED)
        lot_ids = [x for x in inp.granted if not x.startswith(PENDING_GRANT)]
        pending = [x.removeprefix(PENDING_GRANT) for x in inp.granted if x.startswith(PENDING_GRANT)]
        _said("outage %s compensated: %d accounts, %d lots granted, %d pending approval", inp.incident_id, total,
              len(lot_ids), len(pending))
        return CompensateOutageResult(inp.incident_id, total, lot_ids, pending)

    @staticmethod
    async def _grant(inp: CompensateOutageInput, account: str, t: SagaTimeouts) -> str:
        return str(await run_until_done(
            LedgerActivities.grant_credits,
            GrantInput(inp.tenant_id, naming.outage_grant_key(inp.incident_id, account), account, inp.amount,
                       inp.unit, "COMPENSATORY", inp.expires_at, inp.incident_id, inp.reason), t,
            f"grant {inp.amount} {inp.unit} to {account}"))


def _grant_failed(inp: CompensateOutageInput, failed: list[tuple[str, BaseException]], done: int) -> ApplicationError:
    """The outage compensation's failure, naming each account and the step that failed, and what
    was granted before (granted once: starting the operation again grants only the rest)."""
    def cause(err: BaseException) -> str:
        inner = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
        return str(inner)

    named = "; ".join(f"account {account!r} at step ledger.grant_credits: {cause(err)}" for account, err in failed)
    return ApplicationError(
        f"compensating incident {inp.incident_id}: {len(failed)} grant(s) of {inp.amount} {inp.unit} failed: "
        f"{named}. {done} of {len(inp.account_ids)} accounts were granted before; starting the operation "
        "again grants only the rest.", type="GrantFailed", non_retryable=True)


@workflow.defn(name="GrantAllowance")
class GrantAllowanceWorkflow:
    """One period of a recurring allowance: the schedule `credits-allowance/<tenant>/<allowance>` starts
    it at each period's start (and CreateAllowance once for the sign-up period). The period comes from
    the scheduled start time Temporal records on the run (a backfilled run gets its period's, not
    today's), the grant from `coordinator.allowances`, its ledger key from (allowance, period): however
    many runs cover one period (retries, backfills, a worker killed mid-grant), it is granted once."""

    @workflow.run
    async def run(self, inp: GrantAllowanceInput) -> GrantAllowanceResult:
        spec, t = inp.spec, SagaTimeouts()
        instant = self._instant(inp)
        plan = allowances.grant_for(spec, instant)
        period = plan.period if plan else allowances.period_containing(allowances.Cadence(spec.cadence), instant)
        start, end = period.start.isoformat(), period.end.isoformat()
        _set_unless_given(tenant=spec.tenant_id, allowance=spec.allowance_id, account=spec.account_id)
        _set(period=sa.period_of(start), outcome=CreditsOutcome.GRANTING if plan else CreditsOutcome.NOTHING_DUE)
        if plan is None:
            _said("allowance %s: nothing due for %s", spec.allowance_id, sa.period_of(start))
            return GrantAllowanceResult(spec.allowance_id, start, end, CreditsOutcome.NOTHING_DUE)
        grant = GrantInput(
            spec.tenant_id, naming.allowance_grant_key(spec.allowance_id, start), spec.account_id, plan.amount,
            spec.unit, spec.lot_type, plan.expires_at.isoformat(), "", spec.reason or f"allowance {spec.allowance_id}",
            source=naming.ALLOWANCE_SOURCE, effective_at=plan.effective_at.isoformat(), campaign_id=spec.allowance_id,
            priority=spec.priority, cost_basis=spec.cost_basis, rollover=spec.rollover)
        lot_id = await run_until_done(LedgerActivities.grant_credits, grant, t,
                                      f"grant {plan.amount} {spec.unit} to {spec.account_id} for {sa.period_of(start)}")
        _set(outcome=CreditsOutcome.GRANTED)
        _said("allowance %s granted %s %s to %s for %s (lot %s)", spec.allowance_id, plan.amount, spec.unit,
              spec.account_id, sa.period_of(start), lot_id)
        return GrantAllowanceResult(spec.allowance_id, start, end, CreditsOutcome.GRANTED, lot_id, plan.amount,
                                    plan.effective_at.isoformat())

    @staticmethod
    def _instant(inp: GrantAllowanceInput) -> datetime:
        if inp.period_at:
            return allowances.utc_instant(inp.period_at)
        scheduled = workflow.info().typed_search_attributes.get(sa.SCHEDULED_START)
        if scheduled is None:
            raise ApplicationError("GrantAllowance needs period_at when it is not started by its schedule",
                                   type="Rejected", non_retryable=True)
        return scheduled


@workflow.defn(name="ExpireCredits")
class ExpireCreditsWorkflow:
    """Scheduled: turns every tenant's settled unused credits into EXPIRED entries (breakage) or rollovers.

    Settlement before breakage (SPEC §4): first the invoice service's settlements (per billed
    ledger account, up to when its invoiced usage is final) are recorded on the ledger, then
    ExpireLots expires only lots whose window ended by then; the rest stays pending expiry.
    """

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        t = SagaTimeouts()
        as_of = workflow.now().replace(microsecond=0).isoformat()
        tenants = await list_tenants(t)
        out = SweepResult(tenants=len(tenants))
        for tenant in tenants:
            settlements = await run_step(InvoiceActivities.list_settlements, SettlementsInput(tenant), t,
                                         f"settlements of {tenant}")
            if settlements.settlements:
                await run_step(LedgerActivities.record_settlements, settlements, t,
                               f"record {len(settlements.settlements)} settlements of {tenant}")
            key = naming.expire_key(tenant, as_of, workflow.info().run_id)
            out.expired_lots += await run_step(LedgerActivities.expire_lots, ExpireInput(tenant, key, as_of), t,
                                               f"expire due lots of {tenant}")
        _said("expiry sweep: %d tenants, %d lots expired", out.tenants, out.expired_lots)
        return out


@workflow.defn(name="ReleaseExpiredHolds")
class ReleaseExpiredHoldsWorkflow:
    """Scheduled: gives back every tenant's real-time holds (`release_on_ttl`) whose TTL has passed —
    a gateway lease whose gate died, a reserve its caller never committed. Saga holds are never
    released this way (they carry `release_on_ttl = false`; the in-doubt resolver settles them)."""

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        t = SagaTimeouts()
        as_of = workflow.now().replace(microsecond=0).isoformat()
        tenants = await list_tenants(t)
        out = SweepResult(tenants=len(tenants))
        for tenant in tenants:
            key = naming.release_key(tenant, as_of, workflow.info().run_id)
            released = await run_step(LedgerActivities.release_expired_holds, ExpireInput(tenant, key, as_of), t,
                                      f"release expired holds of {tenant}")
            out.released_holds += released
        _said("expired holds released: %d tenants, %d holds", out.tenants, out.released_holds)
        return out


@workflow.defn(name="ResolveInDoubt")
class ResolveInDoubtWorkflow:
    """Scheduled: settles stale holds and PREPARED invoices by the owning workflow's recorded decision.

    Committed -> commit both sides; closed without a decision -> release the hold and abort the
    invoice; still running -> leave it to its owner; history gone -> report, touch nothing. Each
    with the sagas' own commit/abort sequences (`coordinator.steps`) and the owning run's keys.
    """

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        t = SagaTimeouts()
        cutoff = (workflow.now() - timedelta(seconds=inp.older_than_s)).isoformat()
        tenants = await list_tenants(t)
        out = SweepResult(tenants=len(tenants))
        for tenant in tenants:
            finalizations, voids = await self._in_doubt(tenant, cutoff, t)
            for (invoice_id, run_id), account in sorted(finalizations.items()):
                run = FinalizationRun(tenant, invoice_id, naming.finalize_workflow_id(tenant, invoice_id), run_id)
                await self._settle_finalization(run, account, out, t)
            for invoice in voids:
                await self._settle_void(tenant, invoice.invoice_id, out, t)
        _said("in-doubt resolver: %d tenants, %d committed, %d aborted, %d left to their running owner, %d unknown",
              out.tenants, len(out.committed), len(out.aborted), len(out.left_running), len(out.unknown))
        return out

    @staticmethod
    async def _in_doubt(tenant: str, cutoff: str, t: SagaTimeouts,
                        ) -> tuple[dict[tuple[str, str], str], list[InvoiceView]]:
        """Stale work: {(invoice, finalization run): ledger account (may be "")} and VOID_PENDING invoices."""
        owners: dict[tuple[str, str], str] = {}
        holds: list[HoldView] = await run_step(
            LedgerActivities.list_holds,
            ListHoldsInput(tenant, HoldStatus.PENDING, created_before=cutoff, hold_key_prefix=naming.HOLD_PREFIX), t,
            "list stale saga holds")
        for hold in holds:
            parsed = naming.parse_hold_key(hold.hold_key)
            if parsed is not None:
                owners[parsed] = hold.account_id
        invoices: list[InvoiceView] = await run_step(
            InvoiceActivities.list_invoices,
            ListInvoicesInput(tenant, [InvoiceStatus.PREPARED, InvoiceStatus.VOID_PENDING], cutoff), t,
            "list stale PREPARED and VOID_PENDING invoices")
        voids: list[InvoiceView] = []
        for invoice in invoices:
            if invoice.status == InvoiceStatus.VOID_PENDING:
                voids.append(invoice)
                continue
            ref = naming.parse_prepare_key(invoice.prepare_key)
            if ref is not None:
                owners.setdefault((invoice.invoice_id, ref[1]), invoice.ledger_account_id)
        return owners, voids

    @staticmethod
    async def _decision(workflow_id: str, run_id: str, t: SagaTimeouts, invoice_id: str = "") -> OwnerDecision:
        decision: OwnerDecision = await run_step(
            CoordinatorActivities.owner_decision, OwnerRef(workflow_id, run_id, invoice_id), t,
            f"ask Temporal for the decision of {naming.run_label(workflow_id, run_id) if run_id else workflow_id}")
        return decision

    async def _settle_finalization(self, run: FinalizationRun, account: str, out: SweepResult,
                                   t: SagaTimeouts) -> None:
        decision = await self._decision(run.workflow_id, run.run_id, t, run.invoice_id)
        if decision.workflow_id and decision.workflow_id != run.workflow_id:  # a billing cycle ran it inline
            run = FinalizationRun(run.tenant_id, run.invoice_id, decision.workflow_id, run.run_id)
        if decision.state == OwnerState.RUNNING:
            out.left_running.append(run.label)
            return
        if decision.state == OwnerState.UNKNOWN:
            out.unknown.append(run.label)
            return
        inv = await _read_invoice(run.tenant_id, run.invoice_id, t, f"read invoice {run.invoice_id}")
        prepared_by_owner = inv.status == InvoiceStatus.PREPARED and inv.prepare_key == run.prepare_key
        units = await self._pending_unit_holds(run, t) if workflow.patched(_UNIT_HOLDS) else []
        if decision.state == OwnerState.COMMIT:
            await commit_finalization(run, t, commit_invoice=prepared_by_owner, why="resolve", unit_holds=units)
            out.committed.append(run.label)
            return
        await abort_finalization(run, account or inv.ledger_account_id, t, abort_invoice=prepared_by_owner,
                                 release_hold=True, why="resolve", unit_holds=units)
        out.aborted.append(run.label)

    @staticmethod
    async def _pending_unit_holds(run: FinalizationRun, t: SagaTimeouts) -> list[str]:
        """The suffixes of the run's still PENDING usage-unit and converted holds (settled with its decision)."""
        holds: list[HoldView] = await run_step(
            LedgerActivities.list_holds,
            ListHoldsInput(run.tenant_id, HoldStatus.PENDING,
                           hold_key_prefix=naming.unit_holds_prefix(run.invoice_id, run.run_id)), t,
            f"list the usage-unit holds of {run.label}")
        return sorted(naming.hold_suffix(h.hold_key) for h in holds)

    async def _settle_void(self, tenant: str, invoice_id: str, out: SweepResult, t: SagaTimeouts) -> None:
        """A stale VOID_PENDING invoice: the latest run of its void workflow decides.

        The invoice does not record which run prepared the void; only the latest run can have (an
        earlier run's compensation returned it to FINALIZED before a new run could start). Its
        recorded decision ("voiding"/"voided") -> reverse the committed credits and mark it VOIDED
        with that run's own idempotency keys; closed without one -> back to FINALIZED.
        """
        workflow_id = naming.void_workflow_id(tenant, invoice_id)
        decision = await self._decision(workflow_id, "", t)
        run = VoidRun(tenant, invoice_id, workflow_id, decision.run_id)
        if decision.state == OwnerState.RUNNING:
            out.left_running.append(run.label)
            return
        if decision.state == OwnerState.UNKNOWN:
            out.unknown.append(workflow_id)
            return
        if decision.state == OwnerState.COMMIT:
            holds = await committed_holds(tenant, invoice_id, t, "resolve: find the invoice's committed credit hold")
            await commit_void(run, holds, decision.void_reason, t, why="resolve")
            out.committed.append(run.label)
            return
        await abort_void(run, t, why="resolve")
        out.aborted.append(run.label)


@workflow.defn(name="AutoTopUp")
class AutoTopUpWorkflow:
    """One auto top-up (issue #13), started by the ledger for a crossing with id
    `naming.topup_workflow_id` (account + crossing: one saga per crossing, and the crossing rule allows one
    top-up in flight per account). Charge -> grant only once the provider confirmed the payment:

        charge   find(top-up id), else charge(top-up id): the provider's idempotency key, so a retried or
                 restarted step finds the first charge and never makes a second; no answer (timeout, lost
                 response, 5xx) raises and is asked again with backoff, never assumed paid or unpaid
        pending  -> AWAITING_PAYMENT on the row; asked again after pending_poll_s (a durable timer)
        succeeded-> grant PURCHASED credit under `charge:<charge id>` (exactly once), GRANTED; the policy's
                    failure count resets
        declined -> DECLINED; after the policy's failure_limit in a row it disables itself (`topup.disabled`)

    Every step is retried until it succeeds: there is nothing to compensate (no credit before a payment).
    Invariants (tests/ledger/test_topups.py, harness/chaos/topups.py): credit only for a succeeded charge;
    a succeeded charge credited exactly once; one charge per crossing."""

    @workflow.run
    async def run(self, inp: TopUpInput) -> TopUpResult:
        retry = RetryPolicy(initial_interval=timedelta(seconds=inp.retry_initial_s), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=inp.retry_max_s), maximum_attempts=0)
        step = TopUpStep(inp.tenant_id, inp.topup_id)
        while True:
            paid: PaymentView = await workflow.execute_activity_method(
                TopUpActivities.charge_topup, step, start_to_close_timeout=timedelta(seconds=inp.step_timeout_s),
                retry_policy=retry, summary="charge (find first: the top-up id is the idempotency key)")
            if paid.outcome == TopUpOutcome.PENDING:
                await workflow.sleep(timedelta(seconds=inp.pending_poll_s), summary="payment pending: ask again")
                continue
            if paid.outcome == TopUpOutcome.SETTLED:
                return TopUpResult(inp.topup_id, paid.message, paid.charge_id)
            settle = (TopUpActivities.grant_topup if paid.outcome == TopUpOutcome.SUCCEEDED
                      else TopUpActivities.decline_topup)
            return await workflow.execute_activity_method(
                settle, TopUpStep(inp.tenant_id, inp.topup_id, paid.charge_id),
                start_to_close_timeout=timedelta(seconds=inp.step_timeout_s), retry_policy=retry,
                summary=f"payment {paid.outcome}: {'grant' if paid.outcome == TopUpOutcome.SUCCEEDED else 'decline'}")


WORKFLOWS = [FinalizeInvoiceWorkflow, VoidInvoiceWorkflow, BillingCycleWorkflow, BillingRunWorkflow,
             CompensateOutageWorkflow, GrantAllowanceWorkflow, ExpireCreditsWorkflow, ReleaseExpiredHoldsWorkflow,
             ResolveInDoubtWorkflow]
