"""creditctl customers create|show: who is billed, and the ledger account whose credits pay
(CreateCustomer, GetCustomer; CREDITS_INVOICE_ADDR)."""

from __future__ import annotations

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, format_options
from creditctl.records import idempotency_option, key_for, record


@click.group("customers", cls=Group, help="customers of the invoice service, each paid by a ledger account")
def command() -> None:
    pass


@command.command("create", help="create a customer billed to a ledger account")
@click.argument("customer_id")
@click.option("--account", required=True, help="the ledger account whose credits pay its invoices")
@click.option("--name", default="", help="default: the customer id")
@idempotency_option
@format_options(quiet=True)
def create(customer_id: str, account: str, name: str, idempotency_key: str, fmt: Format) -> int:
    key = key_for(idempotency_key or f"cli-customer-{customer_id}")
    customer = rpc("invoice", "CreateCustomer", ipb.CreateCustomerRequest(
        idempotency_key=key, customer_id=customer_id, name=name or customer_id, ledger_account_id=account))
    emit_record(record(customer), fmt, id_field="customer_id")
    return 0


@command.command("show", help="one customer")
@click.argument("customer_id")
@format_options()
def show(customer_id: str, fmt: Format) -> int:
    emit_record(record(rpc("invoice", "GetCustomer", ipb.GetCustomerRequest(customer_id=customer_id))), fmt)
    return 0
