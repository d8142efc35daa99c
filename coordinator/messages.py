"""Dataclasses that cross the workflow/activity boundary: one input per activity and workflow.

Instants are ISO-8601 strings and amounts decimal strings, exactly as the services speak them,
so the history in the Temporal UI reads like the services' own payloads. No secrets here: the
API keys stay in the worker (coordinator.keys). Statuses and outcomes are StrEnums: their values
are what the payloads carry, so histories read (and replay) as before.
"""


from dataclasses import dataclass, field
from enum import StrEnum


class HoldStatus(StrEnum):
    """credits.ledger.v1.HoldStatus, by name."""

    PENDING = "PENDING"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    TOMBSTONE = "TOMBSTONE"


class InvoiceStatus(StrEnum):
    """credits.invoice.v1.InvoiceStatus, by name (UNSPECIFIED: a due period with no invoice yet)."""

    UNSPECIFIED = "INVOICE_STATUS_UNSPECIFIED"
    DRAFT = "DRAFT"
    PREPARED = "PREPARED"
    FINALIZED = "FINALIZED"
    VOID_PENDING = "VOID_PENDING"
    VOIDED = "VOIDED"
    ABANDONED = "ABANDONED"


class OwnerState(StrEnum):
    """What Temporal says of the workflow run that owns in-doubt work."""

    RUNNING = "running"  # it will settle the work itself
    COMMIT = "commit"  # it recorded its decision: commit
    ABANDON = "abandon"  # it closed without a decision: abort
    UNKNOWN = "unknown"  # no such run (retention may have removed it): touch nothing


class SagaOutcome(StrEnum):
    """How a finalization or void saga that completed ended (its result's `outcome`)."""

    FINALIZED = "finalized"
    ALREADY_FINALIZED = "already_finalized"
    VOIDED = "voided"
    ALREADY_VOIDED = "already_voided"


# --- ledger ---------------------------------------------------------------------------------


@dataclass
class LotBoundariesInput:
    tenant_id: str
    account_id: str
    unit: str
    period_start: str
    period_end: str


@dataclass
class ChargeSpec:
    charge_id: str
    kind: int
    name: str
    amount: str
    service_start: str
    service_end: str
    unit: str = ""  # unit charges: the usage unit `amount` (the quantity) counts in


@dataclass
class AllocationSpec:
    charge_id: str
    lot_id: str
    lot_type: str
    amount: str
    posted: str = ""
    unit: str = ""  # set on a usage-unit or converted hold's allocations: `amount` is units of it
    rate: str = ""  # a converted hold's allocations: the published rate (currency per unit) and its version
    rate_version: int = 0


@dataclass
class HoldView:
    hold_key: str
    account_id: str
    status: HoldStatus
    requested: str = ""
    reserved: str = ""
    posted: str = ""
    created_at: str = ""
    allocations: list[AllocationSpec] = field(default_factory=list)
    # A currency hold that left charges unpaid: the credit units with a published rate into the
    # currency (to reserve next), and credit that cannot pay and why ("no rate from credit to USD").
    convertible: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ReserveInput:
    tenant_id: str
    idempotency_key: str
    hold_key: str
    account_id: str
    unit: str
    charges: list[ChargeSpec]
    reference: str
    skip_units: list[str] = field(default_factory=list)  # units paid otherwise (the invoice's usage units)
    currency: str = ""  # reserve_converted: the currency the charges are in (`unit` is the credit unit)


@dataclass
class HoldInput:
    """Commit or release one hold. `must_succeed`: after the decision every error is retried."""

    tenant_id: str
    idempotency_key: str
    hold_key: str
    account_id: str = ""
    reason: str = ""
    must_succeed: bool = False


@dataclass
class ListHoldsInput:
    tenant_id: str
    status: HoldStatus = HoldStatus.PENDING
    created_before: str = ""
    hold_key_prefix: str = ""


@dataclass
class ExpireInput:
    tenant_id: str
    idempotency_key: str
    as_of: str


