"""Ledger journal entries → balanced double-entry journal lines, per lot, exactly. Pure.

Each lot keeps a small book (`LotBook`): its money at grant `deferred_at_grant` (amount * cost basis
for a paid lot, amount * face value for a free one, in minor units of the lot's money currency,
rounded half-up once), its units `units_granted`, and the units still on it `units_remaining`
(available + held, pending expiry included). Rounding rule: the money still on a lot is always

    money_remaining = round_half_up(deferred_at_grant * units_remaining / units_granted)

so a movement of u units carries `money(R) - money(R +/- u)`: the pieces of a lot sum exactly to
its money at grant, and the liability of a lot is a function of its remaining units alone.

Invariants (checked by `tests/finance/test_books.py` on seeded random histories, and by
`creditctl reconcile`):
- every entry's lines balance: Σ debit = Σ credit, per currency, in integers;
- per lot: deferred_at_grant = recognized + breakage + still_deferred + transferred_out + voided,
  to the minor unit (still_deferred = money_remaining - advance);
- both breakage methods end equal once a lot has nothing left: PROPORTIONAL recognizes an
  advance (expected rate r: advance = revenue * r / (1 - r), never more than what is still
  deferred) and the clamp trues it up to the actual breakage when the lot settles.

Which lines each ledger kind makes (paid lots; free lots book only consumption, at face value):

    GRANT (purchase)         Dr CASH_RECEIVABLE     Cr DEFERRED_REVENUE
    GRANT (transfer, roll)   Dr TRANSFER_CLEARING   Cr DEFERRED_REVENUE    (the money the source gave)
    POST / DEBIT             Dr DEFERRED_REVENUE    Cr REVENUE             (free: Dr expense/contra, Cr CASH_RECEIVABLE)
    REINSTATE (hold reverse) Dr REVENUE             Cr DEFERRED_REVENUE    (an offsetting line, never an edit)
    REINSTATE (transfer rev) Dr TRANSFER_CLEARING   Cr DEFERRED_REVENUE    (+ ROUNDING for a 1-minor difference)
    EXPIRE                   Dr DEFERRED_REVENUE    Cr BREAKAGE_REVENUE
    VOID                     Dr DEFERRED_REVENUE    Cr CASH_RECEIVABLE     (grant cancelled / refunded)
    TRANSFER_OUT             Dr DEFERRED_REVENUE    Cr TRANSFER_CLEARING
    HOLD / RELEASE           nothing (still deferred)
    PROPORTIONAL advance Δ   Dr EXPECTED_BREAKAGE   Cr BREAKAGE_REVENUE    (or the reverse when it shrinks)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from finance.domain.rules import EXPENSE_OF, Breakage, BreakageMethod, Gl, LotTerms, Rules, Treatment

CONSUMING = frozenset({"POST", "DEBIT"})
Posting = tuple[Gl, int, int, str]  # one line as the books decide it: GL account, debit, credit, memo
TRANSFER_PREFIXES = ("transfer/", "rollover/")


def round_half_up(x: Fraction) -> int:
    """Half away from zero, exactly."""
    if x < 0:
        return -round_half_up(-x)
    return int((x * 2 + 1) // 2)


def money_at_grant(units: int, unit_scale: int, value_per_unit: Decimal, currency_scale: int) -> int:
    """units (minor of the lot's unit) * value per major unit → minor units of the currency, half-up."""
    return round_half_up(Fraction(units) * Fraction(value_per_unit) * 10**currency_scale / 10**unit_scale)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What the books read of one ledger journal entry."""

    entry_id: int
    kind: str
    lot_id: str
    account_id: str
    amount: int  # units moved, > 0
    effective_at: datetime
    recorded_at: datetime
    reference: str = ""
    hold_key: str = ""
    reason: str = ""
    posting_at: datetime | None = None  # the instant (period) its lines post at: set by the projector


@dataclass(frozen=True, slots=True)
class LotGrant:
    """What the books need to know about a lot when its GRANT arrives."""

    lot_id: str
    account_id: str
    lot_type: str
    unit: str
    unit_scale: int
    amount: int
    cost_basis: Decimal
    campaign_id: str = ""
    source: str = ""
    origin_lot_id: str = ""
    origin_type: str = ""


@dataclass(slots=True)
class LotBook:
    lot_id: str
    account_id: str
    lot_type: str
    campaign_id: str
    source: str
    origin_lot_id: str
    currency: str
    treatment: Treatment
    method: BreakageMethod
    expected_rate: Decimal
    rules_version: int
    granted_at: datetime
    deferred_at_grant: int
    units_granted: int
    units_remaining: int
    recognized: int = 0        # revenue (paid) or face value consumed (free), net of reversals
    breakage: int = 0          # expired money + the PROPORTIONAL advance
    advance: int = 0           # PROPORTIONAL breakage recognized ahead of expiry
    transferred_out: int = 0   # net of transfer reversals
    voided: int = 0
    units_consumed: int = 0    # net of reversals
    units_expired: int = 0
    first_consumed_at: datetime | None = None
    unit: str = ""

    @property
    def paid(self) -> bool:
        return self.treatment is Treatment.DEFERRED_REVENUE

    def money(self, units_remaining: int) -> int:
        n, d = self.deferred_at_grant * units_remaining, self.units_granted
        return (2 * n + d) // (2 * d) if n >= 0 else -((-2 * n + d) // (2 * d))  # round_half_up(n / d)

    @property
    def money_remaining(self) -> int:
        return self.money(self.units_remaining)

    @property
    def still_deferred(self) -> int:
        return self.money_remaining - self.advance

    def violations(self) -> list[str]:
        total = self.recognized + self.breakage + self.still_deferred + self.transferred_out + self.voided
        out = []
        if total != self.deferred_at_grant:
            out.append(f"lot {self.lot_id}: deferred at grant {self.deferred_at_grant} != recognized {self.recognized}"
                       f" + breakage {self.breakage} + still deferred {self.still_deferred}"
                       f" + transferred out {self.transferred_out} + voided {self.voided}")
        if not 0 <= self.units_remaining <= self.units_granted:
            out.append(f"lot {self.lot_id}: units remaining {self.units_remaining} outside [0, {self.units_granted}]")
        if not 0 <= self.advance <= self.money_remaining:
            out.append(f"lot {self.lot_id}: advance {self.advance} outside [0, {self.money_remaining}]")
        return out


@dataclass(frozen=True, slots=True)
class Line:
    """One journal line. `debit` xor `credit` is > 0 (minor units of `currency`)."""

    entry_id: int
    line_no: int
    gl: Gl
    gl_code: str
    debit: int
    credit: int
    currency: str
    account_id: str
    lot_id: str
    lot_type: str
    campaign_id: str
    entry_kind: str
    hold_key: str
    reference: str
    effective_at: datetime
    recorded_at: datetime
    memo: str
    posting_at: datetime | None = None  # the instant (period) it posts at: its entry's


@dataclass(frozen=True, slots=True)
class TransferMoney:
    """Money that left `from_lot_id` by TRANSFER_OUT under `reference`, waiting for its other leg."""

    from_origin_lot_id: str
    units: int
    money: int


@dataclass
class Books:
    """The books of one tenant: lot books, transfer legs in flight. `apply` is the whole derivation."""

    rules: Rules
    currency_scales: dict[str, int]
    lots: dict[str, LotBook] = field(default_factory=dict)
    transfers: dict[tuple[str, str], TransferMoney] = field(default_factory=dict)  # (reference, from lot)
    moved: int = 0  # the money the last applied entry moved (a GRANT: the lot's money at grant)
    history: dict[str, Decimal] = field(default_factory=dict)  # estimated breakage rates by lot type

    def open_lot(self, entry: LedgerEntry, grant: LotGrant, terms: LotTerms, incoming: int | None) -> LotBook:
        scale = self.currency_scales.get(terms.currency, 2)
        money = incoming if incoming is not None else money_at_grant(
            grant.amount, grant.unit_scale, terms.value_per_unit, scale)
        book = LotBook(grant.lot_id, grant.account_id, grant.lot_type, grant.campaign_id, grant.source,
                       grant.origin_lot_id, terms.currency, terms.treatment, terms.breakage.method,
                       terms.breakage.expected_rate, self.rules.version, entry.effective_at, money, grant.amount, 0,
                       unit=grant.unit)
        self.lots[book.lot_id] = book
        return book

    def apply(self, entry: LedgerEntry, grant: LotGrant | None = None) -> list[Line]:
        """The lines of one ledger entry (a GRANT needs the lot's `grant`), updating the lot's book."""
        return self._derive(entry, grant).lines

    def postings(self, entry: LedgerEntry, grant: LotGrant | None = None) -> list[Posting]:
        """What `apply` decides, without the columns a line repeats of its entry and lot: (GL account,
        debit, credit, memo) per line, in line order (line_no = position + 1). The same derivation."""
        return self._derive(entry, grant).rows

    def _derive(self, entry: LedgerEntry, grant: LotGrant | None) -> _Pen:
        pen = _Pen(self.rules, entry)
        self.moved = 0
        if entry.kind == "GRANT":
            assert grant is not None, "a GRANT needs its lot"
            self._grant(entry, grant, pen)
            self.moved = self.lots[grant.lot_id].deferred_at_grant
            return pen
        book = self.lots[entry.lot_id]
        pen.book = book
        before = book.units_remaining
        if entry.kind in ("HOLD", "RELEASE"):
            return pen
        if entry.kind in CONSUMING or entry.kind in ("EXPIRE", "VOID", "TRANSFER_OUT"):
            book.units_remaining = before - entry.amount
            self.moved = book.money(before) - book.money(book.units_remaining)
            self._out(entry, book, self.moved, pen)
        elif entry.kind == "REINSTATE":
            book.units_remaining = before + entry.amount
            self.moved = book.money(book.units_remaining) - book.money(before)
            self._back(entry, book, self.moved, pen)
        else:
            raise ValueError(f"unknown ledger entry kind {entry.kind!r}")
        self._true_up(book, pen)
        return pen

    def _grant(self, entry: LedgerEntry, grant: LotGrant, pen: _Pen) -> None:
        incoming = None
        if grant.origin_lot_id and entry.reference.startswith(TRANSFER_PREFIXES):
            leg = self.transfers.pop((entry.reference, grant.origin_lot_id), None)
            incoming = leg.money if leg is not None else None
        terms = self.rules.terms(grant.lot_type, grant.campaign_id, grant.unit, grant.cost_basis, grant.origin_type,
                                 self.history)
        if incoming is not None and grant.origin_lot_id in self.lots:
            origin = self.lots[grant.origin_lot_id]  # a copy keeps the source's terms, money included
            terms = LotTerms(origin.treatment, Breakage(origin.method, origin.expected_rate), origin.currency,
                             terms.value_per_unit)
        book = self.open_lot(entry, grant, terms, incoming)
        book.units_remaining = entry.amount
        pen.book = book
        if book.paid and book.deferred_at_grant:
            source = Gl.TRANSFER_CLEARING if incoming is not None else Gl.CASH_RECEIVABLE
            pen.pair(source, Gl.DEFERRED_REVENUE, book.deferred_at_grant, "transfer in" if incoming is not None
                     else "purchase deferred")

    def _out(self, entry: LedgerEntry, book: LotBook, money: int, pen: _Pen) -> None:
        kind = entry.kind
        if kind in CONSUMING:
            book.recognized += money
            book.units_consumed += entry.amount
            if book.first_consumed_at is None:
                book.first_consumed_at = entry.effective_at
            if book.paid:
                pen.pair(Gl.DEFERRED_REVENUE, Gl.REVENUE, money, "revenue recognized")
            else:
                pen.pair(EXPENSE_OF[book.treatment], Gl.CASH_RECEIVABLE, money, "free credit consumed at face value")
        elif kind == "EXPIRE":
            book.breakage += money
            book.units_expired += entry.amount
            if book.paid:
                pen.pair(Gl.DEFERRED_REVENUE, Gl.BREAKAGE_REVENUE, money, "breakage at expiry")
        elif kind == "VOID":
            book.voided += money
            if book.paid:
                pen.pair(Gl.DEFERRED_REVENUE, Gl.CASH_RECEIVABLE, money, "grant voided")
        else:  # TRANSFER_OUT
            book.transferred_out += money
            self.transfers[(entry.reference, book.lot_id)] = TransferMoney(book.origin_lot_id, entry.amount, money)
            if book.paid:
                pen.pair(Gl.DEFERRED_REVENUE, Gl.TRANSFER_CLEARING, money, "transfer out")

    def _back(self, entry: LedgerEntry, book: LotBook, money: int, pen: _Pen) -> None:
        if entry.reference.startswith("transfer/") and not entry.hold_key:
            leg_key = next((k for k, leg in self.transfers.items()
                            if k[0] == entry.reference and leg.from_origin_lot_id == book.lot_id), None)
            leg = self.transfers.pop(leg_key) if leg_key is not None else None
            book.transferred_out -= money
            if book.paid:
                given = leg.money if leg is not None else money
                pen.line(Gl.TRANSFER_CLEARING, given, 0, "transfer reversed")
                pen.line(Gl.DEFERRED_REVENUE, 0, money, "transfer reversed")
                if given != money:
                    pen.line(Gl.ROUNDING, max(money - given, 0), max(given - money, 0), "transfer reversal rounding")
            return
        book.recognized -= money
        book.units_consumed -= entry.amount
        if book.paid:
            pen.pair(Gl.REVENUE, Gl.DEFERRED_REVENUE, money, "revenue reversed")
        else:
            pen.pair(Gl.CASH_RECEIVABLE, EXPENSE_OF[book.treatment], money, "free credit consumption reversed")

    def _true_up(self, book: LotBook, pen: _Pen) -> None:
        """PROPORTIONAL: keep the advance at revenue * r/(1-r), within [0, money still on the lot]."""
        if not book.paid or book.method is not BreakageMethod.PROPORTIONAL:
            return
        rate = Fraction(book.expected_rate)
        target = round_half_up(Fraction(max(book.recognized, 0)) * rate / (1 - rate))
        target = max(0, min(target, book.money_remaining))
        delta = target - book.advance
        if delta == 0:
            return
        book.advance = target
        book.breakage += delta
        if delta > 0:
            pen.pair(Gl.EXPECTED_BREAKAGE, Gl.BREAKAGE_REVENUE, delta, "expected breakage (proportional)")
        else:
            pen.pair(Gl.BREAKAGE_REVENUE, Gl.EXPECTED_BREAKAGE, -delta, "expected breakage trued up")


class _Pen:
    """Writes the lines of one entry, numbered from 1, each pair balanced: as postings, made into
    `Line`s only when asked (the projector's set-wise path sends postings and lets the database
    join in the rest)."""

    def __init__(self, rules: Rules, entry: LedgerEntry) -> None:
        self.rules = rules
        self.entry = entry
        self.book: LotBook | None = None
        self.rows: list[Posting] = []

    def line(self, gl: Gl, debit: int, credit: int, memo: str) -> None:
        if debit == 0 and credit == 0:
            return
        assert self.book is not None
        self.rows.append((gl, debit, credit, memo))

    @property
    def lines(self) -> list[Line]:
        b, e, codes = self.book, self.entry, self.rules.codes
        if b is None:
            return []
        return [Line(e.entry_id, n, gl, codes[gl.value], debit, credit, b.currency, b.account_id, b.lot_id, b.lot_type,
                     b.campaign_id, e.kind, e.hold_key, e.reference, e.effective_at, e.recorded_at, memo, e.posting_at)
                for n, (gl, debit, credit, memo) in enumerate(self.rows, 1)]

    def pair(self, debit_gl: Gl, credit_gl: Gl, amount: int, memo: str) -> None:
        if amount < 0:
            debit_gl, credit_gl, amount = credit_gl, debit_gl, -amount
        if amount:
            self.line(debit_gl, amount, 0, memo)
            self.line(credit_gl, 0, amount, memo)


def unbalanced(lines: list[Line]) -> dict[tuple[int, str], int]:
    """(entry id, currency) → debits - credits, for every entry that does not balance."""
    sums: dict[tuple[int, str], int] = {}
    for x in lines:
        sums[(x.entry_id, x.currency)] = sums.get((x.entry_id, x.currency), 0) + x.debit - x.credit
    return {k: v for k, v in sums.items() if v}
