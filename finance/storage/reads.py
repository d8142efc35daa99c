"""Finance reads: the reports' SQL (sums of journal lines and lot books), folded by finance.domain.reports."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from finance.domain.periods import Granularity, Period
from finance.domain.reports import Flows, Liability, ProgramRow, RollForward

# Reports read the day sums (finance_day_sums, finance_money_sums: kept with the lines), plus the
# raw lines of the part of a day before an instant that is not midnight.
FLOWS_BY_PERIOD = """
SELECT date_trunc($4, day)::date AS period, account_id, lot_type, currency, gl_account, entry_kind, transfer,
       sum(debit)::bigint AS debit, sum(credit)::bigint AS credit
FROM finance_day_sums
WHERE tenant_id = $1 AND day >= $2 AND day < $3
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
DEFERRED_BEFORE = """
SELECT account_id, lot_type, currency, gl_account, sum(debit)::bigint AS debit, sum(credit)::bigint AS credit
FROM finance_day_sums
WHERE tenant_id = $1 AND day < $2 AND gl_account IN ('DEFERRED_REVENUE', 'EXPECTED_BREAKAGE')
GROUP BY 1, 2, 3, 4
"""
FLOWS_BY_CURRENCY = """
SELECT currency, gl_account, entry_kind, transfer, sum(debit)::bigint AS debit, sum(credit)::bigint AS credit
FROM finance_day_sums
WHERE tenant_id = $1 AND day >= $2 AND day < $3
GROUP BY 1, 2, 3, 4
"""
# As of an instant: whole days from the sums, the rest of its day from the lines / entries.
GL_AS_OF = """
SELECT currency, lot_type, account_id, gl_account, sum(debit)::bigint AS debit, sum(credit)::bigint AS credit
FROM (SELECT currency, lot_type, CASE WHEN $4 THEN account_id ELSE '' END AS account_id, gl_account, debit, credit
      FROM finance_day_sums
      WHERE tenant_id = $1 AND day < $2 AND gl_account IN ('DEFERRED_REVENUE', 'EXPECTED_BREAKAGE')
      UNION ALL
      SELECT currency, lot_type, CASE WHEN $4 THEN account_id ELSE '' END, gl_account, debit, credit
      FROM finance_lines
      WHERE tenant_id = $1 AND posting_at >= $3 AND posting_at < $5
        AND gl_account IN ('DEFERRED_REVENUE', 'EXPECTED_BREAKAGE')) x
GROUP BY 1, 2, 3, 4
"""
# Each lot's remaining money as of the instant, from its own entries (money in - money out).
LOTS_REMAINING = """
SELECT currency, lot_type, account_id, paid, sum(money)::bigint AS remaining
FROM (SELECT currency, lot_type, CASE WHEN $4 THEN account_id ELSE '' END AS account_id, paid,
             money_in - money_out AS money
      FROM finance_money_sums WHERE tenant_id = $1 AND day < $2
      UNION ALL
      SELECT l.currency, l.lot_type, CASE WHEN $4 THEN l.account_id ELSE '' END, l.treatment = 'DEFERRED_REVENUE',
             CASE WHEN e.kind IN ('GRANT', 'REINSTATE') THEN e.money ELSE -e.money END
      FROM finance_entries e JOIN finance_lots l ON l.tenant_id = e.tenant_id AND l.lot_id = e.lot_id
      WHERE e.tenant_id = $1 AND e.posting_at >= $3 AND e.posting_at < $5) x
GROUP BY 1, 2, 3, 4
"""
BREAKAGE_BY_PERIOD = """
SELECT date_trunc($4, day)::date AS period, breakage_method, lot_type, currency,
       sum(CASE WHEN memo = 'breakage at expiry' THEN credit - debit ELSE 0 END)::bigint AS expired,
       sum(CASE WHEN memo LIKE 'expected breakage%' THEN credit - debit ELSE 0 END)::bigint AS expected
FROM finance_day_sums
WHERE tenant_id = $1 AND day >= $2 AND day < $3 AND gl_account = 'BREAKAGE_REVENUE'
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""
PROGRAM = """
SELECT l.lot_type, l.source, l.campaign_id, l.unit, l.currency, count(*) AS lots,
       count(*) FILTER (WHERE l.units_consumed > 0) AS lots_redeemed,
       sum(l.units_granted)::bigint AS units_issued, sum(l.units_consumed)::bigint AS units_consumed,
       sum(l.units_expired)::bigint AS units_expired, sum(l.units_remaining)::bigint AS units_remaining,
       sum(l.deferred_at_grant)::bigint AS value_issued,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.effective_at - m.granted_at))
        FROM finance_entries e JOIN finance_lots m ON m.tenant_id = e.tenant_id AND m.lot_id = e.lot_id
        WHERE e.tenant_id = $1 AND e.kind IN ('POST', 'DEBIT') AND m.lot_type = l.lot_type AND m.source = l.source
          AND m.campaign_id = l.campaign_id AND m.unit = l.unit AND m.currency = l.currency
          AND m.granted_at >= $2 AND m.granted_at < $3 AND m.origin_lot_id = '') AS median_s
