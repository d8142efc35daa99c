"""Taxes: one rule per tax region of a tenant (VAT, GST, sales tax), exclusive or inclusive.

The rule, per line item, after discounts and credits (README "Discounts, credits and taxes"):
  taxable = line amount - its discount - the credits applied to it
  exclusive (tax on top):      tax = round_half_up(taxable x rate / 100); amount due += tax
  inclusive (price includes it): tax = taxable - round_half_up(taxable / (1 + rate / 100));
                                 shown, not added (amount due already contains it)
each rounded once per line to the currency's minor unit; the invoice's tax is the sum of its lines'.
Every credit lowers the taxable amount: purchased (paid) credit was taxed when it was bought, so usage
it pays is not taxed again; promotional, compensatory and rollover credit is a price reduction, like
a discount. A customer without a tax region (or whose region has no rule) is not taxed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from invoice_service.domain.invoices import LineItem, TaxTerms
from invoice_service.domain.money import round_to_minor
from service_runtime.amounts import parse_decimal
from service_runtime.rejections import invalid

_HUNDRED = Decimal(100)


@dataclass(frozen=True)
class TaxRule:
    region: str
    name: str
    rate_percent: Decimal
    inclusive: bool
    updated_at: datetime | None = None

    @property
    def terms(self) -> TaxTerms:
        return TaxTerms(self.region, self.name, self.rate_percent, self.inclusive)


def parse_rate(text: str, field: str) -> Decimal:
    """A tax rate in percent: 0 <= rate <= 100, at most 4 decimals ("19", "7.7", "0")."""
    if not text.strip():
        raise invalid(field, "is required (percent, e.g. 19 for 19%)")
    rate = parse_decimal(text, field)
    if rate < 0 or rate > _HUNDRED or rate != rate.quantize(Decimal("0.0001")):
        raise invalid(field, "must be a percentage between 0 and 100 with at most 4 decimals")
    return rate


def tax_of(taxable_minor: int, terms: TaxTerms, scale: int) -> int:
    """The tax in `taxable_minor` (inclusive) or on top of it (exclusive), rounded half-up once."""
    if taxable_minor <= 0 or terms.rate_percent == 0:
        return 0
    amount = Decimal(taxable_minor).scaleb(-scale)
    rate = terms.rate_percent / _HUNDRED
    if terms.inclusive:
        return taxable_minor - round_to_minor(amount / (1 + rate), scale)
    return round_to_minor(amount * rate, scale)


def apply_tax(items: Sequence[LineItem], credits_by_line: Mapping[str, int], terms: TaxTerms | None,
              scale: int) -> list[LineItem]:
    """The line items with `tax_minor` set from what is left to pay on each after credits."""
    if terms is None:
        return [dataclasses.replace(i, tax_minor=0) for i in items]
    return [dataclasses.replace(i, tax_minor=tax_of(i.net_minor - credits_by_line.get(i.line_item_id, 0), terms,
                                                    scale))
            for i in items]
