"""Who may call what: the permission table of every RPC of every service, in one place.

Roles (carried by each API key, `service_runtime.api_keys.ROLES`), least privilege first:

- readonly  reads only (balances, lots, entries, holds, invoices, catalog, operations).
- service   upstream gateways: ReserveCredits/CommitHold/ReleaseHold, DebitCredits,
            BatchDebitCredits, usage ingestion (IngestEvent[s]), and reads.
- support   reads (ExplainAllocation included) and COMPENSATORY grants only, with a reason code
            and an incident id, within per-grant and per-day limits (below).
- finance   grants of any type, VoidGrant, reversals, transfers, consumption policies, transfer
            and support limits, approving/rejecting support grant requests, catalog (customers,
            meters, plans, subscriptions), invoice voids and outage compensation (front door).
- operator  what the coordinator and on-call people run: expiry sweeps, TTL hold release, journal
            verification, in-doubt resolution (reserve/commit/release/reverse, the invoice
            prepare/commit/abort steps) and billing runs. Its GrantCredits is limited to
            COMPENSATORY grants with an incident id (the CompensateOutage saga, which only
            finance/admin may start at the front door), within the same limits as support, and
            to recurring allowance grants: PROMOTIONAL or PURCHASED lots with source `allowance`
            and the allowance id as campaign id (the GrantAllowance workflow; only finance/admin
            may create an allowance at the front door), which the limits do not cover.
- admin     everything.
- portal    not a key's role: a customer portal session (service_runtime/portal_sessions.py), which
            may call only PORTAL_READS, for its own account or customer.
- finance_portal  not a key's role either: a finance session (the same signed links, kind `finance`),
            which may call only FINANCE_PORTAL_READS (the finance reports and the journal export) of
            its tenant: no rules, no close, no projection, nothing of a customer's.

Enforcement stays in the call guard (`service_runtime.call_guard.authorize`): it checks the caller's role
against the table a server was started with; an RPC missing from its table is refused for every
role (PERMISSION_DENIED), so a new RPC is closed until it is listed here. Rules that depend on the
request (which lot type, how much, who asked) live in the ledger's domain: see
`ledger_service/domain/grants.py` (applied by `ledger_service/operations/grants.py`).

Grant limits, the approval threshold and the two-person rule (ledger GrantCredits):
- A support grant must be COMPENSATORY, with reason_code and incident_id (else INVALID_ARGUMENT
  for missing fields, PERMISSION_DENIED for another lot type); an operator grant COMPENSATORY
  with an incident_id.
- Support keys' grants and operator keys' COMPENSATORY grants are limited (finance's and admin's
  are not), per tenant and unit, in the unit's major units: max_per_grant, and max_per_day = the
  sum of the same key's directly granted COMPENSATORY lots in that unit over the trailing 24
  hours (per key, not per tenant: one agent cannot exhaust the others' allowance; approved
  requests do not count, a second person authorised them). Set per unit with
  SetSupportGrantLimits (finance/admin); otherwise CREDITS_SUPPORT_MAX_GRANT (default 100) and
  CREDITS_SUPPORT_MAX_DAILY (default 500).
- Any grant, by any role, above the unit's approval_threshold (SetSupportGrantLimits, or
  CREDITS_GRANT_APPROVAL_THRESHOLD; default none) needs approval too.
- Within the limits the lot is written as usual. Above one, no lot: a grant request in
  PENDING_APPROVAL is stored (GrantCredits answers OK with a Lot whose lot_id is empty and whose
  grant_request is set, naming the limit). ApproveGrantRequest (finance/admin, a key of another
  person than the requester's: the keys' owners are compared, else PERMISSION_DENIED "two-person
  rule") creates the lot exactly once; approving again returns the same request;
  RejectGrantRequest closes it with no lot; approving a rejected request or rejecting an approved
  one is FAILED_PRECONDITION.

This module imports no service package: the services import their tables from here.
"""

from __future__ import annotations

from service_runtime.api_keys import ROLES

LEDGER_SERVICE = "credits.ledger.v1.LedgerService"
INVOICE_SERVICE = "credits.invoice.v1.InvoiceService"
BILLING_SERVICE = "credits.billing.v1.BillingService"
ALERTS_SERVICE = "credits.alerts.v1.AlertsService"
FINANCE_SERVICE = "credits.finance.v1.FinanceService"

ALL = frozenset(ROLES)
ADMIN = frozenset({"admin"})
FINANCE = frozenset({"admin", "finance"})
OPERATOR = frozenset({"admin", "operator"})
UPSTREAM = frozenset({"admin", "service"})
SAGA = frozenset({"admin", "operator", "service"})  # holds: upstream gateways and the coordinator
VERIFY = frozenset({"admin", "finance", "operator"})


