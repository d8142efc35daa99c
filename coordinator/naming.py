"""Business keys: workflow ids, hold keys and idempotency keys, derived (never random). Every key the
coordinator derives is built here, and only here.

A finalization run owns hold `inv/<invoice>/<run_id>` and prepares the invoice with key
`finalize-invoice/<tenant>/<invoice>/<run_id>/prepare`, so whoever finds stale work (the in-doubt
resolver) can name the exact workflow run whose decision settles it. The run id (not only the
workflow id) is part of the keys because a compensated finalization may be started again under
the same workflow id, and that new attempt must not replay the first one's released hold.

Usage units as credits: the run also owns one hold per usage unit its invoice bills in,
`inv/<invoice>/<run_id>:<unit>` (`unit_hold_key`), reserved with step `reserve/<unit>`, and one
per credit unit that pays currency charges at a published rate, `inv/<invoice>/<run_id>:<unit>@<currency>`
(step `reserve/<unit>@<currency>`). Such keys parse to the same (invoice, run) as the run's
currency hold, so the resolver settles them all by the one decision; `hold_suffix` and
`unit_of_hold` tell them apart.

Every participant call of a saga run carries the idempotency key `<workflow id>/<run id>/<step>`
(`step_key`); the in-doubt resolver settles a run's work with that run's own keys, so a commit the
run already made and the resolver's are one and the same. A billing cycle finalizes its invoices
inline: each is a finalization run of the cycle's run, with keys `cycle/<cycle run id>/<invoice>/<step>`
(`run_step_key`) and hold `inv/<invoice>/<cycle run id>`.
"""

from __future__ import annotations

from enum import StrEnum

FINALIZE = "finalize-invoice"
VOID = "void-invoice"
CYCLE = "billing-cycle"
OUTAGE = "compensate-outage"
BILLING_RUN = "billing-run"  # every tenant's cycle: an operator's workflow, owned by no tenant
ALLOWANCE = "credits-allowance"
TOPUP = "auto-topup"
KINDS = (FINALIZE, VOID, CYCLE, OUTAGE, ALLOWANCE, TOPUP)
TOPUP_TASK_QUEUE = "credits-topups"  # served by the ledger process (ledger_service/topups/saga.py)
# The `source` of an allowance's lots; the ledger lets the coordinator's operator key grant lots with
# it (ledger_service/domain/grants.py ALLOWANCE_SOURCE, the same value).
ALLOWANCE_SOURCE = "allowance"
HOLD_PREFIX = "inv/"
RELEASE_REASON = "finalization saga compensated"
VOID_REASON = "invoice voided"  # a void's reversal reason when the caller gave none


class Step(StrEnum):
    """The step part of a saga run's idempotency keys (`step_key`); values are wire-visible."""

    RESERVE = "reserve"
    PREPARE = "prepare"  # also the prepare key the invoice records (`prepare_key`)
    COMMIT_HOLD = "commit_hold"
    COMMIT_FINALIZE = "commit_finalize"
    RELEASE_HOLD = "release_hold"
    ABORT_FINALIZE = "abort_finalize"
    PREPARE_VOID = "prepare_void"
    COMMIT_VOID = "commit_void"
    ABORT_VOID = "abort_void"


# --- workflow ids -----------------------------------------------------------------------------


def finalize_workflow_id(tenant_id: str, invoice_id: str) -> str:
    return f"{FINALIZE}/{tenant_id}/{invoice_id}"


def void_workflow_id(tenant_id: str, invoice_id: str) -> str:
    return f"{VOID}/{tenant_id}/{invoice_id}"


def cycle_workflow_id(tenant_id: str, as_of: str) -> str:
    return f"{CYCLE}/{tenant_id}/{as_of}"


def billing_run_workflow_id(as_of: str) -> str:
    return f"{BILLING_RUN}/{as_of}"


def outage_workflow_id(tenant_id: str, incident_id: str) -> str:
    return f"{OUTAGE}/{tenant_id}/{incident_id}"


def scheduled_workflow_id(schedule_id: str) -> str:
    """The id of the workflow a schedule (coordinator.schedules) starts; Temporal appends the start time."""
    return f"{schedule_id}-run"


def allowance_schedule_id(tenant_id: str, allowance_id: str) -> str:
    """The Temporal schedule of one recurring allowance; its runs are `<this>-run-<scheduled time>`."""
    return f"{ALLOWANCE}/{tenant_id}/{allowance_id}"


def allowance_schedule_prefix(tenant_id: str) -> str:
    """The prefix of every allowance schedule id of one tenant."""
    return f"{ALLOWANCE}/{tenant_id}/"