@dataclass
class SettlementsInput:
    """One tenant's settlements (ledger account, invoiced_through ISO instant) to record on the ledger."""

    tenant_id: str
    settlements: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RolloverPolicy:
    """credits.billing.v1.RolloverPolicy (the same message as the ledger's): what of a lot's unused rest
    moves into a ROLLOVER lot at its settlement. "" / 0 = no cap of that kind."""

    max_amount: str = ""
    max_percent: int = 0
    expires_after_s: int = 0


@dataclass
class GrantInput:
    tenant_id: str
    idempotency_key: str
    account_id: str
    amount: str
    unit: str
    lot_type: str
    expires_at: str
    incident_id: str
    reason: str
    source: str = "support"
    effective_at: str = ""  # "" = the ledger's now
    campaign_id: str = ""
    priority: int = 0
    cost_basis: str = ""
    rollover: RolloverPolicy | None = None  # the ledger's GrantCreditsRequest.rollover, when it has one


# --- invoices -------------------------------------------------------------------------------


@dataclass
class InvoiceRef:
    tenant_id: str
    invoice_id: str


@dataclass
class InvoiceView:
    invoice_id: str
    customer_id: str
    ledger_account_id: str
    currency: str
    status: InvoiceStatus
    period_start: str
    period_end: str
    subtotal: str = ""
    credits_applied: str = ""
    amount_due: str = ""
    number: str = ""
    prepare_key: str = ""
    usage_units: list[str] = field(default_factory=list)  # units its usage meters count in (sorted)


@dataclass
class SplitInput:
    tenant_id: str
    invoice_id: str
    split_at: list[str]
    unit_applications: list[AllocationSpec] = field(default_factory=list)  # what usage-unit lots reserved


@dataclass
class SplitResult:
    charges: list[ChargeSpec]
    draft_digest: str
    unit_charges: list[ChargeSpec] = field(default_factory=list)


@dataclass
class PrepareFinalizeInput:
    tenant_id: str
    idempotency_key: str
    invoice_id: str
    split_at: list[str]
    applications: list[AllocationSpec]
    draft_digest: str
    credit_notes: list[str] = field(default_factory=list)


@dataclass
class InvoiceStepInput:
    """Commit/abort finalize, prepare/commit/abort void."""

    tenant_id: str
    idempotency_key: str
    invoice_id: str
    prepare_key: str = ""
    reason: str = ""
    must_succeed: bool = False


@dataclass
class CreateDraftInput:
    tenant_id: str
    idempotency_key: str
    customer_id: str
    period_start: str
    subscription_id: str = ""  # a customer may have several subscriptions ("" = its only one)


@dataclass
class DuePeriodView:
    customer_id: str
    period_start: str
    period_end: str
    invoice_id: str
    status: InvoiceStatus
    subscription_id: str = ""  # "" in histories recorded before several subscriptions per customer


@dataclass
class ListDueInput:
    tenant_id: str
    as_of: str
    page_size: int = 500
    page_token: str = ""  # invoice.list_due_periods: the page after this cursor ("" = the first)


@dataclass
class DuePage:
    """One page of due periods, by customer then period start; next_page_token "" = the last."""

    periods: list[DuePeriodView]
    next_page_token: str


@dataclass
class ListInvoicesInput:
    tenant_id: str
    statuses: list[InvoiceStatus]
    prepared_before: str


# --- coordinator ----------------------------------------------------------------------------


@dataclass
class OwnerRef:
    workflow_id: str
    run_id: str
    # the invoice of an in-doubt finalization: its decision when a billing cycle's run owns it
    invoice_id: str = ""


@dataclass
class OwnerDecision:
    """What Temporal knows about the workflow that owns in-doubt work."""

    state: OwnerState
    detail: str = ""
    run_id: str = ""  # the run described (the latest one when OwnerRef.run_id is empty)
    void_reason: str = ""  # a void workflow's input reason (its reversal request carries it)
    # the owner when it is not the workflow asked about: the billing cycle whose run finalized the
    # invoice inline (the run's idempotency keys are that cycle's)
    workflow_id: str = ""


# --- workflows ------------------------------------------------------------------------------


@dataclass
class SagaTimeouts:
    """Per-step limits. Before the decision a step that keeps failing is given up and compensated."""

    step_start_to_close_s: float = 15.0
    prepare_phase_step_limit_s: float = 120.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    # Local activities retry inside the workflow task unless their backoff reaches this; at or above it
    # a durable timer waits instead and the task completes (None: the SDK's default, one minute). A
    # billing cycle's inline sagas share one workflow task: a slow call must not hold it for the others.
    local_retry_threshold_s: float | None = None


