"""creditctl topups set|show|list: automatic top-up of an account's balance through its payment method
(SetTopUpPolicy, GetTopUpPolicy, ListTopUps)."""

from __future__ import annotations

import click
from credits.alerts.v1 import alerts_pb2 as apb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records, short_instant


@click.group("topups", cls=Group, help="automatic top-ups: charge a payment method when the balance runs low")
def command() -> None:
    pass


@command.command("set", help="the account's policy: below --threshold, charge and grant PURCHASED credit once")
@click.argument("account")
@click.option("--unit", required=True, help="a currency (the card is charged in it)")
@click.option("--threshold", required=True)
@click.option("--amount", default="", help="a fixed top-up (or --target)")
@click.option("--target", default="", help="top up to this balance (or --amount)")
@click.option("--payment-method", required=True, help="the provider's reference, e.g. pm_...")
@click.option("--cost-basis", default="1", help="price per unit of the PURCHASED lot (what the card pays)")
@click.option("--max-daily", default="", help="cap on what top-ups grant in 24 h")
@click.option("--max-monthly", default="", help="cap on what top-ups grant in 30 days")
@click.option("--failure-limit", type=int, default=0, help="declines in a row that disable the policy (default 3)")
@click.option("--disabled", is_flag=True, help="store the policy disabled")
@idempotency_option
@format_options()
def set_(account: str, unit: str, threshold: str, amount: str, target: str, payment_method: str, cost_basis: str,
         max_daily: str, max_monthly: str, failure_limit: int, disabled: bool, idempotency_key: str,
         fmt: Format) -> int:
    policy = apb.TopUpPolicy(account_id=account, unit=unit, threshold=threshold, amount=amount, target=target,
                             payment_method=payment_method, cost_basis=cost_basis, max_daily=max_daily,
                             max_monthly=max_monthly, failure_limit=failure_limit, enabled=not disabled)
    request = apb.SetTopUpPolicyRequest(idempotency_key=key_for(idempotency_key), policy=policy)
    emit_record(record(rpc("alerts", "SetTopUpPolicy", request)), fmt, id_field="account_id")
    return 0


@command.command("show", help="the account's policy, whether it is enabled and its failures in a row")
@click.argument("account")
@click.option("--unit", required=True)
@format_options()
def show(account: str, unit: str, fmt: Format) -> int:
    found = rpc("alerts", "GetTopUpPolicy", apb.GetTopUpPolicyRequest(account_id=account, unit=unit))
    emit_record(record(found), fmt, id_field="account_id")
    return 0


@command.command("list", help="the account's top-ups: one per crossing, with its charge and lot")
@click.argument("account")
@format_options(csv_=True, quiet=True)
def list_(account: str, fmt: Format) -> int:
    rows = records(paged("alerts", "ListTopUps", apb.ListTopUpsRequest(account_id=account), "topups"))
    if fmt is Format.TABLE:
        for row in rows:
            row["created_at"] = short_instant(row.get("created_at", ""))
    emit_rows(rows, ("topup_id", "amount", "status", "charge_id", "lot_id", "attempts", "last_error", "created_at"),
              fmt, id_column="topup_id")
    return 0