def allowance_of_schedule(tenant_id: str, schedule_id: str) -> str | None:
    """The allowance id of one of the tenant's allowance schedules, else None."""
    prefix = allowance_schedule_prefix(tenant_id)
    rest = schedule_id[len(prefix):] if schedule_id.startswith(prefix) else ""
    return rest if rest and "/" not in rest else None


def allowance_first_grant_workflow_id(tenant_id: str, allowance_id: str) -> str:
    """The sign-up grant of an allowance (started by CreateAllowance, not by the schedule)."""
    return f"{allowance_schedule_id(tenant_id, allowance_id)}/first"


def run_label(workflow_id: str, run_id: str) -> str:
    """One workflow run, as the in-doubt resolver reports it: `<workflow id>/<run id>`."""
    return f"{workflow_id}/{run_id}"


def kind_of(operation_id: str) -> str:
    """The operation kind of a workflow id (its first segment, e.g. finalize-invoice)."""
    return operation_id.partition("/")[0]


def is_void_workflow(workflow_id: str) -> bool:
    return workflow_id.startswith(VOID + "/")


def tenant_of(workflow_id: str) -> str | None:
    """The tenant segment of an operation id, or None if it is not one of ours."""
    kind, _, rest = workflow_id.partition("/")
    tenant, sep, _ = rest.partition("/")
    return tenant if kind in KINDS and sep and tenant else None


# --- holds and idempotency keys ---------------------------------------------------------------


def hold_key(invoice_id: str, run_id: str) -> str:
    return f"{HOLD_PREFIX}{invoice_id}/{run_id}"


def unit_hold_key(invoice_id: str, run_id: str, suffix: str) -> str:
    """The finalization run's hold of credits in a usage unit (`suffix` = the unit: lots that pay
    usage in units) or of a credit unit at a published rate (`converted_hold_suffix`)."""
    return f"{hold_key(invoice_id, run_id)}:{suffix}"


def unit_holds_prefix(invoice_id: str, run_id: str) -> str:
    """The prefix of every usage-unit hold of one finalization run."""
    return f"{hold_key(invoice_id, run_id)}:"


def unit_of_hold(key: str) -> str:
    """The ledger unit of a run's usage-unit or converted hold ("" for the hold in the invoice currency)."""
    return hold_suffix(key).partition("@")[0]


def converted_hold_suffix(unit: str, currency: str) -> str:
    """The hold-key suffix of a run's hold of credit unit `unit` paying `currency` charges at a
    published rate: `inv/<invoice>/<run_id>:<unit>@<currency>` (`unit_hold_key(..., this)`)."""
    return f"{unit}@{currency}"


def hold_suffix(key: str) -> str:
    """What follows `<run_id>:` in a run's usage-unit or converted hold key ("" for the currency hold)."""
    return key.rpartition("/")[2].partition(":")[2] if key.startswith(HOLD_PREFIX) else ""


def reserve_units_step(unit: str) -> str:
    """The step of a finalization run that reserves its usage-unit credits in `unit`."""
    return f"{Step.RESERVE}/{unit}"


def invoice_holds_prefix(invoice_id: str) -> str:
    """The prefix every saga hold of one invoice starts with (one per finalization run)."""
    return f"{HOLD_PREFIX}{invoice_id}/"


def step_key(workflow_id: str, run_id: str, step: str) -> str:
    return f"{workflow_id}/{run_id}/{step}"


CYCLE_RUN_KEYS = "cycle/"


def run_step_key(workflow_id: str, run_id: str, invoice_id: str, step: str) -> str:
    """The idempotency key of one step of a saga run on one invoice: `step_key`; inside a billing cycle's
    run, which finalizes many invoices, `cycle/<run id>/<invoice>/<step>` (a run id is unique across
    workflows, and the cycle's id would make keys too long: Temporal's visibility maps the run id back
    to its cycle, `coordinator.decisions.workflow_of_run`)."""
    if is_cycle_workflow(workflow_id):
        return f"{CYCLE_RUN_KEYS}{run_id}/{invoice_id}/{step}"
    return step_key(workflow_id, run_id, step)


def reverse_step(hold_key: str) -> str:
    """The step of a void run that reverses one committed hold."""
    return f"reverse/{hold_key}"


def prepare_key(workflow_id: str, run_id: str, invoice_id: str) -> str:
    """The key a finalization run prepares its invoice with (the invoice records it)."""
    return run_step_key(workflow_id, run_id, invoice_id, Step.PREPARE)