@dataclass
class FinalizeInvoiceInput:
    tenant_id: str
    invoice_id: str
    timeouts: SagaTimeouts = field(default_factory=SagaTimeouts)
    # The read-only prepare steps as local activities (13 history events fewer per saga). Every
    # starter sets it; False is how runs recorded before it replay (regular activities), with no
    # patch marker (workflow.patched would cost a marker and a search-attribute upsert per saga).
    local_reads: bool = False
    # The idempotent prepare-phase writes (reserve the holds, prepare the invoice) and the invoice's
    # finalize commit as local activities too; the hold's commit stays a regular activity, so the
    # decision (an upsert in the same workflow task completion as that activity's schedule) is a
    # durable history event before any commit runs. False: how runs recorded before it replay.
    local_steps: bool = False
    # The draft as its starter has just read it (BillingCycle: what CreateDraft answered): a DRAFT given
    # here is not read again (one local activity and one GetInvoice fewer per saga). Only the read is
    # skipped: split_draft and prepare_finalize check the draft's current state themselves.
    draft: InvoiceView | None = None


@dataclass
class FinalizeInvoiceResult:
    invoice_id: str
    outcome: SagaOutcome  # FINALIZED | ALREADY_FINALIZED
    number: str = ""
    subtotal: str = ""
    credits_applied: str = ""
    amount_due: str = ""
    hold_key: str = ""


@dataclass
class VoidInvoiceInput:
    tenant_id: str
    invoice_id: str
    reason: str = ""
    timeouts: SagaTimeouts = field(default_factory=SagaTimeouts)


@dataclass
class VoidInvoiceResult:
    invoice_id: str
    outcome: SagaOutcome  # VOIDED | ALREADY_VOIDED
    reversed_hold_key: str = ""
    reinstated: str = ""


@dataclass
class BillingCycleInput:
    tenant_id: str
    as_of: str
    concurrency: int = 8
    max_per_run: int = 200  # continue-as-new after this many invoices, to keep history small
    page_size: int = 0      # due periods per listing; 0 = a few windows' worth (4 x concurrency, 50..500)
    # each invoice's saga as a FinalizeInvoice child workflow of its own (one workflow per invoice in the
    # Temporal UI) rather than inline in the cycle's run (the default: a fraction of Temporal's work)
    child_sagas: bool = False
    done: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    # carried across continue-as-new: where the due-period listing goes on, the periods of the last
    # page not started yet, and how many pages and runs came before
    page_token: str = ""
    queued: list[DuePeriodView] = field(default_factory=list)
    listed_all: bool = False
    pages: int = 0
    runs: int = 0


@dataclass
class BillingCycleResult:
    tenant_id: str
    as_of: str
    finalized: int
    failed: int
    failures: list[str]
    pages: int = 0  # pages of due periods listed
    runs: int = 1   # workflow runs (continue-as-new) the cycle took


@dataclass
class BillingRunInput:
    """Every tenant's billing cycle as of one instant, under one global limit of sagas in flight.

    Each tenant's cycle (a child BillingCycle, the same workflow id `RunBillingCycle` uses) gets a
    share of `limit`: `per_tenant` slots, or what is left. Cycles run in parallel while their shares
    fit; as one ends its share goes to the next tenant. So the sagas in flight across all tenants
    never exceed `limit`, and one big tenant holds at most `per_tenant` of them."""
    as_of: str
    limit: int = 32       # finalization sagas in flight across every tenant
    per_tenant: int = 8   # at most this many of them in one tenant's cycle
    tenants: list[str] = field(default_factory=list)  # empty: every tenant the coordinator knows
    max_per_run: int = 500  # tenant cycles per workflow run before continue-as-new
    # carried across continue-as-new
    listed: bool = False
    queued: list[str] = field(default_factory=list)
    cycles: int = 0
    finalized: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # "tenant: label" (the first 100), or a tenant's error
    running_elsewhere: list[str] = field(default_factory=list)
    runs: int = 0


