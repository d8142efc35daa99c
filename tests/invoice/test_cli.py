"""creditctl invoices list/show against the real server."""

from __future__ import annotations

import asyncio

import pytest
from credits.invoice.v1 import invoice_pb2 as pb

from creditctl.main import main
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when


async def test_invoices_list_and_show(env: InvoiceEnv, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    await seed_catalog(env)
    await env.call("IngestEvent", pb.IngestEventRequest(event=event("e", "output_tokens", "1000000", when(3))))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    monkeypatch.setenv("CREDITS_INVOICE_ADDR", f"127.0.0.1:{env.port}")
    monkeypatch.setenv("CREDITS_API_KEY", env.key)
    assert await asyncio.to_thread(main, ["invoices", "list", "--status", "DRAFT"]) == 0
    listed = capsys.readouterr().out
    assert draft.invoice_id in listed and "30.00" in listed
    assert await asyncio.to_thread(main, ["invoices", "show", draft.invoice_id]) == 0
    shown = capsys.readouterr().out
    assert "Amount due" in shown and "30.00" in shown
    with pytest.raises(SystemExit, match="NOT_FOUND"):
        await asyncio.to_thread(main, ["invoices", "show", "inv_missing"])
