"""creditctl units define|list: the ledger's units (ISO currencies and usage units are built in)."""

from __future__ import annotations

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records


@click.group("units", cls=Group, help="units of credit: currencies (ISO scales) and usage units")
def command() -> None:
    pass


@command.command("define", help="add a unit with a fixed number of decimals (a currency keeps its ISO scale)")
@click.argument("code")
@click.option("--scale", type=click.IntRange(0, 9), required=True, help="decimal places kept exactly")
@idempotency_option
@format_options()
def define(code: str, scale: int, idempotency_key: str, fmt: Format) -> int:
    key = key_for(idempotency_key or f"cli-unit-{code}-{scale}")
    unit = rpc("ledger", "DefineUnit", lpb.DefineUnitRequest(idempotency_key=key, code=code, scale=scale))
    emit_record(record(unit), fmt)
    return 0


@command.command("list", help="the tenant's units and their scales")
@format_options(csv_=True, quiet=True)
def list_(fmt: Format) -> int:
    units = rpc("ledger", "ListUnits", lpb.ListUnitsRequest()).units
    emit_rows(records(units), ("code", "scale"), fmt)
    return 0
