"""The one catalog of money: ISO 4217 currencies and their minor-unit scales.

Every service reads scales from here and nowhere else:
- the ledger: each currency is a built-in unit of every tenant, with this scale
  (`ledger_service.storage.catalog.BUILTIN_UNITS`); `DefineUnit` refuses a currency code with
  another scale;
- the invoice service: a plan may be priced in exactly these currencies
  (`invoice_service.domain.money.currency_scale`), so it never bills in one the ledger cannot hold;
- the reconciler and `creditctl reconcile`: 3000 posted yen are 3000 applied yen, 1111 fils are
  1.111 KWD.

Active ISO 4217 codes with a minor unit (the list of the ISO 4217 maintenance agency). Left out:
fund and accounting codes (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW), precious metals, XDR
and the test codes, none of which an invoice is billed in.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

_NO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_TWO_DECIMALS = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF "
    "CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL "
    "HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP "
    "MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD "
    "SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS "
    "VES WST XCD YER ZAR ZMW ZWG"
)

CURRENCY_SCALES: Final = MappingProxyType({
    **{code: 2 for code in _TWO_DECIMALS.split()},
    **{code: 0 for code in _NO_DECIMALS.split()},
    **{code: 3 for code in _THREE_DECIMALS.split()},
})


def is_currency(code: str) -> bool:
    """Whether `code` is an ISO 4217 currency of the catalog (case-sensitive: "usd" is not)."""
    return code in CURRENCY_SCALES


def scale_of(code: str) -> int | None:
    """The ISO 4217 minor-unit scale of `code`, or None if it is not a currency of the catalog."""
    return CURRENCY_SCALES.get(code)
