"""An invoice for humans: plain text and JSON, with credits applied per line item."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from invoice_service.domain.invoices import TRUE_UP, InvoiceView, LineItem, line_due
from invoice_service.domain.money import decimal_text, to_text


def _day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if (t.hour, t.minute) != (0, 0) else t.strftime("%Y-%m-%d")


def to_dict(inv: InvoiceView) -> dict[str, Any]:
    credits = inv.credits_by_line()
    money = lambda minor: to_text(minor, inv.scale)  # noqa: E731
    return {
        "invoice_id": inv.invoice_id,
        "number": inv.number or None,
        "status": inv.status,
        "customer_id": inv.customer_id,
        "currency": inv.currency,
        "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
        "line_items": [
            {
                "line_item_id": i.line_item_id, "kind": i.kind.value, "code": i.code,
                "description": i.description, "quantity": decimal_text(i.quantity),
                "unit_price": decimal_text(i.unit_price), "amount": money(i.amount_minor),
                "service_start": i.service_start.isoformat(), "service_end": i.service_end.isoformat(),
                "credits": [
                    {"lot_id": a.lot_id, "lot_type": a.lot_type, "charge_id": a.charge_id,
                     "amount": money(a.amount_minor),
                     **({"unit": a.unit, "units": decimal_text(a.units)} if a.unit else {}),
                     **({"rate": decimal_text(a.rate), "rate_version": a.rate_version} if a.rate is not None else {})}
                    for a in inv.applications if a.line_item_id == i.line_item_id
                ],
                "credits_applied": money(credits.get(i.line_item_id, 0)),
                "amount_due": money(line_due(inv, i, credits.get(i.line_item_id, 0))),
                "variant": i.variant, "line_kind": line_kind(i),
                "discount": money(i.discount_minor), "discount_codes": list(i.discount_codes),
                "tax": money(i.tax_minor),
            }
            for i in inv.line_items
        ],
        "subtotal": money(inv.subtotal_minor),
        "discounts": money(inv.discount_minor),
        "credits_applied": money(inv.credits_minor),
        "tax": money(inv.tax_minor),
        "tax_rule": None if inv.tax is None else {
            "region": inv.tax.region, "name": inv.tax.name, "rate": decimal_text(inv.tax.rate_percent),
            "inclusive": inv.tax.inclusive},
        "amount_due": money(inv.amount_due_minor),
        "credit_notes": list(inv.credit_notes),
    }


def line_kind(item: LineItem) -> str:
    """What kind of line it is, for people: usage by dimension or time of use, a commitment true-up."""
    if item.variant == TRUE_UP:
        return "COMMITMENT_TRUE_UP"
    if item.variant in ("peak", "off_peak"):
        return "USAGE_TIME_OF_USE"
    if item.variant:
        return "USAGE_DIMENSION"
    return item.kind.value


def _tax_label(inv: InvoiceView) -> str:
    assert inv.tax is not None
    how = "included" if inv.tax.inclusive else "added"
    return f"Tax {inv.tax.name} ({decimal_text(inv.tax.rate_percent)}%, {inv.tax.region}, {how})"


def to_json(inv: InvoiceView) -> str:
    return json.dumps(to_dict(inv), indent=2)


def to_text_invoice(inv: InvoiceView) -> str:
    money = lambda minor: to_text(minor, inv.scale)  # noqa: E731
    title = f"Invoice {inv.number}" if inv.number else f"Invoice {inv.invoice_id} ({inv.status})"
    lines = [
        title,
        f"Customer: {inv.customer_id}    Status: {inv.status}    Currency: {inv.currency}",
        f"Period:   {_day(inv.period_start)} to {_day(inv.period_end)}",
        "",
        f"{'Item':<34}{'Quantity':>14}{'Unit price':>14}{'Amount':>14}",
        "-" * 76,
    ]
    for item in inv.line_items:
        description = f"{item.description} true-up" if item.variant == TRUE_UP else item.description
        lines.append(f"{description[:33]:<34}{decimal_text(item.quantity):>14}"
                     f"{decimal_text(item.unit_price):>14}{money(item.amount_minor):>14}")
        lines += [f"  {description[n:n + 72]}" for n in range(33, len(description), 72)]
        if (item.service_start, item.service_end) != (inv.period_start, inv.period_end):
            # a part of the period (a subscription change, a partial first or last period): pro-rated
            lines.append(f"  service {_day(item.service_start)} to {_day(item.service_end)}")
        if item.discount_minor:
            label = f"  discount {', '.join(item.discount_codes)}"
            lines.append(f"{label[:62]:<62}{'-' + money(item.discount_minor):>14}")
        for a in inv.applications:
            if a.line_item_id == item.line_item_id:
                label = f"  credit {a.lot_type.lower()} lot {a.lot_id}"
                if a.unit:
                    label += f" ({decimal_text(a.units)} {a.unit}"
                    label += f" at {decimal_text(a.rate)}, rate v{a.rate_version})" if a.rate is not None else ")"
                lines.append(f"{label[:62]:<62}{'-' + money(a.amount_minor):>14}")
        if item.tax_minor and inv.tax is not None:
            label = f"  tax {decimal_text(inv.tax.rate_percent)}%" + (" (included)" if inv.tax.inclusive else "")
            lines.append(f"{label:<62}{money(item.tax_minor):>14}")
    lines += ["-" * 76, f"{'Subtotal':<62}{money(inv.subtotal_minor):>14}"]
    if inv.discount_minor:
        lines.append(f"{'Discounts':<62}{'-' + money(inv.discount_minor):>14}")
    lines.append(f"{'Credits applied':<62}{'-' + money(inv.credits_minor):>14}")
    if inv.tax is not None:
        lines.append(f"{_tax_label(inv)[:62]:<62}{money(inv.tax_minor):>14}")
    lines += [
        f"{'Amount due':<62}{money(inv.amount_due_minor):>14}",
        *(f"Note: {note}" for note in inv.credit_notes),
    ]
    return "\n".join(lines) + "\n"
