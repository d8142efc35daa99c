"""creditctl plans create|show|version: plans and their prices (CreatePlan, GetPlan, CreatePlanVersion).

`plans version PLAN_ID` edits a plan: it creates the plan's next version with the prices given (same
currency and interval); subscriptions stay on their version until `subscriptions migrate`.

Prices are written on the flag (`--usage input_tokens=per_unit:0.00001`; the forms are in
creditctl/prices.py and `plans create --help`), or the whole plan comes from a JSON file in the
CreatePlanRequest's JSON form (`--file plan.json`). A usage price may depend on the event:
`--price-by tokens:model=large=per_unit:0.00003` (one line per model), `--filter tokens:region=eu,us`,
`--peak kwh=Europe/Berlin@8-19@1-5=per_unit:0.30` (local hours 8..19, Monday..Friday); and a plan
may have a minimum spend on usage per period, `--commitment 100`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from credits.invoice.v1 import invoice_pb2 as ipb
from google.protobuf.json_format import Parse, ParseError

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.prices import describe, parse_price
from creditctl.records import idempotency_option, key_for, pairs, record

INTERVALS = ("MONTHLY", "QUARTERLY", "YEARLY")
PRICE_HELP = ("METER=PRICE, repeatable; PRICE is per_unit:0.00001, flat:10.00, package:5.00/1000, "
              "graduated:1000@0.01,@0.005 or volume:1000@0.01,@0.008+5.00")


def _usage_rows(c: dict[str, Any]) -> list[dict[str, str]]:
    code = c["meter_code"]
    rows = [{"kind": "usage", "code": code, "price": describe(c.get("price", {}))}]
    for f in c.get("filters", []):
        rows.append({"kind": "filter", "code": code, "price": f"only {f['property']} in {', '.join(f['values'])}"})
    for d in c.get("dimension_prices", []):
        rows.append({"kind": "usage by property", "code": f"{code} {c['group_by']}={d['value']}",
                     "price": describe(d.get("price", {}))})
    if c.get("group_by") and not c.get("dimension_prices"):
        rows.append({"kind": "usage by property", "code": f"{code} {c['group_by']}=*", "price": "one line per value"})
    if "time_of_use" in c:
        t = c["time_of_use"]
        days = ",".join(str(d) for d in t.get("peak_days", [])) or "every day"
        hours = ",".join(str(h) for h in t.get("peak_hours", []))
        rows.append({"kind": "peak", "code": code, "price": f"{describe(t.get('peak_price', {}))} at hours "
                                                            f"{hours} on days {days} ({t['time_zone']})"})
    return rows


def price_rows(plan: dict[str, Any]) -> list[dict[str, str]]:
    """Every price of a plan as (kind, code, price) rows."""
    rows = [row for c in plan.get("usage_charges", []) for row in _usage_rows(c)]
    rows += [{"kind": "fixed fee", "code": f["code"], "price": f"{f['amount']} per period"}
             for f in plan.get("fixed_fees", [])]
    rows += [{"kind": "add-on", "code": a["code"], "price": f"{a['unit_amount']} per unit per period"}
             for a in plan.get("add_ons", [])]
    rows += [{"kind": "license", "code": x["code"], "price": f"{x['unit_amount']} per seat per period"}
             for x in plan.get("licenses", [])]
    if plan.get("minimum_commitment"):
        rows.append({"kind": "commitment", "code": "minimum_commitment",
                     "price": f"{plan['minimum_commitment']} of usage per period (true-up when short)"})
    return rows


def _print(plan: ipb.Plan, fmt: Format) -> int:
    r = record(plan)
    if fmt != Format.TABLE:
        emit_record(r, fmt, id_field="plan_id")
        return 0
    emit_record({k: r.get(k, "") for k in ("plan_id", "version", "name", "currency", "interval", "created_at")},
                fmt)
    click.echo()
    emit_rows(price_rows(r), ("kind", "code", "price"), fmt, empty="(no prices)")
    return 0


def _request_from_flags(plan_id: str, name: str, currency: str, interval: str, usage: tuple[str, ...],
                        fees: tuple[str, ...], add_ons: tuple[str, ...], licenses: tuple[str, ...]
                        ) -> ipb.CreatePlanRequest:
    request = ipb.CreatePlanRequest(plan_id=plan_id, name=name or plan_id, currency=currency,
                                    interval=ipb.BillingInterval.Value(interval.upper()))
    for meter, price in pairs(usage, "--usage"):
        try:
            request.usage_charges.append(ipb.UsageCharge(meter_code=meter, price=parse_price(price)))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--usage") from None
    request.fixed_fees.extend(ipb.FixedFee(code=c, name=c, amount=a) for c, a in pairs(fees, "--fee"))
    request.add_ons.extend(ipb.AddOn(code=c, name=c, unit_amount=a) for c, a in pairs(add_ons, "--add-on"))
    request.licenses.extend(ipb.License(code=c, name=c, unit_amount=a) for c, a in pairs(licenses, "--license"))
    return request


def _charge(request: ipb.CreatePlanRequest, meter: str, flag: str) -> ipb.UsageCharge:
    for c in request.usage_charges:
        if c.meter_code == meter:
            return c
    raise click.BadParameter(f"{meter!r} has no --usage price (the price of other values / off-peak)",
                             param_hint=flag)


def _price(text: str, flag: str) -> ipb.Price:
    try:
        return parse_price(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=flag) from None


def _numbers(text: str, flag: str) -> list[int]:
    """"8-19" or "1,3,5" (or both, comma-separated) as integers."""
    out: list[int] = []
    try:
        for part in text.split(","):
            low, dash, high = part.partition("-")
            out.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    except ValueError:
        raise click.BadParameter(f"{text!r}: use ranges and lists of whole numbers, e.g. 8-19 or 1,3,5",
                                 param_hint=flag) from None
    return out


def add_dimensions(request: ipb.CreatePlanRequest, price_by: tuple[str, ...], filters: tuple[str, ...],
                   peaks: tuple[str, ...], commitment: str) -> None:
    """--price-by METER:PROPERTY=VALUE=PRICE, --filter METER:PROPERTY=V1,V2,
    --peak METER=TIME_ZONE@HOURS[@DAYS]=PRICE and --commitment AMOUNT onto the request."""
    for text in price_by:
        meter, _, rest = text.partition(":")
        prop, _, value_price = rest.partition("=")
        value, _, price = value_price.partition("=")
        if not (meter and prop and value and price):
            raise click.BadParameter(f"{text!r}: use METER:PROPERTY=VALUE=PRICE", param_hint="--price-by")
        charge = _charge(request, meter, "--price-by")
        if charge.group_by not in ("", prop):
            raise click.BadParameter(f"{meter!r} is already priced by {charge.group_by!r}", param_hint="--price-by")
        charge.group_by = prop
        charge.dimension_prices.append(ipb.DimensionPrice(value=value, price=_price(price, "--price-by")))
    for text in filters:
        meter, _, rest = text.partition(":")
        prop, _, values = rest.partition("=")
        if not (meter and prop and values):
            raise click.BadParameter(f"{text!r}: use METER:PROPERTY=VALUE[,VALUE...]", param_hint="--filter")
        _charge(request, meter, "--filter").filters.append(ipb.PropertyFilter(property=prop,
                                                                              values=values.split(",")))
    for text in peaks:
        meter, _, rest = text.partition("=")
        window, _, price = rest.partition("=")
        zone, _, when = window.partition("@")
        hours, _, days = when.partition("@")
        if not (meter and zone and hours and price):
            raise click.BadParameter(f"{text!r}: use METER=TIME_ZONE@HOURS[@DAYS]=PRICE", param_hint="--peak")
        _charge(request, meter, "--peak").time_of_use.CopyFrom(ipb.TimeOfUse(
            time_zone=zone, peak_hours=_numbers(hours, "--peak"), peak_days=_numbers(days, "--peak") if days else [],
            peak_price=_price(price, "--peak")))
    request.minimum_commitment = commitment


@click.group("plans", cls=Group, help="plans: a currency, a billing interval and prices")
def command() -> None:
    pass


@command.command("create", help="create a plan with its prices (flags, or --file with the request as JSON)")
@click.argument("plan_id")
@click.option("--name", default="", help="default: the plan id")
@click.option("--currency", default="USD", show_default=True)
@click.option("--interval", type=click.Choice(INTERVALS, case_sensitive=False), default="MONTHLY", show_default=True)
@click.option("--usage", multiple=True, help=PRICE_HELP)
@click.option("--fee", "fees", multiple=True, help="CODE=AMOUNT per period, repeatable")
@click.option("--add-on", "add_ons", multiple=True, help="CODE=UNIT_AMOUNT per unit per period, repeatable")
@click.option("--license", "licenses", multiple=True, help="CODE=UNIT_AMOUNT per seat per period, repeatable")
@click.option("--price-by", "price_by", multiple=True,
              help="METER:PROPERTY=VALUE=PRICE: a price by event property, e.g. tokens:model=large=per_unit:0.00003")
@click.option("--filter", "filters", multiple=True, help="METER:PROPERTY=V1,V2: only such events count")
@click.option("--peak", "peaks", multiple=True,
              help="METER=TIME_ZONE@HOURS[@DAYS]=PRICE: peak price, e.g. kwh=Europe/Berlin@8-19@1-5=per_unit:0.30")
@click.option("--commitment", default="", help="minimum usage spend per period (a true-up line when short)")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CreatePlanRequest as JSON (its plan_id, if any, must be PLAN_ID)")
@idempotency_option
@format_options(quiet=True)
def create(plan_id: str, name: str, currency: str, interval: str, usage: tuple[str, ...], fees: tuple[str, ...],
           add_ons: tuple[str, ...], licenses: tuple[str, ...], price_by: tuple[str, ...], filters: tuple[str, ...],
           peaks: tuple[str, ...], commitment: str, file: Path | None, idempotency_key: str, fmt: Format) -> int:
    if file is not None:
        try:
            request = Parse(file.read_text(), ipb.CreatePlanRequest())
        except ParseError as err:
            raise click.BadParameter(f"{file}: {err}", param_hint="--file") from None
        if request.plan_id not in ("", plan_id):
            raise click.BadParameter(f"{file} is plan {request.plan_id!r}, not {plan_id!r}", param_hint="--file")
        request.plan_id = plan_id
    else:
        request = _request_from_flags(plan_id, name, currency, interval, usage, fees, add_ons, licenses)
        add_dimensions(request, price_by, filters, peaks, commitment)
    request.idempotency_key = key_for(idempotency_key or f"cli-plan-{plan_id}")
    return _print(rpc("invoice", "CreatePlan", request), fmt)


@command.command("show", help="one plan with its prices (its latest version, or --version)")
@click.argument("plan_id")
@click.option("--version", type=click.IntRange(0), default=0, help="0 = the latest")
@format_options()
def show(plan_id: str, version: int, fmt: Format) -> int:
    return _print(rpc("invoice", "GetPlan", ipb.GetPlanRequest(plan_id=plan_id, version=version)), fmt)


@command.command("versions", help="a plan's versions, oldest first (subscriptions stay on theirs until migrated)")
@click.argument("plan_id")
@format_options(csv_=True, quiet=True)
def versions(plan_id: str, fmt: Format) -> int:
    found = [record(v) for v in paged("invoice", "ListPlanVersions", ipb.ListPlanVersionsRequest(plan_id=plan_id),
                                      "versions")]
    if fmt == Format.JSON:
        emit_rows(found, (), fmt)
        return 0
    rows = [{"version": v["version"], "name": v["name"], "created_at": v.get("created_at", ""),
             "prices": "; ".join(f"{r['code']} {r['price']}" for r in price_rows(v))} for v in found]
    emit_rows(rows, ("version", "name", "created_at", "prices"), fmt, id_column="version")
    return 0


@command.command("version", help="edit a plan: its next version with these prices (subscriptions stay on "
                                 "theirs until migrated)")
@click.argument("plan_id")
@click.option("--name", default="", help="default: the plan id")
@click.option("--currency", default="USD", show_default=True, help="must be the plan's")
@click.option("--interval", type=click.Choice(INTERVALS, case_sensitive=False), default="MONTHLY", show_default=True,
              help="must be the plan's")
@click.option("--usage", multiple=True, help=PRICE_HELP)
@click.option("--fee", "fees", multiple=True, help="CODE=AMOUNT per period, repeatable")
@click.option("--add-on", "add_ons", multiple=True, help="CODE=UNIT_AMOUNT per unit per period, repeatable")
@click.option("--license", "licenses", multiple=True, help="CODE=UNIT_AMOUNT per seat per period, repeatable")
@idempotency_option
@format_options(quiet=True)
def version(plan_id: str, name: str, currency: str, interval: str, usage: tuple[str, ...], fees: tuple[str, ...],
            add_ons: tuple[str, ...], licenses: tuple[str, ...], idempotency_key: str, fmt: Format) -> int:
    request = _request_from_flags(plan_id, name, currency, interval, usage, fees, add_ons, licenses)
    request.idempotency_key = key_for(idempotency_key)
    return _print(rpc("invoice", "CreatePlanVersion", request), fmt)
