"""The finance pages of the portal, on the real stack of tests/portal/conftest.py (john-wick's promotional
credit consumed by a finalized invoice, anna's draft) plus books of our own: a purchase with a cost basis,
a promotional grant and debits, projected. A finance link (CreateFinanceLink) opens them in the system
Chromium (Playwright): the revenue page's figures are the gRPC report's, the liability page the
liability report's, and the journal CSV downloaded from the page balances per ledger entry. Then the
scope: a finance session reaches only the report reads over gRPC (every mutation PERMISSION_DENIED, a
customer's reads too), a customer link opens no finance page and a finance link no customer's page;
expired and tampered finance links get the 401 and 403 pages.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from credits.finance.v1 import finance_pb2 as fpb
from credits.finance.v1 import finance_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from playwright.async_api import async_playwright, expect

from portal.finance_pages import money
from service_runtime import portal_sessions
from tests.ledger.requests_and_checks import charge, ts
from tests.portal.conftest import SECRET, Portal
from tests.portal.test_browser import CHROMIUM


def _finance(portal: Portal) -> finance_pb2_grpc.FinanceServiceStub:
    return finance_pb2_grpc.FinanceServiceStub(grpc.aio.insecure_channel(portal.stack.ledger_addr))


async def _books(portal: Portal) -> None:
    """A purchase at a cost basis of 0.80 per credit, a promotional grant, debits over both; projected."""
    s, md = portal.stack.services, portal.stack.md
    later = ts(datetime.now(UTC) + timedelta(days=60))
    await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="fin-buy", account_id="acct-anna", type=lpb.PURCHASED, unit="USD", amount="1250.00",
        cost_basis="0.8", expires_at=later), metadata=md)
    await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="fin-promo", account_id="acct-john-wick", type=lpb.PROMOTIONAL, unit="USD", amount="30.00",
        source="marketing", campaign_id="spring", expires_at=later), metadata=md)
    for i, (account, amount) in enumerate((("acct-anna", "1033.33"), ("acct-john-wick", "12.50"),
                                           ("acct-anna", "0.01"))):
        await s.ledger.DebitCredits(lpb.DebitCreditsRequest(
            idempotency_key=f"fin-use-{i}", account_id=account, unit="USD", reference=f"fin-call-{i}",
            charges=[charge(amount, charge_id=f"f{i}", name="input_tokens")]), metadata=md)
    status = await _finance(portal).ProjectBooks(fpb.ProjectBooksRequest(), metadata=md)
    assert status.entries_behind == 0


async def _finance_link(portal: Portal, ttl_s: int = 3600) -> fpb.FinanceLink:
    return await _finance(portal).CreateFinanceLink(fpb.CreateFinanceLinkRequest(ttl_s=ttl_s), metadata=portal.stack.md)


def _balanced(text: str) -> tuple[int, Decimal]:
    """(lines, total debits) of a journal CSV, asserting every ledger entry's lines balance per currency."""
    per_entry: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        per_entry[row["entry_id"], row["currency"]] += Decimal(row["debit"] or 0) - Decimal(row["credit"] or 0)
    assert rows and all(v == 0 for v in per_entry.values()), [k for k, v in per_entry.items() if v]
    return len(rows), sum((Decimal(r["debit"] or 0) for r in rows), Decimal(0))


