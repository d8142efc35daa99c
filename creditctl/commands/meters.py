"""creditctl meters create|show: what usage is counted and how (CreateMeter, GetMeter)."""

from __future__ import annotations

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, format_options
from creditctl.records import idempotency_option, key_for, record

AGGREGATIONS = ("SUM", "COUNT", "MAX", "UNIQUE_COUNT")


@click.group("meters", cls=Group, help="meters: how usage events add up per period")
def command() -> None:
    pass


@command.command("create", help="create a meter")
@click.argument("meter_code")
@click.option("--aggregation", type=click.Choice(AGGREGATIONS, case_sensitive=False), default="SUM",
              show_default=True)
@click.option("--property", "property_", default="", help="event property to aggregate (UNIQUE_COUNT needs one)")
@click.option("--name", default="", help="default: the meter code")
@click.option("--allow-negative", is_flag=True, help="SUM only: corrections may be negative")
@click.option("--unit", default="", help="ledger usage unit its quantities count in (e.g. compute_minute)")
@idempotency_option
@format_options(quiet=True)
def create(meter_code: str, aggregation: str, property_: str, name: str, allow_negative: bool, unit: str,
           idempotency_key: str, fmt: Format) -> int:
    key = key_for(idempotency_key or f"cli-meter-{meter_code}")
    meter = rpc("invoice", "CreateMeter", ipb.CreateMeterRequest(
        idempotency_key=key, meter_code=meter_code, name=name or meter_code,
        aggregation=ipb.Aggregation.Value(aggregation.upper()), property=property_, allow_negative=allow_negative,
        unit=unit))
    emit_record(record(meter), fmt, id_field="meter_code")
    return 0


@command.command("show", help="one meter")
@click.argument("meter_code")
@format_options()
def show(meter_code: str, fmt: Format) -> int:
    emit_record(record(rpc("invoice", "GetMeter", ipb.GetMeterRequest(meter_code=meter_code))), fmt)
    return 0
