"""The finance pages of the portal: one tenant's books for finance people, opened with a finance link
(`CreateFinanceLink`, `creditctl finance link`; a portal session of kind `finance`). Every figure comes
from the finance gRPC API (served by the ledger server) called with the session in place of an API
key; the services' call guard lets that session call only the report reads. Pages: revenue by period
x customer x lot type, liability as of an instant, breakage by period and method, the program report,
and the journal of a day or a month as CSV or JSON downloads, streamed page by page from ExportJournal.

Amounts are the API's decimal strings (exact, at the currency's minor unit); the pages only group their
digits (`money`), never through a float.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from credits.finance.v1 import finance_pb2 as fpb
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from portal.backend import Refused, Visitor

if TYPE_CHECKING:
    from portal.app import Portal

# The finance pages have GET forms (period pickers), so their policy lets a form submit to this origin.
FORM_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
JOURNAL_COLUMNS = ("entry_id", "line_no", "posting_at", "gl_code", "gl_account", "debit", "credit", "currency",
                   "account_id", "lot_id", "lot_type", "campaign_id", "entry_kind", "hold_key", "reference", "memo")
JOURNAL_PAGE = 1000
MONTH = re.compile(r"\d{4}-\d{2}")
PERIOD = re.compile(r"\d{4}-\d{2}(-\d{2})?")
MONEY = re.compile(r"(-?)(\d+)(\.\d+)?")


def money(text: str) -> str:
    """An exact decimal string with its digits grouped by thousands ("-1234567.50" -> "-1,234,567.50")."""
    found = MONEY.fullmatch(text or "0")
    if found is None:
        return text
    sign, whole, fraction = found.groups()
    return f"{sign}{int(whole):,}{fraction or ''}"


def rate(value: float) -> str:
    """A rate (a share, not money) as a percentage with one decimal."""
    return f"{value * 100:.1f} %"


def duration(seconds: float) -> str:
    if seconds < 0:
        return "—"
    days = seconds / 86400
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


def _month(field: str, value: str | None, default: str) -> str:
    """A YYYY-MM query value; absent or empty means `default`, anything else malformed is a 400 page."""
    if not value:
        return default
    if not MONTH.fullmatch(value):
        raise Refused(400, "That request is not valid", f"{field}: expected a month as YYYY-MM, got {value!r}")
    return value


def _instant(text: str) -> datetime | None:
    """A `datetime-local` value read as UTC (the books' periods are UTC); empty means now."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise Refused(400, "That request is not valid",
                      f"as_of: expected an instant as YYYY-MM-DDTHH:MM, got {text!r}") from None


def _journal_row(line: fpb.JournalLine) -> dict[str, Any]:
    row: dict[str, Any] = {c: getattr(line, c) for c in JOURNAL_COLUMNS if c != "posting_at"}
    row["posting_at"] = line.posting_at.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return row


class FinancePages:
    def __init__(self, portal: Portal, headers: dict[str, str]) -> None:
        self.portal = portal
        self.headers = headers  # the portal's security headers

    def _render(self, name: str, who: Visitor, active: str, **context: Any) -> Response:
        response = self.portal.page(name, active=active, expires=datetime.fromtimestamp(
            who.session.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC"), **context)
        response.headers["Content-Security-Policy"] = FORM_CSP
        return response

    def _window(self, request: Request) -> tuple[str, str]:
        this_month = datetime.now(UTC).strftime("%Y-%m")
        first = _month("from", request.query_params.get("from"), this_month)
        return first, _month("to", request.query_params.get("to"), first)

    async def _period_report(self, request: Request, page: str, rpc: str, ask: Any) -> Response:
        """A report over a window of months (`from`, `to`): the finance API's `rpc` with `ask`'s request type."""
        who = await self.portal.finance_visitor(request)
        first, last = self._window(request)
        report = await getattr(self.portal.api().finance, rpc)(ask(from_period=first, to_period=last),
                                                               metadata=who.md)
        return self._render(f"finance/{page}.html", who, page, rows=report.rows, first=first, last=last)

    async def revenue(self, request: Request) -> Response:
        return await self._period_report(request, "revenue", "GetRevenueReport", fpb.GetRevenueReportRequest)

    async def liability(self, request: Request) -> Response:
        who = await self.portal.finance_visitor(request)
        at = _instant(request.query_params.get("as_of", ""))
        by_customer = request.query_params.get("by_customer") == "on"
        ask = fpb.GetLiabilityReportRequest(by_customer=by_customer)
        if at is not None:
            ask.as_of.FromDatetime(at)
        report = await self.portal.api().finance.GetLiabilityReport(ask, metadata=who.md)
        as_of = report.as_of.ToDatetime(tzinfo=UTC)
        return self._render("finance/liability.html", who, "liability", rows=report.rows, by_customer=by_customer,
                            as_of=as_of.strftime("%Y-%m-%d %H:%M:%S UTC"), as_of_value=as_of.strftime("%Y-%m-%dT%H:%M"))

    async def breakage(self, request: Request) -> Response:
        return await self._period_report(request, "breakage", "GetBreakageReport", fpb.GetBreakageReportRequest)

    async def program(self, request: Request) -> Response:
        return await self._period_report(request, "program", "GetProgramReport", fpb.GetProgramReportRequest)

    async def journal(self, request: Request) -> Response:
        who = await self.portal.finance_visitor(request)
        period = request.query_params.get("period", "")
        period = period if PERIOD.fullmatch(period) else datetime.now(UTC).strftime("%Y-%m")
        return self._render("finance/journal.html", who, "journal", period=period)

    async def _lines(self, who: Visitor, period: str) -> AsyncIterator[list[fpb.JournalLine]]:
        token = ""
        while True:
            page = await self.portal.api().finance.ExportJournal(
                fpb.ExportJournalRequest(period=period, page_size=JOURNAL_PAGE, page_token=token), metadata=who.md)
            yield list(page.lines)
            token = page.next_page_token
            if not token:
                return

    async def journal_file(self, request: Request) -> Response:
        """The journal of a day or a month, streamed: CSV (one row per journal line) or a JSON array."""
        who = await self.portal.finance_visitor(request)
        kind = request.url.path.rpartition(".")[2]  # csv or json (the two routes)
        period = request.query_params.get("period", "")
        pages = self._lines(who, period)
        first = await anext(pages)  # a bad period is refused here, as a page, before the download starts

        async def every_page() -> AsyncIterator[list[fpb.JournalLine]]:
            yield first
            async for lines in pages:
                yield lines

        async def body() -> AsyncIterator[bytes]:
            yield (",".join(JOURNAL_COLUMNS) + "\r\n").encode() if kind == "csv" else b"["
            count = 0
            async for lines in every_page():
                out = io.StringIO()
                if kind == "csv":
                    csv.DictWriter(out, JOURNAL_COLUMNS).writerows(_journal_row(line) for line in lines)
                for line in lines if kind == "json" else ():
                    out.write(("," if count else "") + "\n" + json.dumps(_journal_row(line)))
                    count += 1
                yield out.getvalue().encode()
            if kind == "json":
                yield b"\n]\n"

        media = "text/csv; charset=utf-8" if kind == "csv" else "application/json"
        return StreamingResponse(body(), media_type=media, headers={
            **self.headers, "Content-Disposition": f'attachment; filename="journal-{period}.{kind}"'})
