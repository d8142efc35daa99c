"""Statements: an account's journal for a period as a customer reads it, and the check that it
reconciles with the ledger.

Two measures run through a statement, per unit, in minor units:

    balance   = available + held   (the credit the account still has)
    available = what it can still spend now

Each journal entry kind changes them by a fixed rule (`EFFECT`). Consecutive entries of one
movement (one hold's postings across lots, one reversal) form one line; a grant is one line per lot.

Invariant (checked for every statement; a failure is a bug, raised as `StatementMismatch`):

    per lot:  opening (journal before `from`) + movements in [from, to) = closing (the projection
              when `to` is now, else the journal before `to`)
    lines:    the first line starts from the opening balance and the last page's last running
              balance equals the closing balance.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from ledger_service.domain.journal import Entry, EntryKind
from ledger_service.domain.model import LotType


class StatementMismatch(AssertionError):
    """Opening + movements != closing: the statement does not reconcile with the ledger (a bug)."""


class Movement(enum.StrEnum):
    GRANT = "GRANT"
    CONSUMPTION = "CONSUMPTION"
    HOLD_PLACED = "HOLD_PLACED"
    HOLD_RELEASED = "HOLD_RELEASED"
    EXPIRATION = "EXPIRATION"
    VOID = "VOID"
    REVERSAL = "REVERSAL"
    TRANSFER_IN = "TRANSFER_IN"
    TRANSFER_OUT = "TRANSFER_OUT"


# kind -> (sign on balance, sign on available)
EFFECT: dict[EntryKind, tuple[int, int]] = {
    EntryKind.GRANT: (1, 1),
    EntryKind.REINSTATE: (1, 1),
    EntryKind.HOLD: (0, -1),
    EntryKind.RELEASE: (0, 1),
    EntryKind.POST: (-1, 0),
    EntryKind.DEBIT: (-1, -1),
    EntryKind.EXPIRE: (-1, -1),
    EntryKind.VOID: (-1, -1),
    EntryKind.TRANSFER_OUT: (-1, -1),
}
_MOVED_IN = ("transfer/", "rollover/")


def movement(kind: EntryKind, reference: str) -> Movement:
    """What a journal entry means to the customer."""
    if kind == EntryKind.GRANT:
        return Movement.TRANSFER_IN if reference.startswith(_MOVED_IN) else Movement.GRANT
    if kind == EntryKind.REINSTATE:
        return Movement.TRANSFER_IN if reference.startswith("transfer/") else Movement.REVERSAL
    return {
        EntryKind.HOLD: Movement.HOLD_PLACED, EntryKind.RELEASE: Movement.HOLD_RELEASED,
        EntryKind.POST: Movement.CONSUMPTION, EntryKind.DEBIT: Movement.CONSUMPTION,
        EntryKind.EXPIRE: Movement.EXPIRATION, EntryKind.VOID: Movement.VOID,
        EntryKind.TRANSFER_OUT: Movement.TRANSFER_OUT,
    }[kind]


@dataclass(frozen=True, slots=True)
class LotInfo:
    lot_id: str
    lot_type: LotType
    usable_until: datetime | None


@dataclass
class Position:
    """The two measures at one point."""

    balance: int = 0
    available: int = 0

    def apply(self, kind: EntryKind, amount: int) -> None:
        b, a = EFFECT[kind]
        self.balance += b * amount
        self.available += a * amount

    def copy(self) -> Position:
        return Position(self.balance, self.available)


@dataclass
class Line:
    movement: Movement
    recorded_at: datetime
    reference: str
    hold_key: str
    reason: str
    first_entry_id: int
    last_entry_id: int = 0
    change: Position = field(default_factory=Position)
    after: Position = field(default_factory=Position)
    lots: list[tuple[str, int]] = field(default_factory=list)  # (lot_id, amount) in entry order
    items: list[tuple[str, str, int]] = field(default_factory=list)  # (charge_id, name, amount)


def _group_key(e: Entry) -> tuple[object, ...]:
    move = movement(e.kind, e.reference)
    lot = e.lot_id if move in (Movement.GRANT, Movement.TRANSFER_IN) and not e.hold_key else ""
    return (move, e.hold_key, e.reference, e.reason, e.recorded_at, lot)


def group(entries: Sequence[Entry], start: Position) -> list[Line]:
    """Consecutive entries of one movement as one line each, with running positions from `start`."""
    running = start.copy()
    lines: list[Line] = []
    last_key: tuple[object, ...] | None = None
    for e in entries:
        key = _group_key(e)
        if key != last_key:
            lines.append(Line(movement(e.kind, e.reference), e.recorded_at, e.reference, e.hold_key, e.reason,
                              e.entry_id))
            last_key = key
        line = lines[-1]
        line.change.apply(e.kind, e.amount)
        running.apply(e.kind, e.amount)
        line.after = running.copy()
        line.last_entry_id = e.entry_id
        line.lots.append((e.lot_id, e.amount))
    return lines


def complete_groups(entries: list[Entry], fetched_all: bool) -> list[Entry]:
    """`entries` without a trailing group that may continue past them (kept when it is all there is)."""
    if fetched_all or not entries:
        return entries
    last = _group_key(entries[-1])
    cut = len(entries)
    while cut > 0 and _group_key(entries[cut - 1]) == last:
        cut -= 1
    return entries[:cut] if cut else entries


# --- per-lot positions and the reconciliation ---------------------------------------------------

def positions(sums: Iterable[tuple[str, EntryKind, int]]) -> dict[str, Position]:
    """(lot_id, kind, summed amount) rows → each lot's position."""
    out: dict[str, Position] = {}
    for lot_id, kind, amount in sums:
        out.setdefault(lot_id, Position()).apply(kind, amount)
    return out


