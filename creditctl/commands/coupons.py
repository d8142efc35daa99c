"""creditctl coupons create|list|redeem: discounts by percent or amount, on the whole invoice or one
plan component's lines, for a number of billing periods (CreateCoupon, ListCoupons, RedeemCoupon)."""

from __future__ import annotations

from datetime import datetime

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records, set_instant
from creditctl.times import INSTANT


@click.group("coupons", cls=Group, help="coupons: discounts for a number of billing periods")
def command() -> None:
    pass


@command.command("create", help="a coupon: --percent or --amount (in --currency), for --periods (0 = forever)")
@click.argument("coupon_code")
@click.option("--percent", default="", help="percent off, e.g. 20")
@click.option("--amount", default="", help="amount off per period, e.g. 15.00 (with --currency)")
@click.option("--currency", default="", help="the --amount's currency, e.g. USD")
@click.option("--periods", type=int, default=0, show_default=True, help="billing periods it lasts; 0 = forever")
@click.option("--applies-to", default="", help="a plan component code (meter, fee, ...); default: the whole invoice")
@click.option("--name", default="", help="default: the code")
@idempotency_option
@format_options(quiet=True)
def create(coupon_code: str, percent: str, amount: str, currency: str, periods: int, applies_to: str, name: str,
           idempotency_key: str, fmt: Format) -> int:
    if bool(percent) == bool(amount):
        raise click.UsageError("give exactly one of --percent and --amount")
    created = rpc("invoice", "CreateCoupon", ipb.CreateCouponRequest(
        idempotency_key=key_for(idempotency_key or f"cli-coupon-{coupon_code}"), coupon_code=coupon_code,
        name=name or coupon_code, percent_off=percent, amount_off=amount, currency=currency,
        duration_periods=periods, applies_to=applies_to))
    emit_record(record(created), fmt, id_field="coupon_code")
    return 0


@command.command("list", help="the tenant's coupons")
@format_options(csv_=True)
def list_(fmt: Format) -> int:
    coupons = paged("invoice", "ListCoupons", ipb.ListCouponsRequest(), "coupons")
    emit_rows(records(coupons), ("coupon_code", "percent_off", "amount_off", "currency", "duration_periods",
                                 "applies_to"), fmt, empty="(no coupons)")
    return 0


@command.command("redeem", help="apply a coupon to a customer from the period --at falls in")
@click.argument("customer_id")
@click.argument("coupon_code")
@click.option("--at", "redeemed_at", type=INSTANT, default=None, help="default: now")
@idempotency_option
@format_options()
def redeem(customer_id: str, coupon_code: str, redeemed_at: datetime | None, idempotency_key: str,
           fmt: Format) -> int:
    request = ipb.RedeemCouponRequest(idempotency_key=key_for(idempotency_key or f"cli-redeem-{customer_id}-"
                                                                                  f"{coupon_code}"),
                                      customer_id=customer_id, coupon_code=coupon_code)
    set_instant(request.redeemed_at, redeemed_at)
    emit_record(record(rpc("invoice", "RedeemCoupon", request)), fmt)
    return 0
