"""Requests -> validated domain values. Every rejection names the offending field."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from credits.invoice.v1 import invoice_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from invoice_service.domain.catalog import Customer, Meter, Plan, Subscription
from invoice_service.domain.dimensions import Dimensions, TimeOfUse, check_time_zone
from invoice_service.domain.discounts import Coupon
from invoice_service.domain.invoices import QUANTITY_PATTERN, Aggregation, ChargeKind, Component
from invoice_service.domain.money import currency_scale
from invoice_service.domain.pricing import Price, PriceModel, TierInput, build_price
from invoice_service.domain.taxes import TaxRule, parse_rate
from invoice_service.storage.invoices import ApplicationIn
from invoice_service.storage.subscription_changes import Change
from invoice_service.storage.usage import EventIn, event_field
from service_runtime.amounts import parse_decimal
from service_runtime.currencies import is_currency
from service_runtime.free_text import check_text
from service_runtime.identifiers import ID_PATTERN, ID_RULE, check_id, is_id
from service_runtime.pages import decode_token
from service_runtime.proto_time import EPOCH, from_timestamp, to_microseconds
from service_runtime.rejections import invalid

MAX_BATCH = 10_000
MAX_PROPERTIES = 32
_INTERVALS = {pb.BILLING_INTERVAL_UNSPECIFIED: "MONTHLY", pb.MONTHLY: "MONTHLY", pb.QUARTERLY: "QUARTERLY",
              pb.YEARLY: "YEARLY"}
_LOT_TYPE_MAX = 32


def timestamp(ts: Timestamp, present: bool, field: str) -> datetime:
    if not present:
        raise invalid(field, "is required")
    return from_timestamp(ts, field)


def timestamps(values: Sequence[Timestamp], field: str) -> list[datetime]:
    return [timestamp(t, True, f"{field}[{i}]") for i, t in enumerate(values)]


def invoice_cursor(token: str) -> tuple[datetime, str] | None:
    """ListInvoices' page_token back to its cursor (created_at, invoice_id); see pack.invoice_token."""
    parts = decode_token(token, 2)
    if parts is None:
        return None
    micros, invoice_id = parts
    if not (micros.isascii() and micros.isdigit() and len(micros) <= 17) or not is_id(invoice_id):
        raise invalid("page_token", "is not a page token this service issued")
    return EPOCH + timedelta(microseconds=int(micros)), invoice_id


def customer(req: pb.CreateCustomerRequest) -> Customer:
    return Customer(check_id(req.customer_id, "customer_id"), check_text(req.name, "name"),
                    check_id(req.ledger_account_id, "ledger_account_id"))


def meter(req: pb.CreateMeterRequest) -> Meter:
    code = check_id(req.meter_code, "meter_code")
    if req.aggregation == pb.AGGREGATION_UNSPECIFIED or req.aggregation not in pb.Aggregation.values():
        raise invalid("aggregation", "is required (SUM, COUNT, MAX or UNIQUE_COUNT)")
    aggregation = Aggregation(pb.Aggregation.Name(req.aggregation))
    prop = req.property
    if prop:
        check_id(prop, "property")
    if aggregation is Aggregation.UNIQUE_COUNT and not prop:
        raise invalid("property", "a UNIQUE_COUNT meter counts distinct values of a property; name it")
    if aggregation is Aggregation.COUNT and prop:
        raise invalid("property", "a COUNT meter counts events and takes no property")
    if req.allow_negative and aggregation is not Aggregation.SUM:
        raise invalid("allow_negative", "only SUM meters may allow negative quantities")
    return Meter(code, check_text(req.name, "name") or code, aggregation, prop, req.allow_negative,
                 unit=usage_unit(req.unit, "unit", required=False))


def usage_unit(code: str, field: str, *, required: bool = True) -> str:
    """A ledger usage unit code (1-32 ASCII letters, digits or _, as DefineUnit takes), never money."""
    if not code and not required:
        return ""
    if not code or len(code) > 32 or not code.isascii() or not code.replace("_", "").isalnum():
        raise invalid(field, "must be a ledger unit code: 1-32 ASCII letters, digits or _ (e.g. compute_minute)")
    if is_currency(code):
        raise invalid(field, f"{code} is a currency; a meter counts usage in a usage unit (e.g. compute_minute)")
    return code