def _table(service: str, *rows: tuple[frozenset[str], tuple[str, ...]]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for roles, methods in rows:
        for method in methods:
            path = f"/{service}/{method}"
            if path in out:
                raise ValueError(f"{path} listed twice")
            out[path] = roles
    return out


LEDGER: dict[str, frozenset[str]] = _table(
    LEDGER_SERVICE,
    (ALL, ("GetAccount", "ListUnits", "ListRates", "GetLot", "ListLots", "GetBalance", "ListEntries",
           "GetLotBoundaries", "ExplainAllocation", "GetConsumptionPolicy", "GetHold", "ListHolds",
           "GetSupportGrantLimits", "GetGrantRequest", "ListGrantRequests", "GetSettlement")),
    (FINANCE, ("CreateAccount", "DefineUnit", "PublishRate", "VoidGrant", "SetConsumptionPolicy", "TransferCredits",
               "ReverseTransfer", "SetTransferLimit", "SetSupportGrantLimits", "ApproveGrantRequest",
               "RejectGrantRequest")),
    # support: COMPENSATORY within limits; operator: COMPENSATORY with an incident (ledger domain/grants.py).
    (FINANCE | {"support", "operator"}, ("GrantCredits",)),
    (SAGA, ("ReserveCredits", "CommitHold", "ReleaseHold")),
    (UPSTREAM, ("DebitCredits", "BatchDebitCredits")),
    # refunds (finance) and the void saga (operator); ReverseReference: ReverseHold's deprecated alias
    (FINANCE | {"operator"}, ("ReverseHold", "ReverseReference")),
    # the expiry sweep: RecordSettlement (from the invoice service's ListSettlements), then ExpireLots
    (OPERATOR, ("ExpireLots", "ReleaseExpiredHolds", "RecordSettlement")),
    (VERIFY, ("VerifyJournal",)),
    (ALL, ("ListAccounts",)),  # the account tree, read like GetAccount (creditctl accounts list|children)
    # customer transparency: statements, exports and the live balance stream are reads
    (ALL, ("GetStatement", "ExportStatement", "WatchBalance")),
    # ending one customer's portal link: whoever may mint one (invoice CreatePortalLink)
    (FINANCE | {"support"}, ("RevokePortalLink",)),
)

INVOICE: dict[str, frozenset[str]] = _table(
    INVOICE_SERVICE,
    (ALL, ("GetCustomer", "GetMeter", "GetPlan", "GetSubscription", "ListDueSubscriptions", "ListSettlements",
           "ListSubscriptions", "ListPlanVersions", "SplitDraft",
           "GetInvoice", "ListInvoices", "RenderInvoice", "ExportInvoices")),
    (FINANCE, ("CreateCustomer", "CreateMeter", "CreatePlan", "CreateSubscription")),
    # Abandoning a period writes off what it would have billed: a finance decision, never the saga's.
    (FINANCE, ("AbandonInvoice",)),
    (UPSTREAM, ("IngestEvent", "IngestEvents")),
    # The saga's participant steps: the coordinator (operator) only; people start sagas at the
    # billing front door. CreateDraft recomputes a draft during a billing run.
    (OPERATOR, ("CreateDraft", "PrepareFinalize", "CommitFinalize", "AbortFinalize", "PrepareVoid", "CommitVoid",
                "AbortVoid")),
    # A portal link for one customer: whoever looks after customers (support shares links with them).
    (FINANCE | {"support"}, ("CreatePortalLink",)),
    (ALL, ("GetUsageSeries", "ListTopCustomers")),  # usage analytics: reads
    # Subscriptions that change and plan versions: catalog changes, like creating them (finance, admin).
    (FINANCE, ("UpdateSubscription", "CancelSubscription", "CreatePlanVersion", "MigrateSubscription")),
    # Pricing rules (tax rules, a customer's tax region, coupons and redemptions) change what invoices
    # bill: finance; reading them is a catalog read.
    (FINANCE, ("SetTaxRule", "SetCustomerTaxRegion", "CreateCoupon", "RedeemCoupon")),
    (ALL, ("ListTaxRules", "ListCoupons")),
)

BILLING: dict[str, frozenset[str]] = _table(
    BILLING_SERVICE,
    (ALL, ("GetOperation",)),
    (frozenset({"admin", "operator", "finance"}), ("FinalizeInvoice",)),
    (OPERATOR, ("RunBillingCycle",)),
    # Outage compensation grants COMPENSATORY credit to many accounts under the coordinator's key,
    # outside the support limits: finance/admin only.
    (FINANCE, ("VoidInvoice", "CompensateOutage")),
    # Recurring allowances grant credit every period under the coordinator's key: finance/admin create
    # and delete them; operators (on call, like the Temporal UI) may also pause and resume them.
    (ALL, ("GetAllowance", "ListAllowances")),
    (FINANCE, ("CreateAllowance", "DeleteAllowance")),
    (FINANCE | {"operator"}, ("PauseAllowance", "ResumeAllowance")),
)

# Alerts and webhooks (served by the ledger server). Rules: finance and on-call operators; endpoints
# hold signing secrets and decide which hosts the ledger calls (private targets: SSRF): admin only.
ALERTS: dict[str, frozenset[str]] = _table(
    ALERTS_SERVICE,
    (ALL, ("ListAlertRules", "ListAlertEvents")),
    (FINANCE | {"operator"}, ("CreateAlertRule", "DisableAlertRule")),
    (ADMIN, ("CreateWebhookEndpoint", "RotateWebhookSecret")),
    (VERIFY, ("ListWebhookEndpoints", "ListWebhookDeliveries", "ListWebhookAttempts")),
    (OPERATOR, ("RedeliverWebhook",)),
    # Auto top-up charges a customer's payment method: finance sets policies; people on call read them.
    (VERIFY, ("GetTopUpPolicy", "ListTopUps")),
    (FINANCE, ("SetTopUpPolicy",)),
)

# The finance books (served by the ledger server): revenue and liability are for finance (and
# read-only keys, e.g. an accounting export job); operators may catch the projection up.
FINANCE_BOOKS: dict[str, frozenset[str]] = _table(
    FINANCE_SERVICE,
    (FINANCE | {"readonly"}, ("GetFinanceRules", "GetRevenueReport", "GetLiabilityReport",
                              "GetLiabilityRollForward", "GetBreakageReport", "GetProgramReport", "ExportJournal")),
    (FINANCE | {"operator"}, ("ProjectBooks",)),
    (FINANCE, ("SetFinanceRules", "ClosePeriod")),
    # A finance link (a signed session for the finance pages of the web portal): finance and admin mint it.
    (FINANCE, ("CreateFinanceLink",)),
)

# The customer portal's session (role `portal`, service_runtime/portal_sessions.py): these reads only,
# each kept to the session's own account or customer by the call guard (portal_sessions.check_scope).
PORTAL_READS: dict[str, tuple[str, ...]] = {
    LEDGER_SERVICE: ("GetBalance", "ListLots", "GetStatement", "ExportStatement", "WatchBalance"),
    INVOICE_SERVICE: ("GetCustomer", "ListInvoices", "GetInvoice", "GetUsageSeries"),
}
for _service, _table_of in ((LEDGER_SERVICE, LEDGER), (INVOICE_SERVICE, INVOICE)):
    for _method in PORTAL_READS[_service]:
        _table_of[f"/{_service}/{_method}"] = _table_of[f"/{_service}/{_method}"] | {"portal"}

# A finance session (role `finance_portal`): the finance report reads of its own tenant, nothing else.
FINANCE_PORTAL_READS: tuple[str, ...] = ("GetRevenueReport", "GetLiabilityReport", "GetBreakageReport",
                                         "GetProgramReport", "ExportJournal")
for _method in FINANCE_PORTAL_READS:
    FINANCE_BOOKS[f"/{FINANCE_SERVICE}/{_method}"] = FINANCE_BOOKS[f"/{FINANCE_SERVICE}/{_method}"] | {"finance_portal"}

BY_SERVICE: dict[str, dict[str, frozenset[str]]] = {
    LEDGER_SERVICE: LEDGER, INVOICE_SERVICE: INVOICE, BILLING_SERVICE: BILLING, ALERTS_SERVICE: ALERTS,
    FINANCE_SERVICE: FINANCE_BOOKS,
}


def allowed(method_path: str) -> frozenset[str]:
    """The roles that may call `/<service>/<method>` (empty: nobody)."""
    service = method_path.strip("/").partition("/")[0]
    return BY_SERVICE.get(service, {}).get(method_path, frozenset())


def missing(service: str, methods: list[str]) -> list[str]:
    """The methods of `service` (by descriptor) that have no permission entry."""
    table = BY_SERVICE.get(service, {})
    return [m for m in methods if f"/{service}/{m}" not in table]


def render() -> str:
    """The whole table as text: one line per RPC with its roles (for docs and `--help`)."""
    lines = []
    for service, table in BY_SERVICE.items():
        lines.append(service)
        for path in sorted(table):
            roles = table[path]
            shown = "all roles" if roles == ALL else ", ".join(r for r in ROLES if r in roles)
            lines.append(f"  {path.rpartition('/')[2]:<24} {shown}")
    return "\n".join(lines)
