"""ExportInvoices' rows: invoices (or their line items) as CSV or JSON lines, page by page.

The columns are fixed (a spreadsheet or a loader can rely on them); amounts are the decimal strings of
the wire in the invoice's currency, instants ISO 8601 UTC, an unset instant an empty cell. Line-item
rows carry the credits applied to the line and what is left due, so they add up to the invoice's
credits_applied and amount_due.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from invoice_service.domain.invoices import InvoiceView
from invoice_service.domain.money import decimal_text, to_text

INVOICE_COLUMNS = ("invoice_id", "number", "customer_id", "ledger_account_id", "subscription_id", "plan_id",
                   "status", "currency", "period_start", "period_end", "subtotal", "credits_applied", "amount_due",
                   "created_at", "finalized_at", "voided_at", "abandoned_at")
LINE_COLUMNS = ("invoice_id", "number", "customer_id", "status", "currency", "period_start", "period_end",
                "line_item_id", "kind", "code", "description", "quantity", "unit_price", "amount",
                "credits_applied", "amount_due")


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def invoice_row(v: InvoiceView) -> dict[str, Any]:
    s = v.scale
    return {"invoice_id": v.invoice_id, "number": v.number, "customer_id": v.customer_id,
            "ledger_account_id": v.ledger_account_id, "subscription_id": v.subscription_id, "plan_id": v.plan_id,
            "status": v.status, "currency": v.currency, "period_start": _iso(v.period_start),
            "period_end": _iso(v.period_end), "subtotal": to_text(v.subtotal_minor, s),
            "credits_applied": to_text(v.credits_minor, s), "amount_due": to_text(v.amount_due_minor, s),
            "created_at": _iso(v.created_at), "finalized_at": _iso(v.finalized_at), "voided_at": _iso(v.voided_at),
            "abandoned_at": _iso(v.abandoned_at)}


def line_rows(v: InvoiceView) -> list[dict[str, Any]]:
    s, credits = v.scale, v.credits_by_line()
    head = {"invoice_id": v.invoice_id, "number": v.number, "customer_id": v.customer_id, "status": v.status,
            "currency": v.currency, "period_start": _iso(v.period_start), "period_end": _iso(v.period_end)}
    return [{**head, "line_item_id": i.line_item_id, "kind": i.kind.value, "code": i.code,
             "description": i.description, "quantity": decimal_text(i.quantity),
             "unit_price": decimal_text(i.unit_price), "amount": to_text(i.amount_minor, s),
             "credits_applied": to_text(credits.get(i.line_item_id, 0), s),
             "amount_due": to_text(i.amount_minor - credits.get(i.line_item_id, 0), s)}
            for i in v.line_items]


