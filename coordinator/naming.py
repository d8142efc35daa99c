"""Business keys: workflow ids, hold keys and idempotency keys, derived (never random).

A finalization run owns hold `inv/<invoice>/<run_id>` and prepares the invoice with key
`finalize-invoice/<tenant>/<invoice>/<run_id>/prepare`, so whoever finds stale work (the in-doubt
resolver) can name the exact workflow run whose decision settles it. The run id (not only the
workflow id) is part of the keys because a compensated finalization may be started again under
the same workflow id, and that new attempt must not replay the first one's released hold.
"""

from __future__ import annotations

FINALIZE = "finalize-invoice"
VOID = "void-invoice"
CYCLE = "billing-cycle"
OUTAGE = "compensate-outage"
KINDS = (FINALIZE, VOID, CYCLE, OUTAGE)
HOLD_PREFIX = "inv/"
RELEASE_REASON = "finalization saga compensated"


def finalize_workflow_id(tenant_id: str, invoice_id: str) -> str:
    return f"{FINALIZE}/{tenant_id}/{invoice_id}"


def void_workflow_id(tenant_id: str, invoice_id: str) -> str:
    return f"{VOID}/{tenant_id}/{invoice_id}"


def cycle_workflow_id(tenant_id: str, as_of: str) -> str:
    return f"{CYCLE}/{tenant_id}/{as_of}"


def outage_workflow_id(tenant_id: str, incident_id: str) -> str:
    return f"{OUTAGE}/{tenant_id}/{incident_id}"


def hold_key(invoice_id: str, run_id: str) -> str:
    return f"{HOLD_PREFIX}{invoice_id}/{run_id}"


def step_key(workflow_id: str, run_id: str, step: str) -> str:
    return f"{workflow_id}/{run_id}/{step}"


def parse_hold_key(key: str) -> tuple[str, str] | None:
    """(invoice_id, run_id) of a saga hold key, or None for holds the coordinator does not own."""
    if not key.startswith(HOLD_PREFIX):
        return None
    invoice_id, sep, run_id = key[len(HOLD_PREFIX):].rpartition("/")
    return (invoice_id, run_id) if sep and invoice_id and run_id else None


def parse_prepare_key(key: str) -> tuple[str, str] | None:
    """(workflow_id, run_id) of a finalization's prepare key."""
    head, sep, step = key.rpartition("/")
    if not sep or step != "prepare":
        return None
    workflow_id, sep, run_id = head.rpartition("/")
    return (workflow_id, run_id) if sep and workflow_id.startswith(FINALIZE + "/") else None


def tenant_of(workflow_id: str) -> str | None:
    """The tenant segment of an operation id, or None if it is not one of ours."""
    kind, _, rest = workflow_id.partition("/")
    tenant, sep, _ = rest.partition("/")
    return tenant if kind in KINDS and sep and tenant else None
