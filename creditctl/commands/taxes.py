"""creditctl taxes set|list|assign: tax rules per tax region of the tenant, exclusive or inclusive,
and a customer's region (SetTaxRule, ListTaxRules, SetCustomerTaxRegion)."""

from __future__ import annotations

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records


@click.group("taxes", cls=Group, help="tax rules by region (VAT, GST, sales tax) and customers' regions")
def command() -> None:
    pass


@command.command("set", help="create or replace the rule of a region, e.g. taxes set DE --rate 19 --name 'VAT 19%'")
@click.argument("region")
@click.option("--rate", required=True, help="percent, e.g. 19")
@click.option("--inclusive", is_flag=True, help="prices include the tax (default: added on top)")
@click.option("--name", default="", help="default: the region")
@idempotency_option
@format_options()
def set_(region: str, rate: str, inclusive: bool, name: str, idempotency_key: str, fmt: Format) -> int:
    request = ipb.SetTaxRuleRequest(idempotency_key=key_for(idempotency_key), region=region, name=name, rate=rate,
                                    inclusive=inclusive)
    emit_record(record(rpc("invoice", "SetTaxRule", request)), fmt)
    return 0


@command.command("list", help="the tenant's tax rules")
@format_options(csv_=True)
def list_(fmt: Format) -> int:
    rules = paged("invoice", "ListTaxRules", ipb.ListTaxRulesRequest(), "rules")
    emit_rows(records(rules), ("region", "name", "rate", "inclusive", "updated_at"), fmt, empty="(no tax rules)")
    return 0


@command.command("assign", help="the customer's tax region ('' = not taxed)")
@click.argument("customer_id")
@click.argument("region")
@idempotency_option
@format_options()
def assign(customer_id: str, region: str, idempotency_key: str, fmt: Format) -> int:
    request = ipb.SetCustomerTaxRegionRequest(idempotency_key=key_for(idempotency_key), customer_id=customer_id,
                                              tax_region=region)
    emit_record(record(rpc("invoice", "SetCustomerTaxRegion", request)), fmt)
    return 0
