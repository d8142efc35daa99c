"""creditctl invoices list|show|abandon: read invoices, abandon a draft (CREDITS_INVOICE_ADDR, CREDITS_API_KEY)."""

from __future__ import annotations

import click
from credits.invoice.v1 import invoice_pb2 as pb
from credits.invoice.v1 import invoice_pb2_grpc
from google.protobuf.json_format import MessageToDict

from creditctl.arguments import idempotency_key_or_new
from creditctl.connection import Metadata, call_invoice
from creditctl.help_listing import Group
from creditctl.output import print_json
from service_runtime.proto_time import from_timestamp

STATUSES = ("DRAFT", "PREPARED", "FINALIZED", "VOID_PENDING", "VOIDED", "ABANDONED")


@click.group("invoices", cls=Group, help="read invoices, abandon a draft (CREDITS_INVOICE_ADDR, CREDITS_API_KEY)")
def command() -> None:
    pass


@command.command("list", help="invoices, oldest first")
@click.option("--customer", default="")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES))
@click.option("--limit", type=int, default=100)
@click.option("--json", "as_json", is_flag=True)
def list_(customer: str, statuses: tuple[str, ...], limit: int, as_json: bool) -> int:
    request = pb.ListInvoicesRequest(customer_id=customer, page_size=limit,
                                     statuses=[pb.InvoiceStatus.Value(s) for s in statuses])

    async def work(stub: invoice_pb2_grpc.InvoiceServiceStub, md: Metadata) -> pb.ListInvoicesResponse:
        return await stub.ListInvoices(request, metadata=md)

    response = call_invoice(work)
    if as_json:
        print_json([MessageToDict(i) for i in response.invoices])
        return 0
    click.echo(f"{'Invoice':<22}{'Number':<12}{'Customer':<20}{'Status':<14}{'Period start':<14}"
               f"{'Subtotal':>12}{'Due':>12} Cur")
    for i in response.invoices:
        start = from_timestamp(i.period_start, "period_start").strftime("%Y-%m-%d")
        click.echo(f"{i.invoice_id:<22}{i.number or '-':<12}{i.customer_id[:19]:<20}"
                   f"{pb.InvoiceStatus.Name(i.status):<14}{start:<14}{i.subtotal:>12}{i.amount_due:>12} {i.currency}")
    return 0


@command.command("show", help="one invoice with line items, credits applied and amount due")
@click.argument("invoice_id")
@click.option("--json", "as_json", is_flag=True)
def show(invoice_id: str, as_json: bool) -> int:
    request = pb.RenderInvoiceRequest(invoice_id=invoice_id, format=pb.JSON if as_json else pb.TEXT)

    async def work(stub: invoice_pb2_grpc.InvoiceServiceStub, md: Metadata) -> pb.RenderInvoiceResponse:
        return await stub.RenderInvoice(request, metadata=md)

    content = call_invoice(work).content
    click.echo(content, nl=not content.endswith("\n"))
    return 0


@command.command("abandon", help="DRAFT -> ABANDONED: the period is never billed; credit it held back may expire")
@click.argument("invoice_id")
@click.option("--reason", required=True, help="why the period is not billed (kept on the invoice)")
@click.option("--idempotency-key", default="")
@click.option("--json", "as_json", is_flag=True)
def abandon(invoice_id: str, reason: str, idempotency_key: str, as_json: bool) -> int:
    request = pb.AbandonInvoiceRequest(idempotency_key=idempotency_key_or_new(idempotency_key, as_json),
                                       invoice_id=invoice_id, reason=reason)

    async def work(stub: invoice_pb2_grpc.InvoiceServiceStub, md: Metadata) -> pb.Invoice:
        return await stub.AbandonInvoice(request, metadata=md)

    invoice = call_invoice(work)
    if as_json:
        print_json(MessageToDict(invoice))
    else:
        click.echo(f"{invoice.invoice_id} {pb.InvoiceStatus.Name(invoice.status)}: {invoice.abandon_reason}")
    return 0
