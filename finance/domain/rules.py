"""Recognition rules as data, per tenant, with documented defaults (issue #12, SPEC §12). Pure.

A tenant's rules are one JSON document, versioned (`SetFinanceRules` stores a new version; the
books never change a rule in place). Each lot takes the rules of the version in force when its
GRANT is projected and keeps them (treatment, breakage method and rate, currency, value per unit):
replaying the journal therefore always derives the same lines, and a rule change applies to lots
granted after it.

Defaults (`DEFAULT_RULES`):
- a lot with a cost basis > 0 is **DEFERRED_REVENUE**: deferred at grant (amount * cost basis),
  recognized as revenue on consumption, whatever its type;
- a free lot (cost basis 0) is booked on consumption at face value, never as revenue:
  PROMOTIONAL → PROMOTIONAL_EXPENSE (marketing), COMPENSATORY → GOODWILL_EXPENSE, ROLLOVER and
  any other type → CONTRA_REVENUE (a free ROLLOVER lot follows its origin lot's type when known);
- breakage `AT_EXPIRY` for everything (`PROPORTIONAL` with an expected rate, configured or
  `estimate`d from the tenant's settled lots of the type, is chosen per tenant, lot type or
  campaign: campaign beats lot type beats the tenant default);
- the money of a lot is in its unit when the unit is an ISO 4217 currency (face value 1 per unit),
  else in `default_currency` with the face value configured per unit under `units` (0 if none:
  such free lots are counted in units by the program report but book no money);
- the chart of accounts (`chart`) maps each role to a GL code: 1100 cash/receivable, 2400 deferred
  revenue, 2410 expected breakage (contra-liability, PROPORTIONAL only), 2490 transfer clearing,
  4000 revenue, 4100 breakage revenue, 4900 contra-revenue, 6100 promotional expense, 6200
  goodwill expense, 7990 rounding.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from service_runtime.currencies import is_currency
from service_runtime.rejections import invalid


class Treatment(enum.StrEnum):
    DEFERRED_REVENUE = "DEFERRED_REVENUE"
    CONTRA_REVENUE = "CONTRA_REVENUE"
    PROMOTIONAL_EXPENSE = "PROMOTIONAL_EXPENSE"
    GOODWILL_EXPENSE = "GOODWILL_EXPENSE"


FREE_TREATMENTS = (Treatment.CONTRA_REVENUE, Treatment.PROMOTIONAL_EXPENSE, Treatment.GOODWILL_EXPENSE)


class BreakageMethod(enum.StrEnum):
    AT_EXPIRY = "AT_EXPIRY"
    PROPORTIONAL = "PROPORTIONAL"


class Gl(enum.StrEnum):
    """The roles of the chart of accounts; each tenant maps them to its own GL codes."""

    CASH_RECEIVABLE = "CASH_RECEIVABLE"
    DEFERRED_REVENUE = "DEFERRED_REVENUE"
    EXPECTED_BREAKAGE = "EXPECTED_BREAKAGE"
    TRANSFER_CLEARING = "TRANSFER_CLEARING"
    REVENUE = "REVENUE"
    BREAKAGE_REVENUE = "BREAKAGE_REVENUE"
    CONTRA_REVENUE = "CONTRA_REVENUE"
    PROMOTIONAL_EXPENSE = "PROMOTIONAL_EXPENSE"
    GOODWILL_EXPENSE = "GOODWILL_EXPENSE"
    ROUNDING = "ROUNDING"


DEFAULT_CHART: dict[Gl, str] = {
    Gl.CASH_RECEIVABLE: "1100", Gl.DEFERRED_REVENUE: "2400", Gl.EXPECTED_BREAKAGE: "2410",
    Gl.TRANSFER_CLEARING: "2490", Gl.REVENUE: "4000", Gl.BREAKAGE_REVENUE: "4100", Gl.CONTRA_REVENUE: "4900",
    Gl.PROMOTIONAL_EXPENSE: "6100", Gl.GOODWILL_EXPENSE: "6200", Gl.ROUNDING: "7990",
}

# Where a free lot's consumption is booked: the GL role of its treatment.
EXPENSE_OF: dict[Treatment, Gl] = {
    Treatment.CONTRA_REVENUE: Gl.CONTRA_REVENUE,
    Treatment.PROMOTIONAL_EXPENSE: Gl.PROMOTIONAL_EXPENSE,
    Treatment.GOODWILL_EXPENSE: Gl.GOODWILL_EXPENSE,
}

DEFAULT_FREE_TREATMENT: dict[str, Treatment] = {
    "PROMOTIONAL": Treatment.PROMOTIONAL_EXPENSE,
    "COMPENSATORY": Treatment.GOODWILL_EXPENSE,
}


@dataclass(frozen=True, slots=True)
class Breakage:
    """How a lot's breakage is recognized. `expected_rate` in [0, 1): the share of the lot expected
    never to be used (PROPORTIONAL only). `estimate`: take the rate from the tenant's own history
    instead -- units expired / units granted over its settled lots of the same type, once it has
    MIN_HISTORY_LOTS of them (until then `expected_rate`) -- frozen on each lot at its grant."""

    method: BreakageMethod = BreakageMethod.AT_EXPIRY
    expected_rate: Decimal = Decimal(0)
    estimate: bool = False


MIN_HISTORY_LOTS = 20
MAX_ESTIMATED_RATE = Decimal("0.95")


def estimated_rate(units_expired: int, units_granted: int, lots: int) -> Decimal | None:
    """The breakage rate a history shows (4 places, at most MAX_ESTIMATED_RATE); None if too short."""
    if lots < MIN_HISTORY_LOTS or units_granted <= 0:
        return None
    rate = (Decimal(units_expired) / Decimal(units_granted)).quantize(Decimal("0.0001"))
    return min(rate, MAX_ESTIMATED_RATE)


@dataclass(frozen=True, slots=True)
class UnitValue:
    """What one unit of a non-currency unit is worth: money `currency`, `face_value` per unit."""

    currency: str
    face_value: Decimal


@dataclass(frozen=True, slots=True)
class LotTerms:
    """What a lot keeps from the rules in force at its grant."""

    treatment: Treatment
    breakage: Breakage
    currency: str
    value_per_unit: Decimal  # cost basis (DEFERRED_REVENUE) or face value (free lots), in `currency`


@dataclass(frozen=True)
class Rules:
    version: int = 0
    default_currency: str = "USD"
    chart: dict[Gl, str] = field(default_factory=lambda: dict(DEFAULT_CHART))
    free_treatment: dict[str, Treatment] = field(default_factory=lambda: dict(DEFAULT_FREE_TREATMENT))
    breakage: Breakage = Breakage()
    breakage_by_lot_type: dict[str, Breakage] = field(default_factory=dict)
    breakage_by_campaign: dict[str, Breakage] = field(default_factory=dict)
    units: dict[str, UnitValue] = field(default_factory=dict)

    def breakage_for(self, lot_type: str, campaign_id: str) -> Breakage:
        """Campaign beats lot type beats the tenant default."""
        if campaign_id and campaign_id in self.breakage_by_campaign:
            return self.breakage_by_campaign[campaign_id]
        return self.breakage_by_lot_type.get(lot_type, self.breakage)

    def money_of(self, unit: str) -> UnitValue:
        if is_currency(unit):
            return UnitValue(unit, Decimal(1))
        return self.units.get(unit, UnitValue(self.default_currency, Decimal(0)))

    def terms(self, lot_type: str, campaign_id: str, unit: str, cost_basis: Decimal,
              origin_type: str = "", history: Mapping[str, Decimal] | None = None) -> LotTerms:
        """The terms a newly granted lot keeps for life (`history`: estimated rates by lot type)."""
        money = self.money_of(unit)
        breakage = self.breakage_for(lot_type, campaign_id)
        if breakage.method is BreakageMethod.PROPORTIONAL and breakage.estimate and history and lot_type in history:
            breakage = Breakage(breakage.method, history[lot_type], estimate=True)
        if cost_basis > 0:
            return LotTerms(Treatment.DEFERRED_REVENUE, breakage, money.currency, cost_basis)
        kind = origin_type if lot_type == "ROLLOVER" and origin_type else lot_type
        treatment = self.free_treatment.get(kind, Treatment.CONTRA_REVENUE)
        return LotTerms(treatment, breakage, money.currency, money.face_value)

    @property
    def estimates(self) -> bool:
        """Does any breakage rule take its rate from the tenant's history?"""
        rules = [self.breakage, *self.breakage_by_lot_type.values(), *self.breakage_by_campaign.values()]
        return any(b.estimate for b in rules)

    def code(self, gl: Gl) -> str:
        return self.chart.get(gl, DEFAULT_CHART[gl])

    @property
    def codes(self) -> dict[str, str]:
        """GL code by role value (the hot path of the projector: plain str keys hash fast)."""
        cached = self.__dict__.get("_codes")
        if cached is None:
            cached = {gl.value: self.code(gl) for gl in Gl}
            self.__dict__["_codes"] = cached
        return cached