@dataclass
class BillingRunResult:
    as_of: str
    cycles: int          # tenant cycles that ran to their end
    finalized: int
    failed: int
    failures: list[str]
    running_elsewhere: list[str]  # tenants whose cycle for this instant was already running (not waited for)
    runs: int = 1


@dataclass
class CompensateOutageInput:
    tenant_id: str
    incident_id: str
    account_ids: list[str]
    amount: str
    unit: str
    expires_at: str
    reason: str
    concurrency: int = 10
    max_per_run: int = 500
    offset: int = 0
    granted: list[str] = field(default_factory=list)


@dataclass
class CompensateOutageResult:
    incident_id: str
    accounts: int
    lot_ids: list[str]
    # grants above the coordinator key's limits or the tenant's approval threshold: grant requests
    # awaiting a second person's approval (ApproveGrantRequest), no lot yet
    pending_requests: list[str] = field(default_factory=list)


PENDING_GRANT = "grant-request:"  # ledger.grant_credits' answer when the ledger stored a request, no lot


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    failed: int = 0
    stage: str = ""


@dataclass
class SweepInput:
    """Input of the scheduled expiry and in-doubt sweeps (one run covers every tenant)."""

    older_than_s: int = 600


@dataclass
class SweepResult:
    tenants: int = 0
    expired_lots: int = 0
    released_holds: int = 0
    committed: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    left_running: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)



# --- recurring allowances -------------------------------------------------------------------------


@dataclass
class AllowanceSpec:
    """One allowance, as its schedule's action carries it (and its memo shows it). Never changes.

    `cadence` and `first_grant` are `coordinator.allowances.Cadence` / `FirstGrant` values;
    `starts_at` is the sign-up instant (whole seconds, UTC); `unit_scale` the unit's decimal places
    (from the ledger's catalog at creation), to which a pro-rated first grant is rounded down.
    """

    tenant_id: str
    allowance_id: str
    account_id: str
    amount: str
    unit: str
    unit_scale: int
    cadence: str
    starts_at: str
    first_grant: str
    lot_type: str = "PROMOTIONAL"
    priority: int = 0
    cost_basis: str = ""
    reason: str = ""
    rollover: RolloverPolicy | None = None


@dataclass
class GrantAllowanceInput:
    """`period_at`: an instant inside the period to grant; "" = the schedule's scheduled start time."""

    spec: AllowanceSpec
    period_at: str = ""


@dataclass
class GrantAllowanceResult:
    allowance_id: str
    period_start: str
    period_end: str
    outcome: str  # search_attributes.CreditsOutcome: granted | nothing_due
    lot_id: str = ""
    amount: str = ""
    effective_at: str = ""


class TopUpOutcome(StrEnum):
    """What a top-up's charge came to (the provider's word) and how its saga ended."""

    SUCCEEDED = "succeeded"  # the provider confirmed the payment
    DECLINED = "declined"
    PENDING = "pending"  # asked again after `pending_poll_s`, never assumed either way
    GRANTED = "GRANTED"  # the saga's ends, as the ledger's top-up statuses spell them
    SETTLED = "SETTLED"  # the row was already settled (a saga started again after its end)


@dataclass
class TopUpInput:
    """An auto top-up saga: one per crossing, workflow id `naming.topup_workflow_id`."""

    tenant_id: str
    topup_id: str  # the ledger's top-up id (account/unit/crossing): the provider's idempotency key
    account_id: str
    step_timeout_s: float = 30.0  # one charge attempt: find + charge against the provider
    retry_initial_s: float = 2.0  # an unanswered charge (timeout, lost answer, 5xx) is asked again ...
    retry_max_s: float = 600.0  # ... doubling up to this, without end
    pending_poll_s: float = 5.0  # a pending payment is asked again after this long


@dataclass
class TopUpStep:
    tenant_id: str
    topup_id: str
    charge_id: str = ""  # grant/decline: the provider's charge


@dataclass
class PaymentView:
    charge_id: str
    outcome: TopUpOutcome
    message: str = ""


@dataclass
class TopUpResult:
    topup_id: str
    status: str  # the ledger's top-up status at the end: GRANTED or DECLINED (or the settled one found)
    charge_id: str = ""
    lot_id: str = ""
