"""The books checked against themselves and the ledger (creditctl reconcile, tests, the bench).

- every ledger entry of the tenant is projected, once (finance_entries = journal);
- every journal entry's lines balance per currency;
- the day sums the reports read equal the lines, and the money sums the lots' books;
- per lot: its remaining units = the ledger's available + held; deferred at grant = recognized +
  breakage + still deferred + transferred out + voided; its DEFERRED_REVENUE balance = its money
  remaining and its EXPECTED_BREAKAGE balance = its advance (paid lots), to the minor unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from finance.storage.projector import LOAD_LOTS, _book

UNBALANCED = """
SELECT entry_id, currency, (sum(debit) - sum(credit))::bigint AS off FROM finance_lines WHERE tenant_id = $1
GROUP BY entry_id, currency HAVING sum(debit) <> sum(credit)
"""
COUNTS = """
SELECT (SELECT count(*) FROM journal WHERE tenant_id = $1) AS journal,
       (SELECT count(*) FROM finance_entries WHERE tenant_id = $1) AS projected
"""
LEDGER_LOTS = "SELECT lot_id, available + held AS remaining FROM lot_balances WHERE tenant_id = $1"
LOT_GL = """
SELECT lot_id, sum(credit - debit) FILTER (WHERE gl_account = 'DEFERRED_REVENUE')::bigint AS deferred,
       sum(debit - credit) FILTER (WHERE gl_account = 'EXPECTED_BREAKAGE')::bigint AS advance
FROM finance_lines WHERE tenant_id = $1 GROUP BY lot_id
"""
LINE_TOTALS = """
SELECT gl_account, currency, sum(debit)::bigint AS debit, sum(credit)::bigint AS credit FROM finance_lines
WHERE tenant_id = $1 GROUP BY 1, 2
"""
SUM_TOTALS = """
SELECT gl_account, currency, sum(debit)::bigint AS debit, sum(credit)::bigint AS credit FROM finance_day_sums
WHERE tenant_id = $1 GROUP BY 1, 2
"""
MONEY_TOTAL = "SELECT coalesce(sum(money_in - money_out), 0)::bigint FROM finance_money_sums WHERE tenant_id = $1"
ALL_LOT_IDS = "SELECT lot_id FROM finance_lots WHERE tenant_id = $1"


@dataclass
class BooksVerification:
    entries: int = 0
    lots: int = 0
    mismatch_minor: int = 0  # sum of every money difference found
    violations: list[str] = field(default_factory=list)


async def verify_books(conn: asyncpg.Connection, tenant_id: str) -> BooksVerification:
    out = BooksVerification()
    counts = await conn.fetchrow(COUNTS, tenant_id)
    out.entries = counts["projected"]
    if counts["journal"] != counts["projected"]:
        out.violations.append(f"{counts['journal'] - counts['projected']} ledger entries are not in the books")
    for r in await conn.fetch(UNBALANCED, tenant_id):
        out.mismatch_minor += abs(r["off"])
        out.violations.append(f"entry {r['entry_id']}: lines in {r['currency']} are off by {r['off']}")
    ids = [r["lot_id"] for r in await conn.fetch(ALL_LOT_IDS, tenant_id)]
    books = {r["lot_id"]: _book(r) for r in await conn.fetch(LOAD_LOTS, tenant_id, ids)}
    out.lots = len(books)
    for r in await conn.fetch(LEDGER_LOTS, tenant_id):
        book = books.get(r["lot_id"])
        if book is None:
            out.violations.append(f"lot {r['lot_id']}: not in the books")
        elif book.units_remaining != r["remaining"]:
            out.violations.append(f"lot {r['lot_id']}: books say {book.units_remaining} units remain, "
                                  f"the ledger {r['remaining']}")
    await _check_sums(conn, tenant_id, out, sum(b.money_remaining for b in books.values()))
    gl = {r["lot_id"]: r for r in await conn.fetch(LOT_GL, tenant_id)}
    for lot_id, book in books.items():
        out.violations += book.violations()
        if not book.paid:
            continue
        row = gl.get(lot_id)
        deferred = (row["deferred"] or 0) if row else 0
        advance = (row["advance"] or 0) if row else 0
        for name, have, want in (("deferred revenue", deferred, book.money_remaining),
                                 ("expected breakage", advance, book.advance)):
            if have != want:
                out.mismatch_minor += abs(have - want)
                out.violations.append(f"lot {lot_id}: {name} balance {have} != {want} on its book")
    return out


async def _check_sums(conn: asyncpg.Connection, tenant_id: str, out: BooksVerification, lots_money: int) -> None:
    """The day sums the reports read equal the lines and the lots they summarise."""
    lines = {(r["gl_account"], r["currency"]): (r["debit"], r["credit"])
             for r in await conn.fetch(LINE_TOTALS, tenant_id)}
    sums = {(r["gl_account"], r["currency"]): (r["debit"], r["credit"])
            for r in await conn.fetch(SUM_TOTALS, tenant_id)}
    for key in sorted(set(lines) | set(sums)):
        a, b = lines.get(key, (0, 0)), sums.get(key, (0, 0))
        if a != b:
            out.mismatch_minor += abs(a[0] - b[0]) + abs(a[1] - b[1])
            out.violations.append(f"day sums of {key[0]} in {key[1]}: {b} but the lines say {a}")
    money = await conn.fetchval(MONEY_TOTAL, tenant_id)
    if money != lots_money:
        out.mismatch_minor += abs(money - lots_money)
        out.violations.append(f"money sums say {money} remains on lots, their books {lots_money}")
