"""Which roles may call which InvoiceService method (checked by the shared auth interceptor)."""

from __future__ import annotations

from service_runtime.api_keys import ROLES

SERVICE_NAME = "credits.invoice.v1.InvoiceService"

_READ = frozenset(ROLES)
_WRITE = frozenset({"admin", "operator", "finance", "service"})
_WRITE_AND_SUPPORT = _WRITE | {"support"}

_READS = ("GetCustomer", "GetMeter", "GetPlan", "GetSubscription", "ListDueSubscriptions", "SplitDraft",
          "GetInvoice", "ListInvoices", "RenderInvoice")
_WRITES = ("CreateCustomer", "CreateMeter", "CreatePlan", "CreateSubscription", "IngestEvent", "IngestEvents",
           "PrepareFinalize", "CommitFinalize", "AbortFinalize", "PrepareVoid", "CommitVoid", "AbortVoid")

PERMISSIONS: dict[str, frozenset[str]] = {
    **{f"/{SERVICE_NAME}/{m}": _READ for m in _READS},
    **{f"/{SERVICE_NAME}/{m}": _WRITE for m in _WRITES},
    # Recomputing a draft changes nothing billed; support may refresh one to answer a customer.
    f"/{SERVICE_NAME}/CreateDraft": _WRITE_AND_SUPPORT,
}
