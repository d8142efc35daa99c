"""Under `creditctl up` (stack.launcher.running_stack, what `up` runs), the database gauges are
refreshed as in the standalone servers: with a pending hold, a lot expiring within a day and a
PREPARED invoice, the stack's own metrics endpoint shows each of them."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from service_runtime import metrics
from service_runtime.proto_time import to_timestamp
from service_runtime.settings import Settings
from stack.launcher import add_tenant_key, running_stack
from stack.scenario import Services, seed_catalog, seed_customer

GAUGES = ("credits_ledger_holds_pending", "credits_ledger_lots_expiring_24h", "credits_invoice_prepared")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gauges(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(GAUGES)}


async def _pending_hold_and_expiring_lot(s: Services) -> None:
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key="a", account_id="gauged"), metadata=s.md)
    await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
        idempotency_key="g", account_id="gauged", type=lpb.PURCHASED, unit="USD", amount="10.00",
        expires_at=to_timestamp(datetime.now(UTC) + timedelta(hours=12))), metadata=s.md)
    await s.ledger.ReserveCredits(lpb.ReserveCreditsRequest(
        idempotency_key="r", hold_key="pending-hold", account_id="gauged", unit="USD",
        charges=[lpb.Charge(kind=lpb.USAGE, amount="1.00")]), metadata=s.md)


async def _prepared_invoice(s: Services) -> None:
    await seed_catalog(s)
    draft = await seed_customer(s, credit="")
    split = await s.invoice.SplitDraft(ipb.SplitDraftRequest(invoice_id=draft), metadata=s.md)
    prepared = await s.invoice.PrepareFinalize(ipb.PrepareFinalizeRequest(
        idempotency_key="prep", invoice_id=draft, draft_digest=split.draft_digest), metadata=s.md)
    assert prepared.status == ipb.PREPARED


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory of this test's own (pytest's shared base directory is pruned by other runs)."""
    path = Path(tempfile.mkdtemp(prefix="credits-up-gauges-"))
    try:
        yield path / "data"
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_gauges_are_refreshed_under_up(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITS_METRICS_ADDR", "127.0.0.1:0")
    settings = Settings(data_dir=data_dir, ledger_dsn="", invoice_dsn="", temporal_addr="",
                        embedded_pg_port=_free_port(), temporal_ui_port=_free_port(), ledger_addr="127.0.0.1:0",
                        invoice_addr="127.0.0.1:0", billing_addr="127.0.0.1:0")
    async with running_stack(settings, schedules=False, usage_grace_s=400 * 86400, gauges_every_s=0.2,
                             portal=False) as stack:
        url = stack.addresses["metrics"]
        key = await add_tenant_key([stack.ledger_dsn, stack.invoice_dsn], "acme", "acme", "admin")
        async with grpc.aio.insecure_channel(stack.ledger_addr) as lch, \
                grpc.aio.insecure_channel(stack.invoice_addr) as ich:
            s = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), key)
            await _pending_hold_and_expiring_lot(s)
            await _prepared_invoice(s)
        for gauge in (metrics.HOLDS_PENDING, metrics.LOTS_EXPIRING, metrics.INVOICES_PREPARED):
            gauge.set(-1)  # whatever the endpoint shows next, the stack's refresh wrote it
        seen: dict[str, float] = {}
        for _ in range(100):
            seen = await asyncio.to_thread(_gauges, url)
            if all(seen.get(g) == 1.0 for g in GAUGES):
                break
            await asyncio.sleep(0.1)
        assert seen == {g: 1.0 for g in GAUGES}