DEFAULT_RULES = Rules()


# --- as data: JSON in, JSON out -------------------------------------------------------------------

def _short(value: Any) -> str:
    """A user's value as shown in a refusal: never the whole of a huge input."""
    text = str(value)
    return text if len(text) <= 32 else text[:32] + "..."


def _decimal(value: Any, where: str, *, lo: Decimal, hi: Decimal | None, hi_open: bool = False) -> Decimal:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise invalid(where, f"{_short(value)!r} is not a decimal number") from None
    if not d.is_finite() or d < lo or (hi is not None and (d >= hi if hi_open else d > hi)):
        raise invalid(where, f"{_short(value)} is out of range")
    return d


def _breakage(raw: Any, where: str) -> Breakage:
    if not isinstance(raw, Mapping):
        raise invalid(where, "must be an object with method and expected_rate")
    method_text = str(raw.get("method", "AT_EXPIRY")).upper()
    try:
        method = BreakageMethod(method_text)
    except ValueError:
        raise invalid(f"{where}.method", f"must be AT_EXPIRY or PROPORTIONAL, not {_short(method_text)!r}") from None
    rate = _decimal(raw.get("expected_rate", 0), f"{where}.expected_rate", lo=Decimal(0), hi=Decimal(1), hi_open=True)
    estimate = raw.get("estimate", False)
    if not isinstance(estimate, bool):
        raise invalid(f"{where}.estimate", "must be true or false")
    if method is BreakageMethod.AT_EXPIRY and (rate or estimate):
        raise invalid(f"{where}.expected_rate" if rate else f"{where}.estimate", "is only for PROPORTIONAL breakage")
    return Breakage(method, rate, estimate)


