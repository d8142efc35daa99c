"""What the finance reports say, from sums of journal lines. Pure.

Every report is a fold of journal lines (finance.domain.books) by the GL role they hit:

- recognized = REVENUE credits - debits (reversals count negative, in the period they post);
- breakage = BREAKAGE_REVENUE credits - debits (at expiry, plus the PROPORTIONAL advance);
- contra_revenue / promotional_expense / goodwill_expense = their debits - credits (free credit used);
- deferred (net) = DEFERRED_REVENUE credits - debits - (EXPECTED_BREAKAGE debits - credits);
  its movements: issued (purchases), transferred in/out (transfers, rollovers and their
  reversals), voided, and recognized + breakage.

The liability roll-forward of any interval holds by construction of the lines and is checked, to
the minor unit: opening + issued + transferred_in - transferred_out - recognized - breakage - voided
= closing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from finance.domain.rules import Gl

TRANSFER_REFERENCES = ("transfer/", "rollover/")


@dataclass
class Flows:
    """Sums of journal lines for one key (a period, customer, lot type, currency ...), minor units."""

    recognized: int = 0
    breakage: int = 0
    contra_revenue: int = 0
    promotional_expense: int = 0
    goodwill_expense: int = 0
    issued: int = 0
    transferred_in: int = 0
    transferred_out: int = 0
    voided: int = 0
    deferred: int = 0            # net change of deferred revenue (gross - expected breakage)
    expected_breakage: int = 0   # net change of the PROPORTIONAL advance (a contra-liability)

    def add(self, gl: Gl | str, entry_kind: str, transfer: bool, debit: int, credit: int) -> None:
        net_credit = credit - debit
        gl = Gl(gl)
        if gl is Gl.REVENUE:
            self.recognized += net_credit
        elif gl is Gl.BREAKAGE_REVENUE:
            self.breakage += net_credit
        elif gl is Gl.CONTRA_REVENUE:
            self.contra_revenue -= net_credit
        elif gl is Gl.PROMOTIONAL_EXPENSE:
            self.promotional_expense -= net_credit
        elif gl is Gl.GOODWILL_EXPENSE:
            self.goodwill_expense -= net_credit
        elif gl is Gl.EXPECTED_BREAKAGE:
            self.expected_breakage -= net_credit
            self.deferred += net_credit
        elif gl is Gl.DEFERRED_REVENUE:
            self.deferred += net_credit
            if entry_kind in ("GRANT", "REINSTATE") and transfer:
                self.transferred_in += net_credit
            elif entry_kind == "GRANT":
                self.issued += net_credit
            elif entry_kind == "TRANSFER_OUT":
                self.transferred_out -= net_credit
            elif entry_kind == "VOID":
                self.voided -= net_credit

    def plus(self, other: Flows) -> Flows:
        return Flows(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(Flows)})


def is_transfer(reference: str) -> bool:
    return reference.startswith(TRANSFER_REFERENCES)


@dataclass
class RollForward:
    """Deferred revenue (net of expected breakage) over [start, end), per currency."""

    currency: str
    opening: int
    flows: Flows
    closing: int

    @property
    def computed_closing(self) -> int:
        f = self.flows
        return (self.opening + f.issued + f.transferred_in - f.transferred_out - f.recognized - f.breakage
                - f.voided)

    @property
    def balanced(self) -> bool:
        return self.computed_closing == self.closing


@dataclass
class Liability:
    """What is owed as of an instant, per currency and lot type (and customer when asked)."""

    currency: str
    lot_type: str
    account_id: str = ""
    deferred_gross: int = 0       # DEFERRED_REVENUE balance of paid lots
    expected_breakage: int = 0    # PROPORTIONAL advance not yet trued up
    free_outstanding: int = 0     # face value of free credit still on lots (not a GL balance)
    lots_money_remaining: int = 0  # sum over paid lots of their remaining money, from their own entries

    @property
    def deferred_net(self) -> int:
        return self.deferred_gross - self.expected_breakage

    @property
    def matches_lots(self) -> bool:
        return self.deferred_gross == self.lots_money_remaining


@dataclass
class ProgramRow:
    """Issuance and use of one cohort (lot type, source, campaign, unit) of lots granted in the window."""

    lot_type: str
    source: str
    campaign_id: str
    unit: str
    currency: str
    lots: int = 0
    lots_redeemed: int = 0
    units_issued: int = 0
    units_consumed: int = 0
    units_expired: int = 0
    units_remaining: int = 0
    value_issued: int = 0
    median_time_to_consumption_s: float | None = None  # over consumption entries, each counted once
    weighted_median_time_to_consumption_s: float | None = None  # over consumed units: the median unit's
    weighted_mean_time_to_consumption_s: float | None = None  # over consumed units

    @staticmethod
    def _rate(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    @property
    def consumption_rate(self) -> float:
        return self._rate(self.units_consumed, self.units_issued)

    @property
    def breakage_rate(self) -> float:
        return self._rate(self.units_expired, self.units_issued)

    @property
    def redemption_rate(self) -> float:
        return self._rate(self.lots_redeemed, self.lots)
