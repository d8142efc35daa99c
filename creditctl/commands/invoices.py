"""creditctl invoices list|show|render|export|abandon: read invoices (ListInvoices, GetInvoice, RenderInvoice),
export them (ExportInvoices, streamed, with a progress bar when written to a file) and abandon
a draft (AbandonInvoice; CREDITS_INVOICE_ADDR, CREDITS_API_KEY). Finalizing and voiding go through
the sagas (`creditctl sagas`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click
from credits.invoice.v1 import invoice_pb2 as pb
from credits.invoice.v1 import invoice_pb2_grpc

from creditctl.connection import Metadata, call_invoice, paged, rpc
from creditctl.downloads import download
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, set_instant, short_instant
from creditctl.times import INSTANT

STATUSES = ("DRAFT", "PREPARED", "FINALIZED", "VOID_PENDING", "VOIDED", "ABANDONED")
COLUMNS = ("invoice_id", "number", "customer_id", "status", "period_start", "subtotal", "credits_applied",
           "amount_due", "currency")


def _row(invoice: pb.Invoice) -> dict[str, Any]:
    r = record(invoice)
    return {**r, "number": r["number"] or "-", "period_start": short_instant(r.get("period_start", ""))[:10]}


def _render(invoice_id: str, as_json: bool) -> str:
    request = pb.RenderInvoiceRequest(invoice_id=invoice_id, format=pb.JSON if as_json else pb.TEXT)
    return str(rpc("invoice", "RenderInvoice", request).content)


@click.group("invoices", cls=Group, help="read invoices, abandon a draft (CREDITS_INVOICE_ADDR, CREDITS_API_KEY)")
def command() -> None:
    pass


@command.command("list", help="invoices, oldest first")
@click.option("--customer", default="")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="repeatable")
@click.option("--period-start", type=INSTANT, default=None, help="only this exact period")
@click.option("--prepared-before", type=INSTANT, default=None, help="PREPARED / VOID_PENDING since before this")
@click.option("--limit", type=int, default=100, show_default=True)
@format_options(csv_=True, quiet=True)
def list_(customer: str, statuses: tuple[str, ...], period_start: datetime | None, prepared_before: datetime | None,
          limit: int, fmt: Format) -> int:
    request = pb.ListInvoicesRequest(customer_id=customer, page_size=min(max(limit, 1), 1000),
                                     statuses=[pb.InvoiceStatus.Value(s) for s in statuses])
    set_instant(request.period_start, period_start)
    set_instant(request.prepared_before, prepared_before)
    invoices = paged("invoice", "ListInvoices", request, "invoices", limit=limit)
    if fmt == Format.JSON:
        emit_rows([record(i) for i in invoices], COLUMNS, fmt)
    else:
        emit_rows([_row(i) for i in invoices], COLUMNS, fmt)
    return 0


@command.command("export", help="every invoice (or --line-items: every line item) as --csv or --json lines, "
                                 "streamed; -o FILE writes it with a progress bar")
@click.option("--customer", default="", help="one customer's invoices (default: every customer)")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="repeatable")
@click.option("--line-items", is_flag=True, help="a row per line item, with its credits applied and amount due")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the export to this file (with a progress bar)")
@format_options(csv_=True)
def export(customer: str, statuses: tuple[str, ...], line_items: bool, output: Path | None, fmt: Format) -> int:
    if fmt not in (Format.CSV, Format.JSON):
        raise click.UsageError("export needs --csv or --json")
    request = pb.ExportInvoicesRequest(
        customer_id=customer, statuses=[pb.InvoiceStatus.Value(s) for s in statuses], line_items=line_items,
        format=pb.INVOICE_EXPORT_JSON if fmt == Format.JSON else pb.INVOICE_EXPORT_CSV)

    async def work(stub: invoice_pb2_grpc.InvoiceServiceStub, md: Metadata) -> int:
        return await download(stub.ExportInvoices(request, metadata=md), output, "invoices",
                              lambda chunk: (chunk.invoices_done, chunk.invoices_total))

    written = call_invoice(work)
    if output:
        click.echo(f"wrote {written:,} bytes to {output}", err=True)
    return 0


@command.command("show", help="one invoice with line items, credits applied and amount due (--json: every field)")
@click.argument("invoice_id")
@format_options()
def show(invoice_id: str, fmt: Format) -> int:
    if fmt == Format.JSON:
        emit_record(record(rpc("invoice", "GetInvoice", pb.GetInvoiceRequest(invoice_id=invoice_id))), fmt)
        return 0
    content = _render(invoice_id, as_json=False)
    click.echo(content, nl=not content.endswith("\n"))
    return 0


@command.command("render", help="the invoice as the service renders it: text (default) or JSON")
@click.argument("invoice_id")
@click.option("--format", "render_format", type=click.Choice(("text", "json")), default="text", show_default=True)
def render(invoice_id: str, render_format: str) -> int:
    content = _render(invoice_id, as_json=render_format == "json")
    click.echo(content, nl=not content.endswith("\n"))
    return 0


@command.command("abandon", help="DRAFT -> ABANDONED: the period is never billed; credit it held back may expire")
@click.argument("invoice_id")
@click.option("--reason", required=True, help="why the period is not billed (kept on the invoice)")
@idempotency_option
@format_options(quiet=True)
def abandon(invoice_id: str, reason: str, idempotency_key: str, fmt: Format) -> int:
    invoice = rpc("invoice", "AbandonInvoice", pb.AbandonInvoiceRequest(
        idempotency_key=key_for(idempotency_key), invoice_id=invoice_id, reason=reason))
    emit_record(record(invoice), fmt, id_field="invoice_id")
    return 0
