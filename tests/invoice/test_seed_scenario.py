"""The seed scenario: John Wick on ChatPPT, August usage worth $100, a $50 credit on usage meters."""

from __future__ import annotations

import json

from credits.invoice.v1 import invoice_pb2 as pb

from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when


async def test_john_wick_invoice_shows_50_credits_and_50_due(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    # 4M input tokens at $0.00001 = $40; 2M output tokens at $0.00003 = $60.
    events = [event(f"in-{d}", "input_tokens", "200000", when(d, 12)) for d in range(1, 21)]
    events += [event(f"out-{d}", "output_tokens", "100000", when(d, 18)) for d in range(1, 21)]
    result = await env.call("IngestEvents", pb.IngestEventsRequest(events=events))
    assert result.accepted == 40 and result.duplicates == 0

    draft = await env.call("CreateDraft", pb.CreateDraftRequest(
        idempotency_key="draft-1", customer_id="john-wick", period_start=ts(when(1))))
    assert draft.status == pb.DRAFT
    assert [(i.code, i.quantity, i.amount) for i in draft.line_items] == [
        ("input_tokens", "4000000", "40.00"), ("output_tokens", "2000000", "60.00")]
    assert draft.subtotal == "100.00" and draft.amount_due == "100.00"
    assert draft.period_end == ts(when(1, month=9))

    split = await env.call("SplitDraft", pb.SplitDraftRequest(invoice_id=draft.invoice_id))
    assert [(c.charge_id, c.kind, c.name, c.amount) for c in split.charges] == [
        ("L001#1", pb.USAGE, "input_tokens", "40.00"), ("L002#1", pb.USAGE, "output_tokens", "60.00")]
    # The ledger reserved $50 from one promotional lot scoped to the usage meters: $40 + $10.
    prepared = await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="prep-1", invoice_id=draft.invoice_id, draft_digest=split.draft_digest,
        applications=[
            pb.CreditApplication(charge_id="L001#1", lot_id="lot-promo-1", lot_type="PROMOTIONAL", amount="40.00"),
            pb.CreditApplication(charge_id="L002#1", lot_id="lot-promo-1", lot_type="PROMOTIONAL", amount="10"),
        ]))
    assert prepared.status == pb.PREPARED
    assert (prepared.subtotal, prepared.credits_applied, prepared.amount_due) == ("100.00", "50.00", "50.00")
    final = await env.call("CommitFinalize", pb.CommitFinalizeRequest(
        idempotency_key="commit-1", invoice_id=draft.invoice_id, prepare_key="prep-1"))
    assert final.status == pb.FINALIZED and final.number == "INV-000001"
    assert [(i.credits_applied, i.amount_due) for i in final.line_items] == [("40.00", "0.00"), ("10.00", "50.00")]

    text = await env.call("RenderInvoice", pb.RenderInvoiceRequest(invoice_id=draft.invoice_id, format=pb.TEXT))
    assert "Invoice INV-000001" in text.content
    assert "credit promotional lot lot-promo-1" in text.content
    lines = {line.split("  ")[0]: line.split()[-1] for line in text.content.splitlines() if line}
    assert lines["Subtotal"] == "100.00" and lines["Credits applied"] == "-50.00"
    assert lines["Amount due"] == "50.00"

    rendered = json.loads((await env.call("RenderInvoice", pb.RenderInvoiceRequest(
        invoice_id=draft.invoice_id, format=pb.JSON))).content)
    assert (rendered["subtotal"], rendered["credits_applied"], rendered["amount_due"]) == ("100.00", "50.00", "50.00")
    assert rendered["line_items"][1]["credits"] == [
        {"lot_id": "lot-promo-1", "lot_type": "PROMOTIONAL", "charge_id": "L002#1", "amount": "10.00"}]