def plan(req: pb.CreatePlanRequest) -> Plan:
    plan_id = check_id(req.plan_id, "plan_id")
    currency_scale(req.currency, "currency")
    components: list[Component] = []
    seen: dict[str, str] = {}

    def unique(code: str, field: str) -> str:
        check_id(code, field)
        if code in seen:
            raise invalid(field, f"code {code!r} is used twice in the plan (also {seen[code]})")
        seen[code] = field
        return code

    for i, u in enumerate(req.usage_charges):
        field = f"usage_charges[{i}]"
        code = unique(u.meter_code, f"{field}.meter_code")
        components.append(Component(ChargeKind.USAGE, code, code, _price(u.price, u.HasField("price"),
                                                                         f"{field}.price"),
                                    dimensions=_dimensions(u, field)))
    groups = ((ChargeKind.FIXED_FEE, "fixed_fees", req.fixed_fees), (ChargeKind.ADD_ON, "add_ons", req.add_ons),
              (ChargeKind.LICENSE, "licenses", req.licenses))
    for kind, name, items in groups:
        for i, item in enumerate(items):
            field = f"{name}[{i}]"
            code = unique(item.code, f"{field}.code")
            amount_text = item.amount if isinstance(item, pb.FixedFee) else item.unit_amount
            amount_field = "amount" if isinstance(item, pb.FixedFee) else "unit_amount"
            if not amount_text.strip():
                raise invalid(f"{field}.{amount_field}", "is required")
            amount = parse_decimal(amount_text, f"{field}.{amount_field}")
            components.append(Component(kind, code, check_text(item.name, f"{field}.name") or code, None, amount))
    if req.minimum_commitment.strip():
        commitment = parse_decimal(req.minimum_commitment, "minimum_commitment")
        if commitment <= 0:
            raise invalid("minimum_commitment", "must be positive (or empty for none)")
        if not any(c.kind is ChargeKind.USAGE for c in components):
            raise invalid("minimum_commitment", "a commitment is a minimum spend on usage; the plan has no usage")
        code = unique("minimum_commitment", "minimum_commitment")
        components.append(Component(ChargeKind.COMMITMENT, code, "Minimum commitment", amount=commitment))
    if not components:
        raise invalid("usage_charges", "a plan needs at least one usage charge, fixed fee, add-on or license")
    return Plan(plan_id, check_text(req.name, "name") or plan_id, req.currency, _INTERVALS[req.interval],
                tuple(components))


def _price(p: pb.Price, present: bool, field: str) -> Price:
    if not present:
        raise invalid(field, "is required")
    model = None if p.model == pb.PRICE_MODEL_UNSPECIFIED else PriceModel(pb.PriceModel.Name(p.model))
    tiers = [TierInput(t.up_to, t.unit_amount, t.flat_amount) for t in p.tiers]
    return build_price(model, p.unit_amount, p.flat_amount, p.package_size, tiers, field)


