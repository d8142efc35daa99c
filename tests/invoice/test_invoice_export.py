"""ExportInvoices against the real invoice server: every matching invoice once, in keyset pages of
EXPORT_PAGE (shrunk here so five invoices take three pages), as CSV or JSON lines, per invoice or per
line item (credits applied per line add up to the invoice's); filters; refusals; the CLI to a file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.api import servicer
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when

ROOT = Path(__file__).resolve().parents[2]


async def _export(env: InvoiceEnv, **fields: object) -> tuple[bytes, list[pb.InvoiceExportChunk]]:
    chunks = [c async for c in env.stub.ExportInvoices(pb.ExportInvoicesRequest(**fields), metadata=env.md)]  # type: ignore[arg-type]
    return b"".join(c.data for c in chunks), chunks


async def _five_invoices(env: InvoiceEnv) -> str:
    """john-wick: Aug..Nov drafts, August finalized with 1.00 of credit on its first line; anna: one draft."""
    await seed_catalog(env, anchor=when(1))
    await seed_catalog(env, customer_id="anna", anchor=when(1), plan=pb.CreatePlanRequest(plan_id="chatppt-pro"))
    await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("a1", "input_tokens", "300000", when(3)), event("a2", "output_tokens", "100000", when(4)),
        event("s1", "input_tokens", "100000", when(3, month=9)),
        event("b1", "input_tokens", "5", when(3), customer_id="anna")]))
    ids = []
    for month in (8, 9, 10, 11):
        draft = await env.call("CreateDraft", pb.CreateDraftRequest(
            idempotency_key=f"d{month}", customer_id="john-wick", period_start=ts(when(1, month=month))))
        ids.append(draft.invoice_id)
    await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="da", customer_id="anna",
                                                        period_start=ts(when(1))))
    await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="prep", invoice_id=ids[0], applications=[pb.CreditApplication(
            charge_id="L001#1", lot_id="lot-1", lot_type="PROMOTIONAL", amount="1.00")]))
    await env.call("CommitFinalize", pb.CommitFinalizeRequest(idempotency_key="c", invoice_id=ids[0]))
    return ids[0]


async def test_every_invoice_once_in_keyset_pages(env: InvoiceEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servicer, "EXPORT_PAGE", 2)
    august = await _five_invoices(env)
    listed = await env.call("ListInvoices", pb.ListInvoicesRequest(page_size=100))
    data, chunks = await _export(env)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["invoice_id"] for r in rows] == [i.invoice_id for i in listed.invoices]  # each once, in order
    assert [c.invoices_done for c in chunks] == [2, 4, 5] and {c.invoices_total for c in chunks} == {5}
    first = rows[0]
    assert (first["invoice_id"], first["status"], first["number"], first["subtotal"], first["credits_applied"],
            first["amount_due"]) == (august, "FINALIZED", "INV-000001", "6.00", "1.00", "5.00")
    assert first["finalized_at"].endswith("Z") and first["voided_at"] == ""
    data, _ = await _export(env, format=pb.INVOICE_EXPORT_JSON, customer_id="anna")
    assert [json.loads(line)["customer_id"] for line in data.decode().splitlines()] == ["anna"]
    data, chunks = await _export(env, statuses=[pb.VOIDED])
    assert data.decode().startswith("invoice_id,number,") and data.count(b"\n") == 1 and chunks[-1].invoices_done == 0


async def test_line_items_carry_their_credits(env: InvoiceEnv) -> None:
    august = await _five_invoices(env)
    data, _ = await _export(env, line_items=True, statuses=[pb.FINALIZED], format=pb.INVOICE_EXPORT_JSON)
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [(r["invoice_id"], r["line_item_id"], r["code"], r["amount"], r["credits_applied"], r["amount_due"])
            for r in lines] == [(august, "L001", "input_tokens", "3.00", "1.00", "2.00"),
                                (august, "L002", "output_tokens", "3.00", "0.00", "3.00")]
    invoice = await env.call("GetInvoice", pb.GetInvoiceRequest(invoice_id=august))
    assert sum(Decimal(r["credits_applied"]) for r in lines) == Decimal(invoice.credits_applied)


@pytest.mark.parametrize(("fields", "field"), [
    ({"format": 9}, "format"), ({"customer_id": "bad id!"}, "customer_id"), ({"statuses": [0]}, "statuses[0]")])
async def test_export_refusals(env: InvoiceEnv, fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _export(env, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (info.value.details() or "")


async def test_the_cli_writes_the_export_to_a_file(env: InvoiceEnv, tmp_path: Path) -> None:
    await _five_invoices(env)
    cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
               "CREDITS_INVOICE_ADDR": f"127.0.0.1:{env.port}", "CREDITS_API_KEY": env.key}
    out = tmp_path / "invoices.csv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "creditctl", "invoices", "export", "--csv", "-o", str(out), "--customer", "john-wick",
        cwd=ROOT, env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 4 and {r["customer_id"] for r in rows} == {"john-wick"}
    assert f"wrote {out.stat().st_size:,} bytes" in stderr.decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "creditctl", "invoices", "export", cwd=ROOT, env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "needs --csv or --json" in stderr.decode()


