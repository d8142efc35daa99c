"""The customer portal in a real browser: Playwright driving the system Chromium (never a downloaded
browser build; `.ci/run` installs `chromium` with apt when it is missing).

A customer opens their link, sees their balances by type and the expiry timeline, opens an invoice
and its credit lines, downloads the CSV statement; then a debit through gRPC changes the balance on
the open page without a reload (server-sent events fed by WatchBalance). With
CREDITS_PORTAL_SCREENSHOTS=DIR it also saves the README's screenshots there.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from credits.ledger.v1 import ledger_pb2 as lpb
from playwright.async_api import Page, async_playwright, expect

from tests.ledger.requests_and_checks import charge, ts
from tests.portal.conftest import Portal

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _keep(shot: Path) -> None:
    target = os.environ.get("CREDITS_PORTAL_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


async def _shot(page: Page, name: str, into: Path) -> None:
    await page.screenshot(path=str(into / f"portal-{name}.png"), full_page=False)
    await asyncio.to_thread(_keep, into / f"portal-{name}.png")


async def test_a_customer_sees_balances_invoices_csv_and_a_live_balance(portal: Portal, tmp_path: Path) -> None:
    assert CHROMIUM, "the browser test needs the system Chromium: apt-get install -y chromium (.ci/run does)"
    s = portal.stack.services
    await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="top-up", account_id="acct-john-wick", type=lpb.PURCHASED, unit="USD", amount="25.00",
        expires_at=ts(datetime.now(UTC) + timedelta(days=30))), metadata=portal.stack.md)
    for i, amount in enumerate(("1.50", "0.75")):
        await s.ledger.DebitCredits(lpb.DebitCreditsRequest(
            idempotency_key=f"use-{i}", account_id="acct-john-wick", unit="USD", reference=f"api-call-{i}",
            charges=[charge(amount, charge_id=f"c{i}", name="input_tokens")]), metadata=portal.stack.md)
    link = await portal.link("john-wick")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1000, "height": 720}, accept_downloads=True)
            page = await context.new_page()
            await page.goto(f"{portal.url}/s/{link.token}")
            assert page.url == f"{portal.url}/"  # the token left the address bar: it lives in an HttpOnly cookie
            available = page.locator('output.available[data-unit="USD"]')
            await expect(available).to_have_text("22.75")
            await expect(page.locator('tr[data-type="Promotional"] td').nth(2)).to_have_text("0.00")
            await expect(page.locator('tr[data-type="Purchased"] td').nth(2)).to_have_text("22.75")
            await expect(page.locator("ol.timeline li")).to_contain_text("22.75 USD of purchased credit expire")
            await _shot(page, "balances", tmp_path)

            await page.get_by_role("link", name="Transactions").click()
            invoice_links = page.get_by_role("link", name="Invoice INV-000001")
            await expect(invoice_links).to_have_count(2)  # its hold placed, then the credits it consumed
            await _shot(page, "transactions", tmp_path)

            await page.get_by_role("link", name="Invoices", exact=True).click()
            await page.get_by_role("link", name="INV-000001").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Invoice INV-000001")
            credits = page.locator("table.lines tbody tr td.credits")
            invoice = await portal.stack.invoice(portal.invoice_id)
            assert await credits.all_inner_texts() == [li.credits_applied for li in invoice.line_items]
            assert sum(Decimal(t) for t in await credits.all_inner_texts()) == Decimal("50.00")
            await expect(page.locator("table.lines")).to_contain_text("from promotional credit")
            await _shot(page, "invoice", tmp_path)

            await page.get_by_role("link", name="Usage").click()
            await expect(page.locator("svg.chart")).to_have_count(2)  # the invoice's two meters; the debits' one
            await expect(page.locator("section.meter h2").first).to_contain_text("input_tokens")
            await _shot(page, "usage", tmp_path)

            async with page.expect_download() as info:
                await page.get_by_role("link", name="Download CSV").click()
            download = await info.value
            text = await asyncio.to_thread(Path(await download.path()).read_text)
            rows = list(csv.DictReader(io.StringIO(text)))
            assert rows[-1]["row"] == "SUMMARY" and rows[-1]["balance"] == "22.75"
            assert any(r["movement"] == "CONSUMPTION" and r["reference"] == portal.invoice_id for r in rows)

            await page.get_by_role("link", name="Balances").click()
            await expect(available).to_have_text("22.75")
            await expect(page.locator("body[data-live-sequence]")).to_have_count(1)  # the stream is open
            await s.ledger.DebitCredits(lpb.DebitCreditsRequest(
                idempotency_key="live", account_id="acct-john-wick", unit="USD",
                charges=[charge("2.75", name="input_tokens")]), metadata=portal.stack.md)
            await expect(available).to_have_text("20.00", timeout=10_000)  # no reload: pushed by the server
            await expect(page.locator(".live-status")).to_contain_text("Live: updated")
            await _shot(page, "live", tmp_path)
        finally:
            await browser.close()