def _quantities(items: Sequence[pb.Quantity], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, q in enumerate(items):
        code = check_id(q.code, f"{field}[{i}].code")
        if q.quantity < 0 or q.quantity > 10_000_000:
            raise invalid(f"{field}[{i}].quantity", "must be between 0 and 10,000,000")
        if code in out:
            raise invalid(f"{field}[{i}].code", f"{code!r} is listed twice")
        out[code] = q.quantity
    return out


def price_overrides(items: Sequence[pb.PriceOverride], field: str = "price_overrides") -> dict[str, Decimal | Price]:
    """Each override is an amount or a price (which one the plan's component decides, in storage)."""
    out: dict[str, Decimal | Price] = {}
    for i, o in enumerate(items):
        code = check_id(o.code, f"{field}[{i}].code")
        if code in out:
            raise invalid(f"{field}[{i}].code", f"{code!r} is listed twice")
        if o.HasField("price") == bool(o.amount.strip()):
            raise invalid(f"{field}[{i}]", "give either amount (fee, add-on, license) or price (usage)")
        if o.HasField("price"):
            out[code] = _price(o.price, True, f"{field}[{i}].price")
        else:
            amount = parse_decimal(o.amount, f"{field}[{i}].amount")
            if amount < 0:
                raise invalid(f"{field}[{i}].amount", "must not be negative")
            out[code] = amount
    return out


def subscription(req: pb.CreateSubscriptionRequest) -> Subscription:
    anchor = timestamp(req.anchor, req.HasField("anchor"), "anchor")
    trial_end = timestamp(req.trial_end, True, "trial_end") if req.HasField("trial_end") else None
    if trial_end is not None and trial_end <= anchor:
        raise invalid("trial_end", "must be after the anchor (the trial runs from the anchor to trial_end)")
    return Subscription(check_id(req.subscription_id, "subscription_id"), check_id(req.customer_id, "customer_id"),
                        check_id(req.plan_id, "plan_id"), anchor,
                        _quantities(req.add_ons, "add_ons"), _quantities(req.licenses, "licenses"),
                        trial_end=trial_end, calendar_aligned=req.calendar_aligned,
                        overrides=price_overrides(req.price_overrides))


def subscription_change(req: pb.UpdateSubscriptionRequest) -> Change:
    at = (timestamp(req.effective_at, True, "effective_at") if req.HasField("effective_at")
          else datetime.now(UTC))
    plan_id = check_id(req.plan_id, "plan_id") if req.plan_id else ""
    add_ons = _quantities(req.add_ons, "add_ons") if req.add_ons or req.replace_add_ons else None
    licenses = _quantities(req.licenses, "licenses") if req.licenses or req.replace_licenses else None
    overrides = (price_overrides(req.price_overrides) if req.price_overrides or req.replace_price_overrides
                 else None)
    if not plan_id and add_ons is None and licenses is None and overrides is None:
        raise invalid("plan_id", "nothing to change: give a plan, add-ons, licenses or price overrides")
    return Change(at, plan_id, add_ons, licenses, overrides)


def events(items: Sequence[pb.UsageEvent], clock_skew_s: int, field: str = "events") -> list[EventIn]:
    """Syntax checks of a batch, in one pass: this is the ingest hot path."""
    if not items:
        raise invalid(field, "at least one event is required")
    if len(items) > MAX_BATCH:
        raise invalid(field, f"at most {MAX_BATCH} events per batch")
    at = event_field(field, len(items))
    limit_us = time.time_ns() // 1000 + clock_skew_s * 1_000_000
    ids = ID_PATTERN.fullmatch
    qty_ok = QUANTITY_PATTERN.fullmatch
    out: list[EventIn] = []
    for i, e in enumerate(items):
        event_id, customer_id, meter_code = e.event_id, e.customer_id, e.meter_code
        if not ids(event_id):
            check_id(event_id, f"{at(i)}.event_id")
        if not ids(customer_id):
            check_id(customer_id, f"{at(i)}.customer_id")
        if not ids(meter_code):
            check_id(meter_code, f"{at(i)}.meter_code")
        quantity = e.quantity or "1"
        if not qty_ok(quantity):
            raise invalid(f"{at(i)}.quantity", f"must be a decimal with at most 9 places, got {quantity[:40]!r}")
        if not e.HasField("timestamp"):
            raise invalid(f"{at(i)}.timestamp", "is required")
        ts_us = to_microseconds(e.timestamp, f"{at(i)}.timestamp")
        if ts_us > limit_us:
            raise invalid(f"{at(i)}.timestamp", f"is more than {clock_skew_s}s in the future (clock skew bound)")
        props: dict[str, str] = {}
        props_json = None
        if e.properties:
            props = _properties(e.properties, f"{at(i)}.properties")
            props_json = json.dumps(props, separators=(",", ":"))
        out.append(EventIn(event_id, customer_id, meter_code, ts_us, quantity, props, props_json))
    return out


def _properties(props: object, field: str) -> dict[str, str]:
    d = dict(props)  # type: ignore[call-overload]
    if len(d) > MAX_PROPERTIES:
        raise invalid(field, f"at most {MAX_PROPERTIES} properties")
    for k, v in d.items():
        if not ID_PATTERN.fullmatch(k):
            raise invalid(field, f"property name {k[:40]!r} {ID_RULE}")
        if len(v) > 200:
            raise invalid(field, f"property {k!r} is longer than 200 characters")
    return d


def _rate(a: pb.CreditApplication, unit: str, field: str) -> tuple[Decimal | None, int]:
    """(rate, version) of a credit-unit application at a published rate; (None, 0) for the others."""
    if not a.rate_version and not a.rate:
        return None, 0
    if a.rate_version < 0 or not a.rate_version:
        raise invalid(f"{field}.rate_version", "must be the published rate's version (1, 2, ...)")
    if not unit:
        raise invalid(f"{field}.unit", "a conversion at a published rate names the lot's unit")
    rate = parse_decimal(a.rate, f"{field}.rate", max_places=12)
    if rate <= 0:
        raise invalid(f"{field}.rate", "must be positive (currency per unit)")
    return rate, int(a.rate_version)


def credit_notes(notes: Sequence[str]) -> list[str]:
    if len(notes) > 20:
        raise invalid("credit_notes", "at most 20 notes")
    return [check_text(n, f"credit_notes[{i}]", 300) for i, n in enumerate(notes)]


def applications(items: Sequence[pb.CreditApplication], field: str = "applications") -> list[ApplicationIn]:
    out: list[ApplicationIn] = []
    for i, a in enumerate(items):
        if not a.charge_id or len(a.charge_id) > 100:
            raise invalid(f"{field}[{i}].charge_id", "is required (at most 100 characters)")
        check_id(a.lot_id, f"{field}[{i}].lot_id")
        if not a.lot_type or len(a.lot_type) > _LOT_TYPE_MAX or not a.lot_type.replace("_", "").isalpha():
            raise invalid(f"{field}[{i}].lot_type", "must be a lot type name like PROMOTIONAL")
        unit = usage_unit(a.unit, f"{field}[{i}].unit", required=False)
        units = parse_decimal(a.units, f"{field}[{i}].units") if unit else Decimal(0)
        if unit and units <= 0:
            raise invalid(f"{field}[{i}].units", "an application in a unit gives a positive number of units")
        rate, version = _rate(a, unit, f"{field}[{i}]")
        out.append(ApplicationIn(a.charge_id, a.lot_id, a.lot_type.upper(), "" if unit else a.amount, unit, units,
                                 rate, version))
    return out


def _dimensions(u: pb.UsageCharge, field: str) -> Dimensions | None:
    """A usage charge's filters, group-by and time of use (domain/dimensions.py); None without any."""
    if not (u.group_by or u.filters or u.dimension_prices or u.HasField("time_of_use")):
        return None
    filters: dict[str, tuple[str, ...]] = {}
    for i, f in enumerate(u.filters):
        key = check_id(f.property, f"{field}.filters[{i}].property")
        if key in filters:
            raise invalid(f"{field}.filters[{i}].property", f"{key!r} is filtered twice")
        if not f.values:
            raise invalid(f"{field}.filters[{i}].values", "at least one value")
        filters[key] = tuple(check_text(v, f"{field}.filters[{i}].values") for v in f.values)
    group_by = check_id(u.group_by, f"{field}.group_by") if u.group_by else ""
    prices: list[tuple[str, Price]] = []
    for i, d in enumerate(u.dimension_prices):
        if not group_by:
            raise invalid(f"{field}.dimension_prices", "prices by value need group_by (the property)")
        value = check_text(d.value, f"{field}.dimension_prices[{i}].value")
        if value in dict(prices):
            raise invalid(f"{field}.dimension_prices[{i}].value", f"{value!r} is priced twice")
        prices.append((value, _price(d.price, d.HasField("price"), f"{field}.dimension_prices[{i}].price")))
    tou = None
    if u.HasField("time_of_use"):
        if group_by:
            raise invalid(f"{field}.time_of_use", "a usage charge is priced by group_by or by time of use, not both")
        tou = _time_of_use(u.time_of_use, f"{field}.time_of_use")
    return Dimensions(group_by, tuple(filters.items()), tuple(prices), tou)


def _time_of_use(t: pb.TimeOfUse, field: str) -> TimeOfUse:
    zone = check_time_zone(t.time_zone, f"{field}.time_zone")
    if not t.peak_hours:
        raise invalid(f"{field}.peak_hours", "at least one local hour (0-23)")
    for i, h in enumerate(t.peak_hours):
        if not 0 <= h <= 23:
            raise invalid(f"{field}.peak_hours[{i}]", "must be an hour 0-23")
    for i, d in enumerate(t.peak_days):
        if not 1 <= d <= 7:
            raise invalid(f"{field}.peak_days[{i}]", "must be an ISO weekday 1 (Monday) - 7 (Sunday)")
    return TimeOfUse(zone, tuple(sorted(set(t.peak_hours))), tuple(sorted(set(t.peak_days))),
                     _price(t.peak_price, t.HasField("peak_price"), f"{field}.peak_price"))


def tax_rule(req: pb.SetTaxRuleRequest) -> TaxRule:
    region = check_id(req.region, "region")
    return TaxRule(region, check_text(req.name, "name") or region, parse_rate(req.rate, "rate"), req.inclusive)


def coupon(c: pb.CreateCouponRequest) -> Coupon:
    code = check_id(c.coupon_code, "coupon_code")
    if bool(c.percent_off.strip()) == bool(c.amount_off.strip()):
        raise invalid("percent_off", "give exactly one of percent_off and amount_off")
    percent = amount = None
    currency = ""
    if c.percent_off.strip():
        percent = parse_decimal(c.percent_off, "percent_off")
        if not 0 < percent <= 100:
            raise invalid("percent_off", "must be above 0 and at most 100")
    else:
        amount = parse_decimal(c.amount_off, "amount_off")
        if amount <= 0:
            raise invalid("amount_off", "must be positive")
        scale = currency_scale(c.currency, "currency")
        if amount != amount.quantize(Decimal(1).scaleb(-scale)):
            raise invalid("amount_off", f"at most {scale} decimals in {c.currency}")
        currency = c.currency
    if c.duration_periods < 0 or c.duration_periods > 1200:
        raise invalid("duration_periods", "must be between 0 (forever) and 1200 periods")
    applies_to = check_id(c.applies_to, "applies_to") if c.applies_to else ""
    return Coupon(code, check_text(c.name, "name") or code, percent, amount, currency, c.duration_periods,
                  applies_to)
