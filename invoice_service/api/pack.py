"""Domain values -> response messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.domain.catalog import Customer, Meter, Plan, Subscription, SubscriptionPhase
from invoice_service.domain.discounts import Coupon, Redemption
from invoice_service.domain.invoices import ChargeKind, Component, InvoiceView, Piece, line_due
from invoice_service.domain.money import decimal_text, to_text
from invoice_service.domain.pricing import Price
from invoice_service.domain.taxes import TaxRule
from service_runtime.pages import encode_token
from service_runtime.proto_time import EPOCH
from service_runtime.proto_time import to_timestamp as ts

_KIND = {ChargeKind.USAGE: pb.USAGE, ChargeKind.ADD_ON: pb.ADD_ON, ChargeKind.FIXED_FEE: pb.FIXED_FEE,
         ChargeKind.LICENSE: pb.LICENSE}


def invoice_token(last: InvoiceView) -> str:
    """ListInvoices' next page: the cursor (created_at in microseconds, invoice_id) of the page's last row."""
    return encode_token((last.created_at - EPOCH) // timedelta(microseconds=1), last.invoice_id)


def customer(c: Customer) -> pb.Customer:
    out = pb.Customer(customer_id=c.customer_id, name=c.name, ledger_account_id=c.ledger_account_id,
                      tax_region=c.tax_region)
    if c.created_at:
        out.created_at.CopyFrom(ts(c.created_at))
    return out


def meter(m: Meter) -> pb.Meter:
    out = pb.Meter(meter_code=m.meter_code, name=m.name, aggregation=pb.Aggregation.Value(m.aggregation.value),
                   property=m.property, allow_negative=m.allow_negative, unit=m.unit)
    if m.created_at:
        out.created_at.CopyFrom(ts(m.created_at))
    return out


def _price(p: Price) -> pb.Price:
    return pb.Price(
        model=pb.PriceModel.Value(p.model.value), unit_amount=decimal_text(p.unit_amount),
        flat_amount=decimal_text(p.flat_amount), package_size=decimal_text(p.package_size),
        tiers=[pb.Tier(up_to="" if t.up_to is None else decimal_text(t.up_to),
                       unit_amount=decimal_text(t.unit_amount), flat_amount=decimal_text(t.flat_amount))
               for t in p.tiers])


def plan(p: Plan) -> pb.Plan:
    out = pb.Plan(plan_id=p.plan_id, name=p.name, currency=p.currency,
                  interval=pb.BillingInterval.Value(p.interval))
    for c in p.components:
        amount = decimal_text(c.amount)
        if c.kind is ChargeKind.USAGE:
            assert c.price is not None
            out.usage_charges.append(_usage_charge(c))
        elif c.kind is ChargeKind.COMMITMENT:
            out.minimum_commitment = amount
        elif c.kind is ChargeKind.FIXED_FEE:
            out.fixed_fees.append(pb.FixedFee(code=c.code, name=c.name, amount=amount))
        elif c.kind is ChargeKind.ADD_ON:
            out.add_ons.append(pb.AddOn(code=c.code, name=c.name, unit_amount=amount))
        else:
            out.licenses.append(pb.License(code=c.code, name=c.name, unit_amount=amount))
    if p.created_at:
        out.created_at.CopyFrom(ts(p.created_at))
    out.version = p.version
    return out


def _price_overrides(overrides: dict[str, Decimal | Price]) -> list[pb.PriceOverride]:
    return [pb.PriceOverride(code=k, price=_price(o)) if isinstance(o, Price)
            else pb.PriceOverride(code=k, amount=decimal_text(o)) for k, o in overrides.items()]


def _quantities(values: dict[str, int]) -> list[pb.Quantity]:
    return [pb.Quantity(code=k, quantity=v) for k, v in values.items()]


def phase(p: SubscriptionPhase) -> pb.SubscriptionPhase:
    out = pb.SubscriptionPhase(effective_at=ts(p.effective_at), plan_id=p.plan_id, plan_version=p.plan_version,
                               add_ons=_quantities(p.add_ons), licenses=_quantities(p.licenses),
                               price_overrides=_price_overrides(p.overrides))
    if p.created_at:
        out.created_at.CopyFrom(ts(p.created_at))
    return out


def _usage_charge(c: Component) -> pb.UsageCharge:
    assert c.price is not None
    out = pb.UsageCharge(meter_code=c.code, price=_price(c.price))
    d = c.dimensions
    if d is not None:
        out.group_by = d.group_by
        out.filters.extend(pb.PropertyFilter(property=k, values=list(v)) for k, v in d.filters)
        out.dimension_prices.extend(pb.DimensionPrice(value=v, price=_price(p)) for v, p in d.prices)
        if d.time_of_use is not None:
            t = d.time_of_use
            out.time_of_use.CopyFrom(pb.TimeOfUse(time_zone=t.time_zone, peak_hours=list(t.peak_hours),
                                                  peak_days=list(t.peak_days), peak_price=_price(t.peak_price)))
    return out


def tax_rule(r: TaxRule) -> pb.TaxRule:
    out = pb.TaxRule(region=r.region, name=r.name, rate=decimal_text(r.rate_percent), inclusive=r.inclusive)
    if r.updated_at:
        out.updated_at.CopyFrom(ts(r.updated_at))
    return out


def coupon(c: Coupon) -> pb.Coupon:
    out = pb.Coupon(coupon_code=c.coupon_code, name=c.name,
                    percent_off=decimal_text(c.percent_off) if c.percent_off is not None else "",
                    amount_off=decimal_text(c.amount_off) if c.amount_off is not None else "",
                    currency=c.currency, duration_periods=c.duration_periods, applies_to=c.applies_to)
    if c.created_at:
        out.created_at.CopyFrom(ts(c.created_at))
    return out


def redemption(r: Redemption) -> pb.CouponRedemption:
    out = pb.CouponRedemption(customer_id=r.customer_id, coupon=coupon(r.coupon), redeemed_at=ts(r.redeemed_at))
    if r.created_at:
        out.created_at.CopyFrom(ts(r.created_at))
    return out


def subscription(s: Subscription) -> pb.Subscription:
    out = pb.Subscription(
        subscription_id=s.subscription_id, customer_id=s.customer_id, plan_id=s.plan_id, anchor=ts(s.anchor),
        add_ons=_quantities(s.add_ons), licenses=_quantities(s.licenses),
        plan_version=s.plan_version, calendar_aligned=s.calendar_aligned,
        price_overrides=_price_overrides(s.overrides), phases=[phase(p) for p in s.phases])
    if s.created_at:
        out.created_at.CopyFrom(ts(s.created_at))
    for name, value in (("trial_end", s.trial_end), ("ends_at", s.ends_at), ("canceled_at", s.canceled_at)):
        if value is not None:
            getattr(out, name).CopyFrom(ts(value))
    return out


def charges(inv: InvoiceView) -> list[pb.Charge]:
    return pieces(inv.charges, inv)


def pieces(items: Sequence[Piece], inv: InvoiceView) -> list[pb.Charge]:
    return [pb.Charge(charge_id=p.charge_id, line_item_id=p.line_item_id, kind=_KIND[p.kind], name=p.name,
                      quantity=decimal_text(p.quantity), amount=to_text(p.amount_minor, inv.scale),
                      service_start=ts(p.service_start), service_end=ts(p.service_end))
            for p in items]


def unit_pieces(items: Sequence[Piece], inv: InvoiceView) -> list[pb.Charge]:
    """Unit charges: the piece's quantity in its meter's unit (no amount: a unit lot pays in units)."""
    units = {i.line_item_id: i.unit for i in inv.line_items}
    return [pb.Charge(charge_id=p.charge_id, line_item_id=p.line_item_id, kind=_KIND[p.kind], name=p.name,
                      quantity=decimal_text(p.quantity), unit=units[p.line_item_id],
                      service_start=ts(p.service_start), service_end=ts(p.service_end))
            for p in items]


def invoice(inv: InvoiceView) -> pb.Invoice:
    money = inv.scale
    credits, covered = inv.credits_by_line(), inv.units_by_line()
    out = pb.Invoice(
        invoice_id=inv.invoice_id, customer_id=inv.customer_id, ledger_account_id=inv.ledger_account_id,
        subscription_id=inv.subscription_id, plan_id=inv.plan_id, currency=inv.currency,
        status=pb.InvoiceStatus.Value(inv.status), number=inv.number, period_start=ts(inv.period_start),
        period_end=ts(inv.period_end), subtotal=to_text(inv.subtotal_minor, money),
        credits_applied=to_text(inv.credits_minor, money), amount_due=to_text(inv.amount_due_minor, money),
        split_at=[ts(t) for t in inv.split_at], draft_digest=inv.draft_digest, prepare_key=inv.prepare_key,
        created_at=ts(inv.created_at), computed_at=ts(inv.computed_at),
        line_items=[
            pb.LineItem(line_item_id=i.line_item_id, kind=_KIND[i.kind], code=i.code, description=i.description,
                        quantity=decimal_text(i.quantity), unit_price=decimal_text(i.unit_price),
                        amount=to_text(i.amount_minor, money), service_start=ts(i.service_start),
                        service_end=ts(i.service_end),
                        credits_applied=to_text(credits.get(i.line_item_id, 0), money),
                        amount_due=to_text(line_due(inv, i, credits.get(i.line_item_id, 0)), money), unit=i.unit,
                        units_covered=decimal_text(covered[i.line_item_id]) if i.line_item_id in covered else "",
                        variant=i.variant, discount=to_text(i.discount_minor, money),
                        discount_codes=list(i.discount_codes), tax=to_text(i.tax_minor, money))
            for i in inv.line_items],
        charges=charges(inv), credit_notes=list(inv.credit_notes), abandon_reason=inv.abandon_reason,
        discounts=to_text(inv.discount_minor, money), tax=to_text(inv.tax_minor, money),
        tax_region=inv.tax.region if inv.tax else "", tax_name=inv.tax.name if inv.tax else "",
        tax_rate=decimal_text(inv.tax.rate_percent) if inv.tax else "",
        tax_inclusive=inv.tax.inclusive if inv.tax else False,
        applications=[pb.CreditApplication(charge_id=a.charge_id, line_item_id=a.line_item_id, lot_id=a.lot_id,
                                           lot_type=a.lot_type, amount=to_text(a.amount_minor, money), unit=a.unit,
                                           units=decimal_text(a.units) if a.unit else "",
                                           rate=decimal_text(a.rate) if a.rate is not None else "",
                                           rate_version=a.rate_version)
                      for a in inv.applications],
    )
    for name in ("prepared_at", "finalized_at", "void_prepared_at", "voided_at", "abandoned_at"):
        value = getattr(inv, name)
        if value is not None:
            getattr(out, name).CopyFrom(ts(value))
    return out
