"""creditctl finance ...: the books (FinanceService on the ledger server) -- rules, close, reports, journal export.

Periods are UTC months (2026-11) or days (2026-11-05). Every report takes --json and --csv; the
journal export in CSV is one line per journal line, balanced per ledger entry, ready for an
accounting system's import. `rollforward` and `liability` exit 1 when a check does not hold.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.finance.v1 import finance_pb2 as fpb

from creditctl.arguments import iso
from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records, set_instant
from creditctl.times import INSTANT, parse_duration

JOURNAL_COLUMNS = ("entry_id", "line_no", "posting_at", "gl_code", "gl_account", "debit", "credit", "currency",
                   "account_id", "lot_id", "lot_type", "campaign_id", "entry_kind", "hold_key", "reference", "memo")


@click.group("finance", cls=Group, help="the books: revenue, liability, breakage, journals, program reports")
def command() -> None:
    pass


def _granularity(daily: bool) -> int:
    return fpb.DAY if daily else fpb.MONTH


@command.group("rules", cls=Group, help="recognition rules as data (a JSON document per tenant, versioned)")
def rules() -> None:
    pass


@rules.command("show", help="the rules in force, defaults spelled out")
@format_options()
def rules_show(fmt: Format) -> int:
    got = rpc("finance", "GetFinanceRules", fpb.GetFinanceRulesRequest())
    if fmt == Format.JSON:
        click.echo(got.rules_json)
    else:
        emit_record(record(got), fmt)
    return 0


@rules.command("set", help="store FILE (JSON; '-' reads stdin) as the next version of the rules")
@click.argument("file", type=click.File("r"))
@idempotency_option
@format_options()
def rules_set(file: Any, idempotency_key: str, fmt: Format) -> int:
    text = file.read()
    got = rpc("finance", "SetFinanceRules", fpb.SetFinanceRulesRequest(idempotency_key=key_for(idempotency_key),
                                                                       rules_json=text))
    emit_record(record(got), fmt)
    return 0


@command.command("status", help="catch the books up with the ledger now, and show how far they are")
@format_options()
def status(fmt: Format) -> int:
    emit_record(record(rpc("finance", "ProjectBooks", fpb.ProjectBooksRequest())), fmt)
    return 0


@command.command("close", help="close PERIOD (and all before it): later entries post in the first open period")
@click.argument("period")
@idempotency_option
@format_options()
def close(period: str, idempotency_key: str, fmt: Format) -> int:
    got = rpc("finance", "ClosePeriod", fpb.ClosePeriodRequest(idempotency_key=key_for(idempotency_key),
                                                               period=period))
    emit_record(record(got), fmt)
    return 0


@command.command("revenue", help="recognized and deferred revenue by period x customer x lot type, FROM..TO")
@click.argument("from_period")
@click.argument("to_period", required=False, default="")
@click.option("--daily", is_flag=True, help="one row per day (default: per month)")
@format_options(csv_=True)
def revenue(from_period: str, to_period: str, daily: bool, fmt: Format) -> int:
    got = rpc("finance", "GetRevenueReport", fpb.GetRevenueReportRequest(
        from_period=from_period, to_period=to_period, granularity=_granularity(daily)))
    emit_rows(records(got.rows), ("period", "account_id", "lot_type", "currency", "recognized", "breakage",
                                  "contra_revenue", "promotional_expense", "goodwill_expense", "deferred_issued",
                                  "deferred_closing"), fmt)
    return 0


@command.command("liability", help="outstanding deferred revenue and free credit as of an instant")
@click.option("--as-of", type=INSTANT, default=None, help="default: now")
@click.option("--by-customer", is_flag=True, help="one row per customer too")
@format_options(csv_=True)
def liability(as_of: datetime | None, by_customer: bool, fmt: Format) -> int:
    request = fpb.GetLiabilityReportRequest(by_customer=by_customer)
    set_instant(request.as_of, as_of)
    got = rpc("finance", "GetLiabilityReport", request)
    emit_rows(records(got.rows), ("currency", "lot_type", "account_id", "deferred_gross", "expected_breakage",
                                  "deferred_net", "free_outstanding", "lots_money_remaining", "matches_lots"), fmt)
    return 0 if all(r.matches_lots for r in got.rows) else 1


@command.command("rollforward", help="deferred revenue over PERIOD: opening + issued - recognized - breakage = closing")
@click.argument("period")
@format_options(csv_=True)
def rollforward(period: str, fmt: Format) -> int:
    got = rpc("finance", "GetLiabilityRollForward", fpb.GetLiabilityRollForwardRequest(period=period))
    emit_rows(records(got.rows), ("currency", "opening", "issued", "transferred_in", "transferred_out", "recognized",
                                  "breakage", "voided", "closing", "balanced"), fmt)
    return 0 if all(r.balanced for r in got.rows) else 1


@command.command("breakage", help="breakage by period, method and lot type, FROM..TO")
@click.argument("from_period")
@click.argument("to_period", required=False, default="")
@click.option("--daily", is_flag=True, help="one row per day (default: per month)")
@format_options(csv_=True)
def breakage(from_period: str, to_period: str, daily: bool, fmt: Format) -> int:
    got = rpc("finance", "GetBreakageReport", fpb.GetBreakageReportRequest(
        from_period=from_period, to_period=to_period, granularity=_granularity(daily)))
    emit_rows(records(got.rows), ("period", "method", "lot_type", "currency", "expired", "expected", "total"), fmt)
    return 0


SECONDS = ("median_time_to_consumption_s", "units_weighted_median_time_to_consumption_s",
           "units_weighted_mean_time_to_consumption_s")


@command.command("program", help="issuance, consumption, breakage and redemption of lots granted FROM..TO")
@click.argument("from_period")
@click.argument("to_period", required=False, default="")
@format_options(csv_=True)
def program(from_period: str, to_period: str, fmt: Format) -> int:
    got = rpc("finance", "GetProgramReport", fpb.GetProgramReportRequest(from_period=from_period,
                                                                         to_period=to_period))
    rows = records(got.rows)
    for r in rows:
        for rate in ("consumption_rate", "breakage_rate", "redemption_rate"):
            r[rate] = f"{r[rate]:.4f}"
        for key in SECONDS:
            r[key] = "" if r[key] < 0 else f"{r[key]:.0f}"
    emit_rows(rows, ("lot_type", "source", "campaign_id", "unit", "lots", "units_issued", "units_consumed",
                     "units_expired", "value_issued", "currency", "consumption_rate", "breakage_rate",
                     "redemption_rate", *SECONDS), fmt)
    return 0


@command.command("journal", help="every journal line posted in PERIOD (a day or a month), for an accounting import")
@click.argument("period")
@format_options(csv_=True)
def journal(period: str, fmt: Format) -> int:
    lines = paged("finance", "ExportJournal", fpb.ExportJournalRequest(period=period, page_size=1000), "lines")
    emit_rows(records(lines), JOURNAL_COLUMNS, fmt)
    return 0


@command.command("link", help="a read-only link to the finance pages of the web portal (default: valid 8h)")
@click.option("--ttl", default="8h", show_default=True, help="how long the link works: 30m, 8h, 7d (at most 30d)")
@format_options(quiet=True)
def link(ttl: str, fmt: Format) -> int:
    span = parse_duration(ttl)
    if span is None:
        raise click.BadParameter("a duration like 30m, 8h or 7d", param_hint="--ttl")
    made = rpc("finance", "CreateFinanceLink", fpb.CreateFinanceLinkRequest(ttl_s=int(span.total_seconds())))
    if fmt == Format.QUIET:
        click.echo(made.url)
        return 0
    emit_record({"url": made.url, "expires_at": iso(made.expires_at, "expires_at")}, fmt, id_field="url")
    return 0
