"""creditctl policy get|set: the order in which lots pay (GetConsumptionPolicy, SetConsumptionPolicy).

A policy is a list of sort keys, for the tenant or overridden per account; every set makes a new
version, and every allocation records the version it used.
"""

from __future__ import annotations

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, format_options
from creditctl.records import idempotency_option, key_for, record

SORT_KEYS = tuple(k for k in lpb.SortKey.keys() if k != "SORT_KEY_UNSPECIFIED")
LOT_TYPES = ("PURCHASED", "PROMOTIONAL", "COMPENSATORY", "ROLLOVER")


def _print(policy: lpb.ConsumptionPolicy, fmt: Format) -> int:
    r = record(policy)
    if fmt == Format.TABLE:
        r = {**r, "account_id": r["account_id"] or "(tenant default)", "sort_keys": " > ".join(r["sort_keys"]),
             "type_order": " > ".join(r["type_order"])}
    emit_record(r, fmt)
    return 0


@click.group("policy", cls=Group, help="the consumption order of lots, per tenant or per account")
def command() -> None:
    pass


@command.command("get", help="the policy in force for ACCOUNT (default: the tenant's)")
@click.argument("account_id", required=False, default="")
@format_options()
def get(account_id: str, fmt: Format) -> int:
    return _print(rpc("ledger", "GetConsumptionPolicy", lpb.GetConsumptionPolicyRequest(account_id=account_id)), fmt)


@command.command("set", help=f"a new version: sort keys in order ({', '.join(SORT_KEYS)})")
@click.argument("sort_keys", nargs=-1, required=True, type=click.Choice(SORT_KEYS, case_sensitive=False))
@click.option("--account", default="", help="override for one account; default: the tenant's policy")
@click.option("--type-order", default="", help="for TYPE_ORDER, e.g. PROMOTIONAL,COMPENSATORY,PURCHASED")
@idempotency_option
@format_options()
def set_(sort_keys: tuple[str, ...], account: str, type_order: str, idempotency_key: str, fmt: Format) -> int:
    types = [t.strip().upper() for t in type_order.split(",") if t.strip()]
    bad = [t for t in types if t not in LOT_TYPES]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: use {', '.join(LOT_TYPES)}", param_hint="--type-order")
    return _print(rpc("ledger", "SetConsumptionPolicy", lpb.SetConsumptionPolicyRequest(
        idempotency_key=key_for(idempotency_key), account_id=account,
        sort_keys=[lpb.SortKey.Value(k.upper()) for k in sort_keys],
        type_order=[lpb.LotType.Value(t) for t in types])), fmt)