def flows(sums: Iterable[tuple[str, EntryKind, int]]) -> dict[str, tuple[int, int]]:
    """(lot_id, kind, amount) rows of a period → each lot's (credits in, credits out) of the balance."""
    out: dict[str, tuple[int, int]] = {}
    for lot_id, kind, amount in sums:
        sign = EFFECT[kind][0]
        got_in, got_out = out.get(lot_id, (0, 0))
        out[lot_id] = (got_in + amount, got_out) if sign > 0 else (got_in, got_out + amount) if sign < 0 \
            else (got_in, got_out)
    return out


def reconcile(opening: dict[str, Position], period: dict[str, Position], closing: dict[str, Position]) -> None:
    """Raises StatementMismatch unless, for every lot, opening + period = closing."""
    for lot_id in sorted(set(opening) | set(period) | set(closing)):
        o, p, c = (d.get(lot_id, Position()) for d in (opening, period, closing))
        if (o.balance + p.balance, o.available + p.available) != (c.balance, c.available):
            raise StatementMismatch(
                f"lot {lot_id}: opening {o} + movements {p} != closing {c} as the ledger records it")


def total(by_lot: dict[str, Position], lots: Iterable[str] | None = None) -> Position:
    out = Position()
    for lot_id, p in by_lot.items():
        if lots is None or lot_id in lots:
            out.balance += p.balance
            out.available += p.available
    return out


@dataclass(frozen=True, slots=True)
class TypeTotals:
    lot_type: LotType
    opening: int
    credits_in: int
    credits_out: int
    closing: int
    closing_available: int


def by_type(lots: dict[str, LotInfo], opening: dict[str, Position], period_flows: dict[str, tuple[int, int]],
            closing: dict[str, Position]) -> list[TypeTotals]:
    """The statement's totals per lot type (types with any credit in the period or at either end)."""
    acc: dict[LotType, list[int]] = {}
    for lot_id, info in lots.items():
        o, c = opening.get(lot_id, Position()), closing.get(lot_id, Position())
        got_in, got_out = period_flows.get(lot_id, (0, 0))
        row = acc.setdefault(info.lot_type, [0, 0, 0, 0, 0])
        for i, v in enumerate((o.balance, got_in, got_out, c.balance, c.available)):
            row[i] += v
    return [TypeTotals(t, *v) for t, v in sorted(acc.items(), key=lambda kv: kv[0].value) if any(v)]


def expiry_timeline(lots: dict[str, LotInfo], closing: dict[str, Position]) -> list[tuple[datetime, str, LotType, int]]:
    """What expires when: lots with unused credit at the period's end and an end to their window."""
    out = [(info.usable_until, lot_id, info.lot_type, closing[lot_id].balance)
           for lot_id, info in lots.items()
           if info.usable_until is not None and lot_id in closing and closing[lot_id].balance > 0]
    return sorted(out, key=lambda t: (t[0], t[1]))


def days_until_depletion(available: int, consumed: int, trailing_days: int) -> Decimal | None:
    """available / (consumed per day over the trailing window), one decimal; None without consumption."""
    if consumed <= 0:
        return None
    days = Decimal(max(available, 0)) * trailing_days / Decimal(consumed)
    return days.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
