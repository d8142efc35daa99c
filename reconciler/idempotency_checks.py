"""Stored idempotent responses against the durable state they name: a key never maps to two outcomes."""

from __future__ import annotations

import asyncpg
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from invoice_service.domain.states import Status
from ledger_service.domain.model import HoldStatus
from reconciler.invoice_checks import Invoice
from reconciler.ledger_checks import Hold
from reconciler.report import Check, TenantFindings

_SELECT_KEYS = "SELECT key, method, response FROM idempotency_keys WHERE tenant_id = $1"
_SELECT_TOMBSTONES = "SELECT hold_key FROM hold_resolutions WHERE tenant_id = $1 AND status = $2"
# The hold statuses a stored response of each method may name (and the hold must still show).
_HOLD_AFTER = {"CommitHold": {HoldStatus.COMMITTED}, "ReleaseHold": {HoldStatus.RELEASED, HoldStatus.TOMBSTONE}}
_HOLD_METHODS = ("ReserveCredits", *_HOLD_AFTER)
# The invoice statuses the invoice may show after each stored commit.
_INVOICE_AFTER = {"CommitFinalize": {Status.FINALIZED, Status.VOID_PENDING, Status.VOIDED},
                  "CommitVoid": {Status.VOIDED}}


def _method(row: asyncpg.Record) -> str:
    return str(row["method"]).rpartition("/")[2]


async def check_idempotency(lconn: asyncpg.Connection, iconn: asyncpg.Connection, found: TenantFindings,
                            holds: dict[str, Hold], invoices: dict[str, Invoice]) -> None:
    """Each stored response of a hold / invoice mutation names an outcome the durable state still shows."""
    await _check_ledger_keys(lconn, found, holds)
    await _check_invoice_keys(iconn, found, invoices)


async def _check_ledger_keys(conn: asyncpg.Connection, found: TenantFindings, holds: dict[str, Hold]) -> None:
    tenant = found.tenant_id
    tombstones = {r["hold_key"] for r in await conn.fetch(_SELECT_TOMBSTONES, tenant, HoldStatus.TOMBSTONE.value)}
    for r in await conn.fetch(_SELECT_KEYS, tenant):
        found.count("idempotency_keys")
        method = _method(r)
        if method not in _HOLD_METHODS:
            continue
        resp = lpb.Hold.FromString(bytes(r["response"]))
        hold = holds.get(resp.hold_key)
        if hold is None:
            if not (method == "ReleaseHold" and resp.hold_key in tombstones):
                found.bad(Check.IDEMPOTENCY, f"{method} response names hold {resp.hold_key!r} that does not exist",
                          key=r["key"])
            continue
        allowed = _HOLD_AFTER.get(method)
        if allowed is None:
            continue
        stored = lpb.HoldStatus.Name(resp.status)
        if hold.status not in allowed or stored not in allowed:
            found.bad(Check.IDEMPOTENCY, f"{method} stored {stored}, the hold is {hold.status}", key=r["key"],
                      hold_key=hold.hold_key)


async def _check_invoice_keys(conn: asyncpg.Connection, found: TenantFindings,
                              invoices: dict[str, Invoice]) -> None:
    for r in await conn.fetch(_SELECT_KEYS, found.tenant_id):
        found.count("idempotency_keys")
        allowed = _INVOICE_AFTER.get(_method(r))
        if allowed is None:
            continue
        resp = ipb.Invoice.FromString(bytes(r["response"]))
        inv = invoices.get(resp.invoice_id)
        if inv is None or inv.status not in allowed:
            found.bad(Check.IDEMPOTENCY, f"{_method(r)} stored {ipb.InvoiceStatus.Name(resp.status)}, the invoice "
                      f"is {inv.status.value if inv else 'missing'}", key=r["key"], invoice_id=resp.invoice_id)
