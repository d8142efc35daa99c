"""Finance reports -> protobuf: money in its currency's scale, units in their unit's scale."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from credits.finance.v1 import finance_pb2 as pb

from finance.domain.periods import Granularity
from finance.domain.reports import Liability, ProgramRow, RollForward
from finance.storage.reads import BreakageRow, RevenueRow, Status
from service_runtime.amounts import format_minor
from service_runtime.currencies import CURRENCY_SCALES
from service_runtime.proto_time import to_timestamp


def money(minor: int, currency: str) -> str:
    return format_minor(minor, CURRENCY_SCALES.get(currency, 2))


def period_name(at: datetime, granularity: Granularity) -> str:
    return at.strftime("%Y-%m" if granularity is Granularity.MONTH else "%Y-%m-%d")


def status(s: Status, projected_now: int) -> pb.BooksStatus:
    out = pb.BooksStatus(last_entry_id=s.last_entry_id, entries_projected=s.entries_projected,
                         entries_behind=s.entries_behind, projected_now=projected_now)
    if s.closed_through is not None:
        out.closed_through.CopyFrom(to_timestamp(s.closed_through))
    return out


def revenue_row(r: RevenueRow, granularity: Granularity) -> pb.RevenueRow:
    c, f = r.currency, r.flows
    return pb.RevenueRow(
        period=period_name(r.period, granularity), account_id=r.account_id, lot_type=r.lot_type, currency=c,
        recognized=money(f.recognized, c), breakage=money(f.breakage, c), contra_revenue=money(f.contra_revenue, c),
        promotional_expense=money(f.promotional_expense, c), goodwill_expense=money(f.goodwill_expense, c),
        deferred_issued=money(f.issued, c), deferred_closing=money(r.deferred_closing, c))


def liability_row(x: Liability) -> pb.LiabilityRow:
    c = x.currency
    return pb.LiabilityRow(
        currency=c, lot_type=x.lot_type, account_id=x.account_id, deferred_gross=money(x.deferred_gross, c),
        expected_breakage=money(x.expected_breakage, c), deferred_net=money(x.deferred_net, c),
        free_outstanding=money(x.free_outstanding, c), lots_money_remaining=money(x.lots_money_remaining, c),
        matches_lots=x.matches_lots)


def roll_forward_row(r: RollForward) -> pb.RollForwardRow:
    c, f = r.currency, r.flows
    return pb.RollForwardRow(
        currency=c, opening=money(r.opening, c), issued=money(f.issued, c),
        transferred_in=money(f.transferred_in, c), transferred_out=money(f.transferred_out, c),
        recognized=money(f.recognized, c), breakage=money(f.breakage, c), voided=money(f.voided, c),
        closing=money(r.closing, c), balanced=r.balanced)


def breakage_row(r: BreakageRow, granularity: Granularity) -> pb.BreakageRow:
    c = r.currency
    return pb.BreakageRow(period=period_name(r.period, granularity), method=r.method, lot_type=r.lot_type,
                          currency=c, expired=money(r.expired, c), expected=money(r.expected, c),
                          total=money(r.total, c))


def program_row(r: ProgramRow, unit_scales: Mapping[str, int]) -> pb.ProgramRow:
    scale = unit_scales.get(r.unit, 0)
    return pb.ProgramRow(
        lot_type=r.lot_type, source=r.source, campaign_id=r.campaign_id, unit=r.unit, currency=r.currency,
        lots=r.lots, lots_redeemed=r.lots_redeemed, units_issued=format_minor(r.units_issued, scale),
        units_consumed=format_minor(r.units_consumed, scale), units_expired=format_minor(r.units_expired, scale),
        units_remaining=format_minor(r.units_remaining, scale), value_issued=money(r.value_issued, r.currency),
        consumption_rate=r.consumption_rate, breakage_rate=r.breakage_rate, redemption_rate=r.redemption_rate,
        median_time_to_consumption_s=_seconds(r.median_time_to_consumption_s),
        units_weighted_median_time_to_consumption_s=_seconds(r.weighted_median_time_to_consumption_s),
        units_weighted_mean_time_to_consumption_s=_seconds(r.weighted_mean_time_to_consumption_s))


def _seconds(value: float | None) -> float:
    return -1.0 if value is None else value


def journal_line(r: Any) -> pb.JournalLine:
    c = r["currency"]
    return pb.JournalLine(
        entry_id=r["entry_id"], line_no=r["line_no"], posting_at=to_timestamp(r["posting_at"]),
        effective_at=to_timestamp(r["effective_at"]), gl_account=r["gl_account"], gl_code=r["gl_code"],
        debit=money(r["debit"], c), credit=money(r["credit"], c), currency=c, account_id=r["account_id"],
        lot_id=r["lot_id"], lot_type=r["lot_type"], campaign_id=r["campaign_id"], entry_kind=r["entry_kind"],
        hold_key=r["hold_key"], reference=r["reference"], memo=r["memo"])