def _chart(raw: Any) -> dict[Gl, str]:
    if not isinstance(raw, Mapping):
        raise invalid("rules.chart", "must be an object of role -> GL code")
    chart = dict(DEFAULT_CHART)
    for role, code in raw.items():
        try:
            gl = Gl(str(role).upper())
        except ValueError:
            roles = ", ".join(g.value for g in Gl)
            raise invalid(f"rules.chart.{_short(role)}", f"unknown account role; one of {roles}") from None
        if not isinstance(code, str) or not code.strip() or len(code) > 32:
            raise invalid(f"rules.chart.{_short(role)}", "must be a GL code of 1-32 characters")
        chart[gl] = code.strip()
    return chart


def _free(raw: Any) -> dict[str, Treatment]:
    if not isinstance(raw, Mapping):
        raise invalid("rules.free_treatment", "must be an object of lot type -> treatment")
    out = dict(DEFAULT_FREE_TREATMENT)
    for lot_type, value in raw.items():
        try:
            t = Treatment(str(value).upper())
        except ValueError:
            t = Treatment.DEFERRED_REVENUE
        if t not in FREE_TREATMENTS:
            raise invalid(f"rules.free_treatment.{_short(lot_type)}",
                          "must be CONTRA_REVENUE, PROMOTIONAL_EXPENSE or GOODWILL_EXPENSE "
                          "(free credit is never revenue)")
        out[str(lot_type).upper()] = t
    return out