async def test_finance_pages_in_a_browser(portal: Portal, tmp_path: Path) -> None:
    assert CHROMIUM, "the browser test needs the system Chromium: apt-get install -y chromium (.ci/run does)"
    await _books(portal)
    month = datetime.now(UTC).strftime("%Y-%m")
    md, finance = portal.stack.md, _finance(portal)
    revenue = await finance.GetRevenueReport(fpb.GetRevenueReportRequest(from_period=month), metadata=md)
    anna = [r for r in revenue.rows if r.account_id == "acct-anna" and r.lot_type == "PURCHASED"]
    assert [(r.recognized, r.deferred_issued, r.deferred_closing) for r in anna] == [("826.67", "1000.00", "173.33")]
    link = await _finance_link(portal)
    assert link.url.endswith(f"/s/{link.token}")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
            page = await context.new_page()
            await page.goto(f"{portal.url}/s/{link.token}")
            assert page.url == f"{portal.url}/finance"  # the token left the address bar for an HttpOnly cookie
            await expect(page.get_by_role("heading", level=1)).to_have_text("Revenue recognized and deferred")
            for r in revenue.rows:  # every figure of the page is the gRPC report's, digits grouped
                row = page.locator(f'#revenue tr[data-period="{r.period}"][data-account="{r.account_id}"]'
                                   f'[data-lot-type="{r.lot_type}"]')
                for field in ("recognized", "breakage", "contra_revenue", "promotional_expense", "deferred_issued",
                              "deferred_closing"):
                    await expect(row.locator(f'td[data-field="{field}"]')).to_have_text(money(getattr(r, field)))
            await expect(page.locator('#revenue tr[data-account="acct-anna"] td[data-field="recognized"]')
                         ).to_have_text("826.67")
            await expect(page.locator("#revenue tbody tr")).to_have_count(len(revenue.rows))
            await page.get_by_label("From month").fill("2020-01")  # the period picker, by keyboard
            await page.get_by_label("to month").fill("2020-02")
            await page.get_by_label("to month").press("Enter")
            await expect(page.locator("#revenue tbody")).to_contain_text("Nothing booked in these periods.")

            await page.get_by_role("link", name="Liability").click()
            liability = await finance.GetLiabilityReport(fpb.GetLiabilityReportRequest(), metadata=md)
            assert liability.rows and all(r.matches_lots for r in liability.rows)
            for r in liability.rows:
                row = page.locator(f'#liability tr[data-currency="{r.currency}"][data-lot-type="{r.lot_type}"]')
                for field in ("deferred_gross", "expected_breakage", "deferred_net", "free_outstanding"):
                    await expect(row.locator(f'td[data-field="{field}"]')).to_have_text(money(getattr(r, field)))
                await expect(row.locator('td[data-field="matches_lots"]')).to_have_text("yes")
            purchased = page.locator('#liability tr[data-lot-type="PURCHASED"] td[data-field="deferred_gross"]')
            await expect(purchased).to_have_text("173.33")

            for name in ("Breakage", "Program"):
                await page.get_by_role("link", name=name, exact=True).click()
                await expect(page.get_by_role("heading", level=1)).to_be_visible()
            await expect(page.locator("#program")).to_contain_text("spring")

            await page.get_by_role("link", name="Journal", exact=True).click()
            async with page.expect_download() as info:
                await page.get_by_role("link", name=f"Download the journal of {month} as CSV").click()
            download = await info.value
            text = await asyncio.to_thread(Path(await download.path()).read_text)
            lines, debits = _balanced(text)
            exported = await finance.ExportJournal(fpb.ExportJournalRequest(period=month, page_size=1000), metadata=md)
            assert lines == len(exported.lines) and debits == sum(Decimal(x.debit or 0) for x in exported.lines)
        finally:
            await browser.close()


async def test_the_journal_json_and_bad_periods(portal: Portal) -> None:
    await _books(portal)
    month = datetime.now(UTC).strftime("%Y-%m")
    async with portal.client() as web:
        opened = await web.get(f"/s/{(await _finance_link(portal)).token}")
        assert opened.status_code == 303 and opened.headers["location"] == "/finance"
        got = await web.get("/finance/journal.json", params={"period": month})
        assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
        lines = json.loads(got.text)
        csv_text = (await web.get("/finance/journal.csv", params={"period": month})).text
        assert _balanced(csv_text)[0] == len(lines) > 0
        assert {line["entry_kind"] for line in lines} >= {"GRANT", "DEBIT"}
        bad = await web.get("/finance/journal.csv", params={"period": "2026-13"})
        assert bad.status_code == 400 and "period" in bad.text
        # a malformed picker value is a 400 page naming the field, never a silent fallback to now
        for path, params, field in (("/finance", {"from": "2026-1"}, "from"),
                                    ("/finance/breakage", {"to": "June"}, "to"),
                                    ("/finance/liability", {"as_of": "yesterday"}, "as_of")):
            bad = await web.get(path, params=params)
            assert bad.status_code == 400 and f"{field}: expected" in bad.text, (path, bad.status_code)


