"""creditctl rates publish|list: what one credit unit is worth in a currency, versioned (PublishRate, ListRates)."""

from __future__ import annotations

from datetime import datetime

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records, set_instant
from creditctl.times import INSTANT


@click.group("rates", cls=Group, help="conversion rates of credit units into currencies")
def command() -> None:
    pass


@command.command("publish", help="a new version of 1 UNIT = RATE CURRENCY, in force from --effective-at")
@click.argument("unit")
@click.argument("currency")
@click.argument("rate")
@click.option("--effective-at", type=INSTANT, default=None, help="default: now")
@idempotency_option
@format_options()
def publish(unit: str, currency: str, rate: str, effective_at: datetime | None, idempotency_key: str,
            fmt: Format) -> int:
    request = lpb.PublishRateRequest(idempotency_key=key_for(idempotency_key), unit=unit, currency=currency, rate=rate)
    set_instant(request.effective_at, effective_at)
    emit_record(record(rpc("ledger", "PublishRate", request)), fmt)
    return 0


@command.command("list", help="every version, by unit, currency and version")
@click.option("--unit", default="")
@click.option("--currency", default="")
@format_options(csv_=True)
def list_(unit: str, currency: str, fmt: Format) -> int:
    rates = rpc("ledger", "ListRates", lpb.ListRatesRequest(unit=unit, currency=currency)).rates
    emit_rows(records(rates), ("unit", "currency", "rate", "version", "effective_at"), fmt)
    return 0
