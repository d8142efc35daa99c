"""ListSettlements: per ledger account, up to when its invoiced usage is final (issue #10, SPEC §4)."""

from __future__ import annotations

from credits.invoice.v1 import invoice_pb2 as pb

from tests.invoice.conftest import InvoiceEnv, seed_catalog, ts, when


async def _finalize(env: InvoiceEnv, customer_id: str, month: int, tag: str) -> None:
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(
        idempotency_key=f"d-{tag}", customer_id=customer_id, period_start=ts(when(1, month=month))))
    await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key=f"p-{tag}",
                                                                invoice_id=draft.invoice_id))
    await env.call("CommitFinalize", pb.CommitFinalizeRequest(idempotency_key=f"c-{tag}", invoice_id=draft.invoice_id,
                                                              prepare_key=f"p-{tag}"))


async def test_invoiced_through_is_the_first_period_not_finalized(env: InvoiceEnv) -> None:
    await seed_catalog(env)  # john-wick on acct-john-wick, monthly from 2026-08-01
    await seed_catalog(env, plan=pb.CreatePlanRequest(plan_id="chatppt-pro"), customer_id="ana",
                       anchor=when(15, month=7))
    await env.call("CreateCustomer", pb.CreateCustomerRequest(  # no subscription: not billed by invoices
        idempotency_key="c-rt", customer_id="rt", name="Real time", ledger_account_id="acct-rt"))
    first = await env.call("ListSettlements", pb.ListSettlementsRequest())
    assert [(s.ledger_account_id, s.invoiced_through) for s in first.settlements] == [
        ("acct-ana", ts(when(15, month=7))), ("acct-john-wick", ts(when(1)))]
    await _finalize(env, "john-wick", 8, "aug")
    await _finalize(env, "john-wick", 10, "oct")  # September is still open: it holds the line
    after = await env.call("ListSettlements", pb.ListSettlementsRequest())
    assert dict((s.ledger_account_id, s.invoiced_through) for s in after.settlements)["acct-john-wick"] == \
        ts(when(1, month=9))
    # Pages of accounts.
    page = await env.call("ListSettlements", pb.ListSettlementsRequest(page_size=1))
    assert [s.ledger_account_id for s in page.settlements] == ["acct-ana"] and page.next_page_token
    rest = await env.call("ListSettlements", pb.ListSettlementsRequest(page_size=1, page_token=page.next_page_token))
    assert [s.ledger_account_id for s in rest.settlements] == ["acct-john-wick"]
    last = await env.call("ListSettlements", pb.ListSettlementsRequest(page_size=1, page_token=rest.next_page_token))
    assert not last.settlements and not last.next_page_token