def cycle_draft_key(tenant_id: str, customer_id: str, period_start: str, subscription_id: str = "") -> str:
    """The idempotency key of the draft a billing cycle creates for one due period (of one subscription:
    a customer may have several; "" = a period listed before subscriptions were named, the old key)."""
    if subscription_id:
        return f"cycle/{tenant_id}/{customer_id}/{subscription_id}/{period_start}"
    return f"cycle/{tenant_id}/{customer_id}/{period_start}"


def due_period_label(customer_id: str, period_start: str) -> str:
    """A billing cycle's name for one due period (in its list of failures)."""
    return f"{customer_id}@{period_start}"


def outage_grant_key(incident_id: str, account_id: str) -> str:
    """One idempotent compensatory grant per (incident, account)."""
    return f"outage/{incident_id}/{account_id}"


def settlement_key(tenant_id: str, account_id: str, invoiced_through: str) -> str:
    """One RecordSettlement per (account, instant): a retried or repeated sweep replays it."""
    return f"settle/{tenant_id}/{account_id}/{invoiced_through}"


def expire_key(tenant_id: str, as_of: str, run_id: str) -> str:
    """The idempotency key of one expiry sweep of a tenant: a retried activity replays it; another
    sweep run (even within the same second, as the as_of has whole seconds) is a sweep of its own."""
    return f"expire/{tenant_id}/{as_of}/{run_id}"


def release_key(tenant_id: str, as_of: str, run_id: str) -> str:
    """The idempotency key of one TTL-release sweep of a tenant's real-time holds (as `expire_key`)."""
    return f"release/{tenant_id}/{as_of}/{run_id}"


def allowance_grant_key(allowance_id: str, period_start: str) -> str:
    """One grant per (allowance, period), whichever run asks: schedule, backfill, retry or sign-up."""
    return f"allowance/{allowance_id}/{period_start}"


# --- parsing ----------------------------------------------------------------------------------


def parse_hold_key(key: str) -> tuple[str, str] | None:
    """(invoice_id, run_id) of a saga hold key, or None for holds the coordinator does not own."""
    if not key.startswith(HOLD_PREFIX):
        return None
    invoice_id, sep, run_id = key[len(HOLD_PREFIX):].rpartition("/")
    run_id = run_id.partition(":")[0]  # a usage-unit hold of the run: `<run_id>:<unit>`
    return (invoice_id, run_id) if sep and invoice_id and run_id else None


def parse_prepare_key(key: str) -> tuple[str, str] | None:
    """(workflow_id, run_id) of a finalization's prepare key: a FinalizeInvoice run's; for a billing
    cycle's run that finalized the invoice inline (`cycle/<run id>/<invoice>/prepare`) the workflow id
    is "" — the key names the run only (`coordinator.decisions.workflow_of_run` finds its cycle)."""
    head, sep, step = key.rpartition("/")
    if not sep or step != Step.PREPARE:
        return None
    if head.startswith(CYCLE_RUN_KEYS):
        run_id, sep, invoice_id = head[len(CYCLE_RUN_KEYS):].partition("/")
        return ("", run_id) if sep and run_id and invoice_id else None
    workflow_id, sep, run_id = head.rpartition("/")
    return (workflow_id, run_id) if sep and run_id and workflow_id.startswith(FINALIZE + "/") else None


def is_cycle_workflow(workflow_id: str) -> bool:
    """A billing cycle: it finalizes its invoices inline, each a finalization run of the cycle's run."""
    return workflow_id.startswith(CYCLE + "/")


# A finalization a billing cycle runs inline records its commit decision as the schedule of the first
# commit of one of its holds, under this activity id (the cycle's history is the decision's record).
COMMIT_ACTIVITY_PREFIX = "commit/"


def commit_activity_id(hold_key: str) -> str:
    """The activity id of the commit of a hold of a finalization run inside a billing cycle: its schedule
    in the cycle's history is the run's commit decision (`decided_by_commit_schedule`)."""
    return f"{COMMIT_ACTIVITY_PREFIX}{hold_key}"


def committed_hold_of_activity(activity_id: str) -> str | None:
    """The hold key a `commit_activity_id` commits, else None."""
    return activity_id[len(COMMIT_ACTIVITY_PREFIX):] if activity_id.startswith(COMMIT_ACTIVITY_PREFIX) else None


def topup_workflow_id(tenant_id: str, topup_id: str) -> str:
    """`auto-topup/<tenant>/<account>/<unit>/<crossing>`: one saga per crossing (the ledger's top-up id is
    `topup/<account>/<unit>/<crossing>`), so starting it again is WorkflowAlreadyStarted, never a second charge."""
    return f"{TOPUP}/{tenant_id}/{topup_id.removeprefix('topup/')}"
