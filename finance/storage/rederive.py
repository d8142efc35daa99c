"""The books re-derived from the ledger journal from scratch and compared with what was projected.

`verify_books` checks the books against themselves (balanced, complete, per-lot exact); a line
moved to another customer, GL account or memo, or a pair of lines raised by the same amount, keeps
all of that true. This check does not trust the books at all: it replays the tenant's journal
through the pure derivation (`Books.apply`), batch by batch as the projector recorded them
(`finance_batches`, migration 0018: entry ids, rules version, closed periods), and compares every
journal line, every entry row, every lot's book and the day and money sums the reports read with
what is stored. A breakage rate estimated from history is recomputed from the replayed lots at
each batch's start, as the projector read it from the stored ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC
from typing import Any

import asyncpg

from finance.domain.books import Books, Line, LotBook
from finance.domain.reports import is_transfer
from finance.domain.rules import DEFAULT_RULES, Rules, estimated_rate, parse_rules
from finance.storage.projector import GRANTED_LOTS, PENDING, _book, _entry
from service_runtime.currencies import CURRENCY_SCALES

BATCHES = """
SELECT after_entry_id, upto_entry_id, rules_version, closed_through FROM finance_batches WHERE tenant_id = $1
ORDER BY upto_entry_id
"""
RULES = "SELECT version, rules FROM finance_rules WHERE tenant_id = $1"
CURSOR = "SELECT entry_id FROM finance_cursors WHERE tenant_id = $1"
UNCOVERED = """
SELECT count(*) FROM journal j WHERE j.tenant_id = $1 AND j.entry_id <= $2
AND NOT EXISTS (SELECT 1 FROM finance_batches b WHERE b.tenant_id = $1 AND j.entry_id > b.after_entry_id
                AND j.entry_id <= b.upto_entry_id)
"""
LINES = """
SELECT entry_id, line_no, posting_at, effective_at, gl_account, gl_code, debit, credit, currency, account_id, lot_id,
       lot_type, campaign_id, entry_kind, hold_key, reference, memo
FROM finance_lines WHERE tenant_id = $1 AND entry_id > $2 AND entry_id <= $3 ORDER BY entry_id, line_no
"""
ENTRIES = """
SELECT entry_id, kind, lot_id, account_id, units, money, effective_at, posting_at FROM finance_entries
WHERE tenant_id = $1 AND entry_id > $2 AND entry_id <= $3 ORDER BY entry_id
"""
ALL_LOTS = "SELECT * FROM finance_lots WHERE tenant_id = $1"
DAY_SUMS = """
SELECT day, account_id, lot_type, currency, gl_account, entry_kind, transfer, memo, breakage_method,
       debit, credit, lines FROM finance_day_sums WHERE tenant_id = $1
"""
MONEY_SUMS = """
SELECT day, account_id, lot_type, currency, paid, money_in, money_out FROM finance_money_sums WHERE tenant_id = $1
"""
MONEY_IN = frozenset({"GRANT", "REINSTATE"})
SHOWN = 20  # differences listed (all are counted)


@dataclass
class Rederivation:
    entries: int = 0
    lines: int = 0
    differences: int = 0
    violations: list[str] = field(default_factory=list)

    def differ(self, text: str) -> None:
        self.differences += 1
        if len(self.violations) < SHOWN:
            self.violations.append(text)


def _line_row(x: Line) -> tuple[Any, ...]:
    return (x.entry_id, x.line_no, x.posting_at, x.effective_at, x.gl.value, x.gl_code, x.debit, x.credit, x.currency,
            x.account_id, x.lot_id, x.lot_type, x.campaign_id, x.entry_kind, x.hold_key, x.reference, x.memo)


def _history(lots: Iterable[LotBook]) -> dict[str, Any]:
    """What the projector's HISTORY query reads, from the replayed lots."""
    sums: dict[str, list[int]] = {}
    for b in lots:
        if b.units_remaining == 0 and not b.origin_lot_id:
            acc = sums.setdefault(b.lot_type, [0, 0, 0])
            acc[0] += b.units_expired
            acc[1] += b.units_granted
            acc[2] += 1
    out = {}
    for lot_type, (expired, granted, count) in sums.items():
        rate = estimated_rate(expired, granted, count)
        if rate is not None:
            out[lot_type] = rate
    return out


@dataclass
class _Sums:
    days: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)
    money: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)

    def add(self, lines: list[Line], book: LotBook, kind: str, account_id: str, moved: int, day: Any) -> None:
        for x in lines:
            key = (day, x.account_id, x.lot_type, x.currency, x.gl.value, x.entry_kind, is_transfer(x.reference),
                   x.memo, book.method.value)
            acc = self.days.setdefault(key, [0, 0, 0])
            acc[0] += x.debit
            acc[1] += x.credit
            acc[2] += 1
        if moved:
            money = self.money.setdefault((day, account_id, book.lot_type, book.currency, book.paid), [0, 0])
            money[0 if kind in MONEY_IN else 1] += moved


