"""The customer portal over real HTTP against the real services: its pages, the CSV download, the
live stream, and its security — A's link never shows B's data, expired or tampered links get a
clear 401/403 page, nothing can be changed, and the session itself is refused any other read or write
by the services."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import sys
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from service_runtime import portal_sessions
from service_runtime.settings import Settings
from tests.ledger.requests_and_checks import charge
from tests.portal.conftest import SECRET, Portal

ROOT = Path(__file__).resolve().parents[2]


async def test_pages_show_the_customers_own_account(portal: Portal) -> None:
    async with portal.signed_in("john-wick") as web:
        home = await web.get("/")
        assert home.status_code == 200 and "John Wick" in home.text
        assert "Promotional" in home.text and 'class="available"' in home.text
        assert home.headers["content-security-policy"].startswith("default-src 'self'")
        log = await web.get("/transactions")
        assert f'href="/invoices/{portal.invoice_id}"' in log.text and "Consumption" in log.text
        invoices = await web.get("/invoices")
        assert "INV-000001" in invoices.text
        invoice = await web.get(f"/invoices/{portal.invoice_id}")
        assert invoice.status_code == 200 and "from promotional credit" in invoice.text
        usage = await web.get("/usage")
        assert usage.status_code == 200 and "<h1>Usage per meter per day</h1>" in usage.text
        download = await web.get("/statement.csv")
        assert download.headers["content-disposition"].startswith("attachment;")
        rows = list(csv.DictReader(io.StringIO(download.text)))
        assert rows[0]["movement"] == "GRANT" and rows[-1]["row"] == "SUMMARY"


async def test_a_link_never_shows_another_customers_data(portal: Portal) -> None:
    async with portal.signed_in("anna") as web:
        home = await web.get("/")
        assert "Anna Karenina" in home.text and "John Wick" not in home.text
        assert "acct-john-wick" not in (await web.get("/statement.csv")).text
        other = await web.get(f"/invoices/{portal.invoice_id}")  # john-wick's invoice
        assert other.status_code == 404 and "INV-000001" not in other.text
        listed = await web.get("/invoices")
        assert portal.invoice_id not in listed.text and portal.draft_id in listed.text
    # the services themselves keep the session to its customer: another account, invoice, customer
    anna = (await portal.link("anna")).token
    md = [("x-api-key", anna)]
    s = portal.stack.services
    calls = [s.ledger.GetBalance(lpb.GetBalanceRequest(account_id="acct-john-wick"), metadata=md),
             s.ledger.GetStatement(lpb.GetStatementRequest(account_id="acct-john-wick"), metadata=md),
             s.invoice.ListInvoices(ipb.ListInvoicesRequest(), metadata=md),
             s.invoice.GetCustomer(ipb.GetCustomerRequest(customer_id="john-wick"), metadata=md)]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.invoice.GetInvoice(ipb.GetInvoiceRequest(invoice_id=portal.invoice_id), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in s.ledger.WatchBalance(lpb.WatchBalanceRequest(account_id="acct-john-wick"), metadata=md):
            pass
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_expired_tampered_and_missing_sessions(portal: Portal) -> None:
    session = portal_sessions.mint("acme", "john-wick", "acct-john-wick", 60, SECRET, now=0)  # long expired
    expired = portal_sessions.sign(session, SECRET)
    good = (await portal.link("john-wick")).token
    head, payload, mac = good.split(".")
    forged_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    async with portal.client() as web:
        page = await web.get(f"/s/{expired}")
        assert page.status_code == 401 and "This link has expired" in page.text
        page = await web.get(f"/s/{head}.{forged_payload}.{mac}")
        assert page.status_code == 403 and "This link is not valid" in page.text
        other_secret = portal_sessions.sign(portal_sessions.mint("acme", "john-wick", "acct-john-wick", 600,
                                                                 "y" * 40), "y" * 40)
        assert (await web.get(f"/s/{other_secret}")).status_code == 403
        page = await web.get("/")
        assert page.status_code == 401 and "Please open your portal link" in page.text
        web.cookies.set("credits_portal", expired)
        assert (await web.get("/transactions")).status_code == 401


async def test_the_session_can_change_nothing(portal: Portal) -> None:
    async with portal.signed_in("john-wick") as web:
        for path in ("/", "/invoices", f"/invoices/{portal.invoice_id}", "/statement.csv", "/s/x"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                assert (await web.request(method, path)).status_code == 405, (method, path)
    token = (await portal.link("john-wick")).token
    md = [("x-api-key", token)]
    s = portal.stack.services
    writes = [s.ledger.DebitCredits(lpb.DebitCreditsRequest(idempotency_key="p1", account_id="acct-john-wick",
                                                            unit="USD", charges=[charge("1.00")]), metadata=md),
              s.ledger.GrantCredits(lpb.GrantCreditsRequest(idempotency_key="p2", account_id="acct-john-wick",
                                                            unit="USD", amount="5.00", type=lpb.PURCHASED),
                                    metadata=md),
              s.invoice.CreatePortalLink(ipb.CreatePortalLinkRequest(customer_id="john-wick"), metadata=md),
              s.ledger.ListEntries(lpb.ListEntriesRequest(account_id="acct-john-wick"), metadata=md)]
    for call in writes:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_live_balance_events_follow_a_debit(portal: Portal) -> None:
    async with portal.signed_in("anna") as web, web.stream("GET", "/events") as events:
        lines = events.aiter_lines()

        async def next_event() -> dict[str, object]:
            while True:
                line = await asyncio.wait_for(anext(lines), 15)
                if line.startswith("data: "):
                    return json.loads(line[6:])  # type: ignore[no-any-return]

        first = await next_event()
        assert first["type"] == "SNAPSHOT"
        await portal.stack.services.ledger.DebitCredits(lpb.DebitCreditsRequest(
            idempotency_key="live-1", account_id="acct-anna", unit="USD",
            charges=[charge("2.00", kind=lpb.USAGE, name="input_tokens", start="2026-08-10T00:00:00")]),
            metadata=portal.stack.md)
        change = await next_event()
        assert change["type"] == "UPDATE" and change["sequence"] == first["sequence"] + 1  # type: ignore[operator]
        assert change["balances"] == [{"unit": "USD", "available": "18.00", "held": "0.00", "balance": "18.00"}]


async def test_links_need_a_known_customer_and_a_sane_ttl(portal: Portal) -> None:
    for request, code, field in [(ipb.CreatePortalLinkRequest(customer_id="nobody"), grpc.StatusCode.NOT_FOUND,
                                  "customer_id"),
                                 (ipb.CreatePortalLinkRequest(customer_id="anna", ttl_s=10),
                                  grpc.StatusCode.INVALID_ARGUMENT, "ttl_s")]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await portal.stack.services.invoice.CreatePortalLink(request, metadata=portal.stack.md)
        assert info.value.code() == code and field in (info.value.details() or "")
    link = await portal.link("anna")
    assert link.url.endswith(f"/s/{link.token}") and link.ledger_account_id == "acct-anna"


async def test_the_usage_page_shows_cost_and_credits_per_day(portal: Portal) -> None:
    invoice = await portal.stack.invoice(portal.invoice_id)
    usage_lines = [li for li in invoice.line_items if li.kind == ipb.USAGE]
    async with portal.signed_in("john-wick") as web:
        page = (await web.get("/usage")).text
    assert "Usage, cost and credits per day" in page
    costs = re.findall(r'<td class="num cost">([0-9.]+) USD</td>', page)
    credits = re.findall(r'<td class="num credits">([0-9.]+) USD</td>', page)
    assert costs and len(costs) == len(credits)  # a row per day with usage (the seed: 20 days of 2 meters)
    assert sum(map(Decimal, costs)) == sum(Decimal(li.amount) for li in usage_lines)
    assert sum(map(Decimal, credits)) == sum(Decimal(li.credits_applied) for li in usage_lines)
    async with portal.signed_in("anna") as web:
        page = (await web.get("/usage")).text
    assert "not invoiced yet" in page and not re.findall(r'<td class="num cost">[0-9.]+ USD</td>', page)


async def test_probes_answer_without_a_session(portal: Portal) -> None:
    async with portal.client() as web:
        alive, ready = await web.get("/healthz"), await web.get("/readyz")
    assert (alive.status_code, alive.text) == (200, "ok") and (ready.status_code, ready.text) == (200, "ok")


async def test_a_revoked_link_is_refused_at_once_and_only_that_link(portal: Portal) -> None:
    revoked, kept = await portal.link("john-wick"), await portal.link("john-wick")
    async with portal.client() as web, portal.client() as other:
        assert (await web.get(f"/s/{revoked.token}")).status_code == 303
        assert (await other.get(f"/s/{kept.token}")).status_code == 303
        assert (await web.get("/invoices")).status_code == 200
        ledger = portal.stack.services.ledger
        done = await ledger.RevokePortalLink(lpb.RevokePortalLinkRequest(
            idempotency_key="revoke-1", link=revoked.url, reason="sent to the wrong person"), metadata=portal.stack.md)
        assert (done.customer_id, done.account_id, done.reason) == ("john-wick", "acct-john-wick",
                                                                    "sent to the wrong person")
        for path in ("/", "/invoices", f"/invoices/{portal.invoice_id}", "/usage", "/statement.csv", "/events"):
            page = await web.get(path)  # the very next request, on every page
            assert page.status_code == 403 and "This link has been revoked" in page.text, path
        assert (await web.get(f"/s/{revoked.token}")).status_code == 403  # opening it again opens nothing
        assert (await other.get("/invoices")).status_code == 200  # the customer's other link still works
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # the service itself refuses the session
        await ledger.GetBalance(lpb.GetBalanceRequest(account_id="acct-john-wick"),
                                metadata=[("x-api-key", revoked.token)])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (refused.value.details() or "")
    again = await ledger.RevokePortalLink(lpb.RevokePortalLinkRequest(idempotency_key="revoke-2", link=revoked.token),
                                          metadata=portal.stack.md)
    assert (again.session_id, again.revoked_at, again.reason) == (done.session_id, done.revoked_at, done.reason)
    for link, field in (("", "link"), (revoked.token[:-4] + "AAAA", "link")):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await ledger.RevokePortalLink(lpb.RevokePortalLinkRequest(idempotency_key=f"bad-{len(link)}", link=link),
                                          metadata=portal.stack.md)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (bad.value.details() or "")


async def test_a_revoked_links_token_is_refused_by_the_invoice_service_too(portal: Portal) -> None:
    """Straight at the invoice gRPC API, not through the portal: the invoice service asks the ledger
    (invoice_service/portal_revocations.py) and refuses the revoked session as the ledger does, within
    its documented cache (CREDITS_PORTAL_REVOCATION_CACHE_S, 1 s); the customer's other link and another
    customer's link keep reading, and API keys are not involved."""
    revoked, kept, anna = await portal.link("john-wick"), await portal.link("john-wick"), await portal.link("anna")
    invoices, ledger = portal.stack.services.invoice, portal.stack.services.ledger

    async def read(link: ipb.PortalLink, customer: str) -> ipb.ListInvoicesResponse:
        return await invoices.ListInvoices(ipb.ListInvoicesRequest(customer_id=customer),
                                           metadata=[("x-api-key", link.token)])

    assert [i.invoice_id for i in (await read(revoked, "john-wick")).invoices] == [portal.invoice_id]
    await ledger.RevokePortalLink(lpb.RevokePortalLinkRequest(idempotency_key="revoke-inv", link=revoked.url,
                                                              reason="leaked"), metadata=portal.stack.md)
    await asyncio.sleep(Settings().portal_revocation_cache_s + 0.1)  # the last "not revoked" the service may trust
    with pytest.raises(grpc.aio.AioRpcError) as by_ledger:
        await ledger.GetBalance(lpb.GetBalanceRequest(account_id="acct-john-wick"),
                                metadata=[("x-api-key", revoked.token)])
    for method, request in (("ListInvoices", ipb.ListInvoicesRequest(customer_id="john-wick")),
                            ("GetInvoice", ipb.GetInvoiceRequest(invoice_id=portal.invoice_id)),
                            ("GetCustomer", ipb.GetCustomerRequest(customer_id="john-wick"))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(invoices, method)(request, metadata=[("x-api-key", revoked.token)])
        assert refused.value.code() == by_ledger.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert refused.value.details() == by_ledger.value.details() == "x-api-key: portal link revoked", method
    assert [i.invoice_id for i in (await read(kept, "john-wick")).invoices] == [portal.invoice_id]
    assert [i.invoice_id for i in (await read(anna, "anna")).invoices] == [portal.draft_id]
    listed = await invoices.ListInvoices(ipb.ListInvoicesRequest(customer_id="john-wick"), metadata=portal.stack.md)
    assert portal.invoice_id in [i.invoice_id for i in listed.invoices]  # an API key needs no ledger


async def test_creditctl_portal_revoke_ends_a_link(portal: Portal) -> None:
    link = await portal.link("anna")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
           "CREDITS_LEDGER_ADDR": portal.stack.ledger_addr, "CREDITS_API_KEY": portal.stack.md[0][1]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "creditctl", "portal", "revoke", link.url, "--reason", "left the company", "--json",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    shown = json.loads(out)
    assert (shown["customer_id"], shown["reason"]) == ("anna", "left the company")
    async with portal.client() as web:
        assert (await web.get(f"/s/{link.token}")).status_code == 403
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "creditctl", "portal", "revoke", "https://portal.example/s/ps1.bogus.sig", cwd=ROOT,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0 and "INVALID_ARGUMENT" in err.decode() and "link" in err.decode()
    assert "Traceback" not in err.decode()


async def test_a_revoked_links_live_balance_ends_at_the_next_change(portal: Portal) -> None:
    link = await portal.link("john-wick")
    ledger = portal.stack.services.ledger
    stream = ledger.WatchBalance(lpb.WatchBalanceRequest(account_id="acct-john-wick"),
                                 metadata=[("x-api-key", link.token)])
    first = await stream.read()
    assert first.type == lpb.CHANGE_SNAPSHOT
    await ledger.RevokePortalLink(lpb.RevokePortalLinkRequest(idempotency_key="rv", link=link.url),
                                  metadata=portal.stack.md)
    await ledger.GrantCredits(lpb.GrantCreditsRequest(  # the account's next change
        idempotency_key="after-revoke", account_id="acct-john-wick", type=lpb.PURCHASED, unit="USD",
        amount="1.00"), metadata=portal.stack.md)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(stream.read(), 20)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (ended.value.details() or "")


async def test_an_invoice_page_shows_its_discounts_and_tax(portal: Portal) -> None:
    s, md = portal.stack.services, portal.stack.md
    await s.invoice.SetTaxRule(ipb.SetTaxRuleRequest(idempotency_key="t", region="NL", name="BTW 21%", rate="21",
                                                     inclusive=True), metadata=md)
    await s.invoice.SetCustomerTaxRegion(ipb.SetCustomerTaxRegionRequest(
        idempotency_key="tr", customer_id="anna", tax_region="NL"), metadata=md)
    await s.invoice.CreateCoupon(ipb.CreateCouponRequest(idempotency_key="c",
        coupon_code="WELCOME10", percent_off="10"), metadata=md)
    august = (await portal_draft(portal)).period_start
    await s.invoice.RedeemCoupon(ipb.RedeemCouponRequest(idempotency_key="r", customer_id="anna",
                                                         coupon_code="WELCOME10", redeemed_at=august), metadata=md)
    draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(idempotency_key="again", customer_id="anna",
                                                               period_start=august), metadata=md)
    # anna's August usage, 40.00 + 60.00, 10% off: 36.00 + 54.00 = 90.00, which includes 21% per line:
    # 36.00 - round(36 / 1.21 = 29.752) = 6.25 and 54.00 - round(54 / 1.21 = 44.628) = 9.37, 15.62 in all
    assert (draft.discounts, draft.tax, draft.amount_due) == ("10.00", "15.62", "90.00")
    async with portal.signed_in("anna") as web:
        page = await web.get(f"/invoices/{portal.draft_id}")
    assert "discounts <strong>10.00</strong>" in page.text
    assert "BTW 21% <strong>15.62</strong> (included)" in page.text


async def portal_draft(portal: Portal) -> ipb.Invoice:
    return await portal.stack.services.invoice.GetInvoice(ipb.GetInvoiceRequest(invoice_id=portal.draft_id),
                                                          metadata=portal.stack.md)