FROM finance_lots l
WHERE l.tenant_id = $1 AND l.granted_at >= $2 AND l.granted_at < $3 AND l.origin_lot_id = ''
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
"""
# Time to consumption weighted by units, per cohort: each consumed unit at its entry's delay since its lot's
# grant; the median unit is the first, in order of delay, at which half the cohort's units are reached.
PROGRAM_WEIGHTED = """
SELECT lot_type, source, campaign_id, unit, currency,
       min(s) FILTER (WHERE 2 * cum >= total) AS median_s, sum(s * units) / sum(units) AS mean_s
FROM (SELECT m.lot_type, m.source, m.campaign_id, m.unit, m.currency, e.units,
             extract(epoch FROM e.effective_at - m.granted_at) AS s,
             sum(e.units) OVER (c ORDER BY e.effective_at - m.granted_at, e.entry_id) AS cum,
             sum(e.units) OVER c AS total
      FROM finance_entries e JOIN finance_lots m ON m.tenant_id = e.tenant_id AND m.lot_id = e.lot_id
      WHERE e.tenant_id = $1 AND e.kind IN ('POST', 'DEBIT') AND m.granted_at >= $2 AND m.granted_at < $3
        AND m.origin_lot_id = ''
      WINDOW c AS (PARTITION BY m.lot_type, m.source, m.campaign_id, m.unit, m.currency)) x
GROUP BY 1, 2, 3, 4, 5
"""
JOURNAL_PAGE = """
SELECT * FROM finance_lines
WHERE tenant_id = $1 AND posting_at >= $2 AND posting_at < $3 AND (entry_id, line_no) > ($4, $5)
ORDER BY entry_id, line_no
LIMIT $6
"""
STATUS = """
SELECT c.entry_id, c.entries_projected, c.closed_through,
       (SELECT count(*) FROM journal j WHERE j.tenant_id = $1 AND j.entry_id > coalesce(c.entry_id, 0)) AS behind
FROM (SELECT $1::text AS tenant_id) t LEFT JOIN finance_cursors c ON c.tenant_id = t.tenant_id
"""


@dataclass
class RevenueRow:
    period: datetime
    account_id: str
    lot_type: str
    currency: str
    flows: Flows
    deferred_closing: int = 0


def _gl_net(gl: str, debit: int, credit: int) -> int:
    """A line sum's effect on net deferred revenue."""
    return credit - debit if gl == "DEFERRED_REVENUE" else -(debit - credit)


async def revenue(conn: asyncpg.Connection, tenant_id: str, start: datetime, end: datetime,
                  granularity: Granularity) -> list[RevenueRow]:
    """Recognized and deferred revenue by period x customer x lot type x currency over [start, end)."""
    trunc = "month" if granularity is Granularity.MONTH else "day"
    rows: dict[tuple[Any, ...], RevenueRow] = {}
    for r in await conn.fetch(FLOWS_BY_PERIOD, tenant_id, _day(start), _day(end), trunc):
        key = (r["period"], r["account_id"], r["lot_type"], r["currency"])
        row = rows.setdefault(key, RevenueRow(_midnight(r["period"]), *key[1:], Flows()))
        row.flows.add(r["gl_account"], r["entry_kind"], r["transfer"], r["debit"], r["credit"])
    balance: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in await conn.fetch(DEFERRED_BEFORE, tenant_id, _day(start)):
        balance[(r["account_id"], r["lot_type"], r["currency"])] += _gl_net(r["gl_account"], r["debit"], r["credit"])
    out = sorted(rows.values(), key=lambda x: (x.period, x.account_id, x.lot_type, x.currency))
    for row in out:
        k = (row.account_id, row.lot_type, row.currency)
        balance[k] += row.flows.deferred
        row.deferred_closing = balance[k]
    return out


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _as_of(at: datetime) -> tuple[date, datetime, datetime]:
    """(its day, that day's midnight, the instant): whole days from the sums, the rest from the rows."""
    day = _day(at)
    return day, _midnight(day), at


