"""creditctl subscriptions create|show|list|due|update|cancel|migrate: a customer on a plan from an anchor;
the periods due; changes at an instant (CreateSubscription, GetSubscription with its phases,
ListSubscriptions, ListDueSubscriptions, UpdateSubscription, CancelSubscription, MigrateSubscription).

A change at an instant inside a period splits it there: fees, add-ons and seats are pro-rated by time,
usage is priced under the plan in force when it happened (invoice_service/domain/lifecycle.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.prices import describe, parse_price
from creditctl.records import idempotency_option, key_for, pairs, record, records, set_instant
from creditctl.times import INSTANT


def _quantities(values: tuple[str, ...], flag: str) -> list[ipb.Quantity]:
    out = []
    for code, n in pairs(values, flag):
        if not n.isdigit():
            raise click.BadParameter(f"{code}={n}: the quantity is a whole number >= 0", param_hint=flag)
        out.append(ipb.Quantity(code=code, quantity=int(n)))
    return out


def _overrides(values: tuple[str, ...]) -> list[ipb.PriceOverride]:
    """`--price CODE=AMOUNT` (a fee, add-on or seat) or `--price METER=PRICE` (a usage price, as plans take it)."""
    out = []
    for code, value in pairs(values, "--price"):
        if ":" in value:
            try:
                out.append(ipb.PriceOverride(code=code, price=parse_price(value)))
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--price") from None
        else:
            out.append(ipb.PriceOverride(code=code, amount=value))
    return out


PRICE_OVERRIDE_HELP = ("this customer's price: CODE=AMOUNT for a fee/add-on/license, METER=per_unit:0.00002 "
                       "(any plan price form) for usage; repeatable")


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
@click.option("--trial-end", type=INSTANT, default=None, help="a free trial from the anchor; billing starts here")
@click.option("--calendar", "calendar_aligned", is_flag=True,
              help="periods on calendar boundaries (UTC); the first one is partial and pro-rated")
@click.option("--price", "prices", multiple=True, help=PRICE_OVERRIDE_HELP)
@idempotency_option
@format_options(quiet=True)
def create(subscription_id: str, customer: str, plan: str, anchor: datetime, add_ons: tuple[str, ...],
           licenses: tuple[str, ...], trial_end: datetime | None, calendar_aligned: bool, prices: tuple[str, ...],
           idempotency_key: str, fmt: Format) -> int:
    request = ipb.CreateSubscriptionRequest(
        idempotency_key=key_for(idempotency_key or f"cli-subscription-{subscription_id}"),
        subscription_id=subscription_id, customer_id=customer, plan_id=plan,
        add_ons=_quantities(add_ons, "--add-on"), licenses=_quantities(licenses, "--license"),
        calendar_aligned=calendar_aligned, price_overrides=_overrides(prices))
    set_instant(request.anchor, anchor.replace(microsecond=0))
    if trial_end is not None:
        set_instant(request.trial_end, trial_end.replace(microsecond=0))
    emit_record(record(rpc("invoice", "CreateSubscription", request)), fmt, id_field="subscription_id")
    return 0


def _codes(values: list[dict[str, Any]], value_field: str) -> str:
    """`[{code: seat, quantity: 3}]` as `seat=3`; a usage price override as the price it sets."""
    return " ".join(f"{v['code']}={v.get(value_field) or describe(v.get('price', {}))}" for v in values)


PHASE_COLUMNS = ("effective_at", "plan", "add_ons", "licenses", "price_overrides", "created_at")


def _phase_row(p: dict[str, Any]) -> dict[str, Any]:
    return {"effective_at": p["effective_at"], "plan": f"{p['plan_id']} v{p['plan_version']}",
            "add_ons": _codes(p["add_ons"], "quantity"), "licenses": _codes(p["licenses"], "quantity"),
            "price_overrides": _codes(p["price_overrides"], "amount"), "created_at": p.get("created_at", "")}


@command.command("show", help="one subscription and its phases (what it billed from each instant on)")
@click.argument("subscription_id")
@format_options()
def show(subscription_id: str, fmt: Format) -> int:
    sub = record(rpc("invoice", "GetSubscription", ipb.GetSubscriptionRequest(subscription_id=subscription_id)))
    if fmt == Format.JSON:
        emit_record(sub, fmt)
        return 0
    phases = sub.pop("phases", [])
    emit_record(sub, fmt)
    click.echo()
    emit_rows([_phase_row(p) for p in phases], PHASE_COLUMNS, fmt, title="phases")
    return 0


LIST_COLUMNS = ("customer_id", "subscription_id", "plan_id", "plan_version", "anchor", "trial_end", "ends_at")


@command.command("list", help="subscriptions by customer, then id (--customer: one customer's)")
@click.option("--customer", default="", help="one customer's subscriptions (default: every customer's)")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@format_options(csv_=True, quiet=True)
def list_(customer: str, limit: int, fmt: Format) -> int:
    found = paged("invoice", "ListSubscriptions", ipb.ListSubscriptionsRequest(customer_id=customer),
                  "subscriptions", limit=limit)
    rows = [{k: v for k, v in r.items() if k != "phases"} for r in records(found)]
    emit_rows(rows, LIST_COLUMNS, fmt, id_column="subscription_id", empty="(no subscriptions)")
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


@command.command("update", help="change plan, add-ons, seats or prices from --at on (the period is split there)")
@click.argument("subscription_id")
@click.option("--at", type=INSTANT, default="now", show_default=True, help="when the change takes effect")
@click.option("--plan", default="", help="another plan (its latest version; same currency and interval)")
@click.option("--add-on", "add_ons", multiple=True, help="CODE=UNITS, repeatable (replaces the add-ons)")
@click.option("--license", "licenses", multiple=True, help="CODE=SEATS, repeatable (replaces the licenses)")
@click.option("--price", "prices", multiple=True, help=PRICE_OVERRIDE_HELP + " (replaces the overrides)")
@idempotency_option
@format_options()
def update(subscription_id: str, at: datetime, plan: str, add_ons: tuple[str, ...], licenses: tuple[str, ...],
           prices: tuple[str, ...], idempotency_key: str, fmt: Format) -> int:
    at = at.replace(microsecond=0)
    request = ipb.UpdateSubscriptionRequest(
        idempotency_key=key_for(idempotency_key),
        subscription_id=subscription_id, plan_id=plan, add_ons=_quantities(add_ons, "--add-on"),
        licenses=_quantities(licenses, "--license"), price_overrides=_overrides(prices))
    set_instant(request.effective_at, at)
    emit_record(record(rpc("invoice", "UpdateSubscription", request)), fmt)
    return 0


@command.command("cancel", help="end the subscription --at an instant (or at the end of that period); "
                                "its last period is billed pro rata by the final invoice")
@click.argument("subscription_id")
@click.option("--at", type=INSTANT, default="now", show_default=True)
@click.option("--at-period-end", is_flag=True, help="end at the end of the period holding --at instead")
@idempotency_option
@format_options()
def cancel(subscription_id: str, at: datetime, at_period_end: bool, idempotency_key: str, fmt: Format) -> int:
    at = at.replace(microsecond=0)
    request = ipb.CancelSubscriptionRequest(
        idempotency_key=key_for(idempotency_key),
        subscription_id=subscription_id, at_period_end=at_period_end)
    set_instant(request.at, at)
    emit_record(record(rpc("invoice", "CancelSubscription", request)), fmt)
    return 0


@command.command("migrate", help="move the subscription to another version of its plan from --at on")
@click.argument("subscription_id")
@click.option("--at", type=INSTANT, default="now", show_default=True)
@click.option("--version", type=click.IntRange(0), default=0, show_default=True, help="0 = the latest")
@idempotency_option
@format_options()
def migrate(subscription_id: str, at: datetime, version: int, idempotency_key: str, fmt: Format) -> int:
    at = at.replace(microsecond=0)
    request = ipb.MigrateSubscriptionRequest(
        idempotency_key=key_for(idempotency_key),
        subscription_id=subscription_id, version=version)
    set_instant(request.effective_at, at)
    emit_record(record(rpc("invoice", "MigrateSubscription", request)), fmt)
    return 0
