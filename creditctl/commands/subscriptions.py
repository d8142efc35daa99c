"""creditctl subscriptions create|show|due: a customer on a plan from an anchor; the periods due
(CreateSubscription, GetSubscription, ListDueSubscriptions)."""

from __future__ import annotations

from datetime import datetime

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, pairs, record, records, set_instant
from creditctl.times import INSTANT


def _quantities(values: tuple[str, ...], flag: str) -> list[ipb.Quantity]:
    out = []
    for code, n in pairs(values, flag):
        if not n.isdigit():
            raise click.BadParameter(f"{code}={n}: the quantity is a whole number >= 0", param_hint=flag)
        out.append(ipb.Quantity(code=code, quantity=int(n)))
    return out


@click.group("subscriptions", cls=Group, help="subscriptions: which plan bills a customer, and from when")
def command() -> None:
    pass


@command.command("create", help="put a customer on a plan; periods repeat every interval from --anchor")
@click.argument("subscription_id")
@click.option("--customer", required=True)
@click.option("--plan", required=True)
@click.option("--anchor", type=INSTANT, default="now", show_default=True, help="the first period starts here")
@click.option("--add-on", "add_ons", multiple=True, help="CODE=UNITS of an add-on of the plan, repeatable")
@click.option("--license", "licenses", multiple=True, help="CODE=SEATS of a license of the plan, repeatable")
@idempotency_option
@format_options(quiet=True)
def create(subscription_id: str, customer: str, plan: str, anchor: datetime, add_ons: tuple[str, ...],
           licenses: tuple[str, ...], idempotency_key: str, fmt: Format) -> int:
    request = ipb.CreateSubscriptionRequest(
        idempotency_key=key_for(idempotency_key or f"cli-subscription-{subscription_id}"),
        subscription_id=subscription_id, customer_id=customer, plan_id=plan,
        add_ons=_quantities(add_ons, "--add-on"), licenses=_quantities(licenses, "--license"))
    set_instant(request.anchor, anchor.replace(microsecond=0))
    emit_record(record(rpc("invoice", "CreateSubscription", request)), fmt, id_field="subscription_id")
    return 0


@command.command("show", help="one subscription")
@click.argument("subscription_id")
@format_options()
def show(subscription_id: str, fmt: Format) -> int:
    emit_record(record(rpc("invoice", "GetSubscription", ipb.GetSubscriptionRequest(
        subscription_id=subscription_id))), fmt)
    return 0


@command.command("due", help="periods that ended (plus the usage grace) without a finalized invoice")
@click.option("--as-of", type=INSTANT, default="now", show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, show_default=True)
@format_options(csv_=True)
def due(as_of: datetime, limit: int, fmt: Format) -> int:
    request = ipb.ListDueSubscriptionsRequest(page_size=limit)
    set_instant(request.as_of, as_of)
    periods = rpc("invoice", "ListDueSubscriptions", request).periods
    emit_rows(records(periods), ("customer_id", "subscription_id", "period_start", "period_end", "invoice_id",
                                 "status"), fmt, empty="(nothing due)")
    return 0