async def test_a_finance_session_reads_reports_and_nothing_else(portal: Portal) -> None:
    finance, md = _finance(portal), [("x-api-key", (await _finance_link(portal)).token)]
    month = datetime.now(UTC).strftime("%Y-%m")
    await finance.GetRevenueReport(fpb.GetRevenueReportRequest(from_period=month), metadata=md)
    await finance.GetLiabilityReport(fpb.GetLiabilityReportRequest(), metadata=md)
    refused = [
        finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r", rules_json="{}"), metadata=md),
        finance.ClosePeriod(fpb.ClosePeriodRequest(idempotency_key="c", period="2020-01"), metadata=md),
        finance.ProjectBooks(fpb.ProjectBooksRequest(), metadata=md),
        finance.CreateFinanceLink(fpb.CreateFinanceLinkRequest(), metadata=md),
        finance.GetFinanceRules(fpb.GetFinanceRulesRequest(), metadata=md),
        finance.GetLiabilityRollForward(fpb.GetLiabilityRollForwardRequest(period=month), metadata=md),
        portal.stack.services.ledger.GetBalance(lpb.GetBalanceRequest(account_id="acct-john-wick"), metadata=md),
        portal.stack.services.ledger.DebitCredits(lpb.DebitCreditsRequest(
            idempotency_key="x", account_id="acct-john-wick", unit="USD", charges=[charge("1.00")]), metadata=md),
    ]
    for attempt in refused:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await attempt
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    customer_md = [("x-api-key", (await portal.link("john-wick")).token)]
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a customer's session reads no books
        await finance.GetRevenueReport(fpb.GetRevenueReportRequest(from_period=month), metadata=customer_md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_links_open_only_their_own_pages(portal: Portal) -> None:
    async with portal.signed_in("john-wick") as web:  # a customer link: no finance page
        for path in ("/finance", "/finance/liability", "/finance/journal", "/finance/journal.csv?period=2026-01"):
            page = await web.get(path)
            assert page.status_code == 403 and "not part of your link" in page.text, path
        assert (await web.get("/")).status_code == 200
    async with portal.client() as web:  # a finance link: no customer's page
        await web.get(f"/s/{(await _finance_link(portal)).token}")
        for path in ("/", "/transactions", "/invoices", f"/invoices/{portal.invoice_id}", "/statement.csv", "/usage"):
            page = await web.get(path)
            assert page.status_code == 403 and "not part of your link" in page.text, path
        assert (await web.get("/finance/breakage")).status_code == 200
        assert (await web.post("/finance")).status_code == 405
        revoked = await _finance_link(portal)  # RevokePortalLink ends a finance link like a customer's
        await web.get(f"/s/{revoked.token}")
        assert (await web.get("/finance")).status_code == 200
        await portal.stack.services.ledger.RevokePortalLink(lpb.RevokePortalLinkRequest(
            idempotency_key="end-fin", link=revoked.url, reason="left the team"), metadata=portal.stack.md)
        page = await web.get("/finance")
        assert page.status_code == 403 and "revoked" in page.text
    expired = portal_sessions.sign(portal_sessions.mint_finance("acme", 60, SECRET, now=0), SECRET)
    head, payload, mac = (await _finance_link(portal)).token.split(".")
    forged = f"{head}.{payload[:-2] + ('AA' if payload[-2:] != 'AA' else 'BB')}.{mac}"
    async with portal.client() as web:
        page = await web.get(f"/s/{expired}")
        assert page.status_code == 401 and "This link has expired" in page.text
        page = await web.get(f"/s/{forged}")
        assert page.status_code == 403 and "This link is not valid" in page.text
        web.cookies.set("credits_portal", expired)
        assert (await web.get("/finance")).status_code == 401