def _units(raw: Any, default_currency: str) -> dict[str, UnitValue]:
    if not isinstance(raw, Mapping):
        raise invalid("rules.units", "must be an object of unit -> {currency, face_value}")
    out = {}
    for unit, spec in raw.items():
        where = f"rules.units.{_short(unit)}"
        if not isinstance(spec, Mapping):
            raise invalid(where, "must be an object with currency and face_value")
        currency = str(spec.get("currency", default_currency))
        if not is_currency(currency):
            raise invalid(f"{where}.currency", f"{_short(currency)!r} is not an ISO 4217 currency")
        out[str(unit)] = UnitValue(currency, _decimal(spec.get("face_value", 0), f"{where}.face_value",
                                                      lo=Decimal(0), hi=Decimal(10) ** 9))
    return out


def parse_rules(text: str, version: int = 0) -> Rules:
    """Rules from their JSON document; unknown keys and bad values are INVALID_ARGUMENT naming the field."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise invalid("rules", f"is not JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(raw, Mapping):
        raise invalid("rules", "must be a JSON object")
    known = {"default_currency", "chart", "free_treatment", "breakage", "breakage_by_lot_type",
             "breakage_by_campaign", "units"}
    for key in raw:
        if key not in known:
            raise invalid(f"rules.{_short(key)}", f"unknown key; known: {', '.join(sorted(known))}")
    currency = str(raw.get("default_currency", "USD"))
    if not is_currency(currency):
        raise invalid("rules.default_currency", f"{_short(currency)!r} is not an ISO 4217 currency")
    by_type = raw.get("breakage_by_lot_type", {})
    by_campaign = raw.get("breakage_by_campaign", {})
    if not isinstance(by_type, Mapping) or not isinstance(by_campaign, Mapping):
        raise invalid("rules.breakage_by_lot_type", "breakage overrides must be objects")
    return Rules(
        version=version, default_currency=currency, chart=_chart(raw.get("chart", {})),
        free_treatment=_free(raw.get("free_treatment", {})),
        breakage=_breakage(raw.get("breakage", {}), "rules.breakage"),
        breakage_by_lot_type={str(k).upper(): _breakage(v, f"rules.breakage_by_lot_type.{_short(k)}")
                              for k, v in by_type.items()},
        breakage_by_campaign={str(k): _breakage(v, f"rules.breakage_by_campaign.{_short(k)}")
                              for k, v in by_campaign.items()},
        units=_units(raw.get("units", {}), currency),
    )


def _breakage_json(b: Breakage) -> dict[str, Any]:
    out: dict[str, Any] = {"method": b.method.value, "expected_rate": str(b.expected_rate)}
    if b.estimate:
        out["estimate"] = True
    return out


def rules_json(rules: Rules) -> str:
    """The full document (defaults spelled out), canonical: parse_rules(rules_json(r)) == r."""
    return json.dumps({
        "default_currency": rules.default_currency,
        "chart": {gl.value: code for gl, code in rules.chart.items()},
        "free_treatment": {k: v.value for k, v in sorted(rules.free_treatment.items())},
        "breakage": _breakage_json(rules.breakage),
        "breakage_by_lot_type": {k: _breakage_json(v) for k, v in sorted(rules.breakage_by_lot_type.items())},
        "breakage_by_campaign": {k: _breakage_json(v) for k, v in sorted(rules.breakage_by_campaign.items())},
        "units": {k: {"currency": v.currency, "face_value": str(v.face_value)} for k, v in sorted(rules.units.items())},
    }, sort_keys=True)