async def _net_deferred(conn: asyncpg.Connection, tenant_id: str, at: datetime) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    day, midnight, instant = _as_of(at)
    for r in await conn.fetch(GL_AS_OF, tenant_id, day, midnight, False, instant):
        out[r["currency"]] += _gl_net(r["gl_account"], r["debit"], r["credit"])
    return out


async def roll_forward(conn: asyncpg.Connection, tenant_id: str, period: Period) -> list[RollForward]:
    """Deferred revenue over the period per currency: opening + movements = closing, checked."""
    opening = await _net_deferred(conn, tenant_id, period.start)
    closing = await _net_deferred(conn, tenant_id, period.end)
    flows: dict[str, Flows] = defaultdict(Flows)
    for r in await conn.fetch(FLOWS_BY_CURRENCY, tenant_id, _day(period.start), _day(period.end)):
        flows[r["currency"]].add(r["gl_account"], r["entry_kind"], r["transfer"], r["debit"], r["credit"])
    currencies = sorted(set(opening) | set(closing) | set(flows))
    return [RollForward(c, opening.get(c, 0), flows.get(c, Flows()), closing.get(c, 0)) for c in currencies]


async def liability(conn: asyncpg.Connection, tenant_id: str, as_of: datetime, by_customer: bool) -> list[Liability]:
    """Outstanding deferred revenue and free credit as of an instant (lines posted before it)."""
    rows: dict[tuple[str, str, str], Liability] = {}

    def at(currency: str, lot_type: str, account_id: str) -> Liability:
        return rows.setdefault((currency, lot_type, account_id), Liability(currency, lot_type, account_id))

    day, midnight, instant = _as_of(as_of)
    for r in await conn.fetch(GL_AS_OF, tenant_id, day, midnight, by_customer, instant):
        x = at(r["currency"], r["lot_type"], r["account_id"])
        if r["gl_account"] == "DEFERRED_REVENUE":
            x.deferred_gross += r["credit"] - r["debit"]
        else:
            x.expected_breakage += r["debit"] - r["credit"]
    for r in await conn.fetch(LOTS_REMAINING, tenant_id, day, midnight, by_customer, instant):
        x = at(r["currency"], r["lot_type"], r["account_id"])
        if r["paid"]:
            x.lots_money_remaining += r["remaining"]
        else:
            x.free_outstanding += r["remaining"]
    return sorted(rows.values(), key=lambda x: (x.currency, x.lot_type, x.account_id))


@dataclass
class BreakageRow:
    period: datetime
    method: str
    lot_type: str
    currency: str
    expired: int
    expected: int

    @property
    def total(self) -> int:
        return self.expired + self.expected


async def breakage(conn: asyncpg.Connection, tenant_id: str, start: datetime, end: datetime,
                   granularity: Granularity) -> list[BreakageRow]:
    trunc = "month" if granularity is Granularity.MONTH else "day"
    return [BreakageRow(_midnight(r["period"]), r["breakage_method"], r["lot_type"], r["currency"],
                        r["expired"], r["expected"])
            for r in await conn.fetch(BREAKAGE_BY_PERIOD, tenant_id, _day(start), _day(end), trunc)]


async def program(conn: asyncpg.Connection, tenant_id: str, start: datetime, end: datetime) -> list[ProgramRow]:
    """Cohorts of lots granted in [start, end) (transfer and rollover copies excluded: not new issuance)."""
    out = []
    weighted = {tuple(r)[:5]: r for r in await conn.fetch(PROGRAM_WEIGHTED, tenant_id, start, end)}
    for r in await conn.fetch(PROGRAM, tenant_id, start, end):
        w = weighted.get(tuple(r)[:5])
        out.append(ProgramRow(r["lot_type"], r["source"], r["campaign_id"], r["unit"], r["currency"], r["lots"],
                              r["lots_redeemed"], r["units_issued"], r["units_consumed"], r["units_expired"],
                              r["units_remaining"], r["value_issued"],
                              float(r["median_s"]) if r["median_s"] is not None else None,
                              float(w["median_s"]) if w is not None else None,
                              float(w["mean_s"]) if w is not None else None))
    return out


async def journal_page(conn: asyncpg.Connection, tenant_id: str, period: Period, after: tuple[int, int],
                       limit: int) -> list[Any]:
    return list(await conn.fetch(JOURNAL_PAGE, tenant_id, period.start, period.end, after[0], after[1], limit))


@dataclass
class Status:
    last_entry_id: int
    entries_projected: int
    entries_behind: int
    closed_through: datetime | None


async def status(conn: asyncpg.Connection, tenant_id: str) -> Status:
    r = await conn.fetchrow(STATUS, tenant_id)
    return Status(r["entry_id"] or 0, r["entries_projected"] or 0, r["behind"], r["closed_through"])