async def rederive_books(conn: asyncpg.Connection, tenant_id: str) -> Rederivation:
    """Replays the tenant's projected journal from scratch; every difference from the stored books."""
    out = Rederivation()
    rules = {0: DEFAULT_RULES} | {r["version"]: parse_rules(r["rules"], r["version"])
                                  for r in await conn.fetch(RULES, tenant_id)}
    cursor = await conn.fetchval(CURSOR, tenant_id) or 0
    uncovered = await conn.fetchval(UNCOVERED, tenant_id, cursor)
    if uncovered:
        out.differ(f"{uncovered} projected ledger entries belong to no recorded batch: cannot re-derive them")
        return out
    books = Books(DEFAULT_RULES, dict(CURRENCY_SCALES))
    sums = _Sums()
    for batch in await conn.fetch(BATCHES, tenant_id):
        version = batch["rules_version"]
        if version not in rules:
            out.differ(f"batch up to entry {batch['upto_entry_id']}: rules version {version} is not stored")
            return out
        await _replay(conn, tenant_id, batch, rules[version], books, sums, out)
    await _compare_lots(conn, tenant_id, books, out)
    await _compare_sums(conn, tenant_id, sums, out)
    return out


async def _replay(conn: asyncpg.Connection, tenant_id: str, batch: Any, rules: Rules, books: Books, sums: _Sums,
                  out: Rederivation) -> None:
    after, upto, closed = batch["after_entry_id"], batch["upto_entry_id"], batch["closed_through"]
    books.rules = rules
    books.history = _history(books.lots.values()) if rules.estimates else {}
    rows = await conn.fetch(PENDING, tenant_id, after, upto)
    granted = {r["lot_id"]: r for r in await conn.fetch(
        GRANTED_LOTS, tenant_id, sorted({r["lot_id"] for r in rows if r["kind"] == "GRANT"}))}
    stored_lines = {(r["entry_id"], r["line_no"]): tuple(r) for r in await conn.fetch(LINES, tenant_id, after, upto)}
    stored_entries = {r["entry_id"]: tuple(r) for r in await conn.fetch(ENTRIES, tenant_id, after, upto)}
    for row in rows:
        entry, grant = _entry(row, granted, closed)
        lines = books.apply(entry, grant)
        book = books.lots[entry.lot_id]
        assert entry.posting_at is not None
        sums.add(lines, book, entry.kind, entry.account_id, books.moved, entry.posting_at.astimezone(UTC).date())
        want_entry = (entry.entry_id, entry.kind, entry.lot_id, entry.account_id, entry.amount, books.moved,
                      entry.effective_at, entry.posting_at)
        have_entry = stored_entries.pop(entry.entry_id, None)
        if have_entry != want_entry:
            out.differ(f"entry {entry.entry_id}: stored {have_entry}, re-derived {want_entry}")
        for x in lines:
            want = _line_row(x)
            have = stored_lines.pop((x.entry_id, x.line_no), None)
            if have != want:
                out.differ(f"entry {x.entry_id} line {x.line_no}: stored {have}, re-derived {want}")
        out.entries += 1
        out.lines += len(lines)
    for key in sorted(stored_lines):
        out.differ(f"entry {key[0]} line {key[1]}: stored {stored_lines[key]}, re-derived none")
    for eid in sorted(stored_entries):
        out.differ(f"entry {eid}: stored {stored_entries[eid]}, but the journal has no such entry of the tenant")


_LOT_FIELDS = [f.name for f in fields(LotBook)]


async def _compare_lots(conn: asyncpg.Connection, tenant_id: str, books: Books, out: Rederivation) -> None:
    stored = {r["lot_id"]: _book(r) for r in await conn.fetch(ALL_LOTS, tenant_id)}
    for lot_id in sorted(set(stored) | set(books.lots)):
        have, want = stored.get(lot_id), books.lots.get(lot_id)
        if have is None or want is None:
            out.differ(f"lot {lot_id}: {'stored' if want is None else 're-derived'} only")
            continue
        diff = [f"{n} {getattr(have, n)} != {getattr(want, n)}" for n in _LOT_FIELDS
                if getattr(have, n) != getattr(want, n)]
        if diff:
            out.differ(f"lot {lot_id}: stored vs re-derived: {', '.join(diff)}")


async def _compare_sums(conn: asyncpg.Connection, tenant_id: str, sums: _Sums, out: Rederivation) -> None:
    days = {tuple(r)[:9]: list(tuple(r)[9:]) for r in await conn.fetch(DAY_SUMS, tenant_id)}
    for key in sorted(set(days) | set(sums.days), key=str):
        if days.get(key, [0, 0, 0]) != sums.days.get(key, [0, 0, 0]):
            out.differ(f"day sum {key}: stored {days.get(key)}, re-derived {sums.days.get(key)}")
    money = {tuple(r)[:5]: list(tuple(r)[5:]) for r in await conn.fetch(MONEY_SUMS, tenant_id)}
    for key in sorted(set(money) | set(sums.money), key=str):
        if money.get(key, [0, 0]) != sums.money.get(key, [0, 0]):
            out.differ(f"money sum {key}: stored {money.get(key)}, re-derived {sums.money.get(key)}")
