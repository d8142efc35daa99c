"""Issue #10's repro on a `creditctl up` stack, as a new user meets it: the stack runs as its own OS
process with its own schedules (ExpireCredits every 5 minutes); everything here goes through the
public gRPC APIs and the CLI. The stack's own expiry schedule is triggered after the period ended and
before the finalization — the worst moment — and again after it.

PROMOTIONAL 30.00 USD effective before the period, expiring on day 14; 20.00 of usage on day 3 and
20.00 on day 17. Expected: 20.00 paid by the promo, 20.00 due, 10.00 breakage (SPEC §4)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client

from coordinator.schedules import EXPIRE_SCHEDULE
from stack.scenario import Services, seed_catalog, ts

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 40 * 86400  # late usage for a period that ended days ago is still accepted
# The period ended about five days ago; day 14 (the lot's expiry) is long past.
ANCHOR = (datetime.now(UTC) - timedelta(days=36)).replace(hour=0, minute=0, second=0, microsecond=0)


def day(n: int) -> datetime:
    return ANCHOR + timedelta(days=n - 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UpStack:
    process: asyncio.subprocess.Process
    env: dict[str, str]
    addresses: dict[str, str]


async def _creditctl(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl.main", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _read_banner(process: asyncio.subprocess.Process) -> dict[str, str]:
    assert process.stdout is not None
    addresses: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        assert line, "creditctl up exited before it was up"
        if line.startswith("Ctrl-C"):
            return addresses
        if line.startswith("  "):
            name, _, value = line.strip().rpartition("  ")
            addresses[name.strip()] = value.strip()


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[UpStack]:
    env = {**os.environ, "CREDITS_DATA_DIR": str(tmp_path / "data"),
           "CREDITS_EMBEDDED_PG_PORT": str(_free_port()), "CREDITS_TEMPORAL_UI_PORT": str(_free_port()),
           "CREDITS_TEMPORAL_PORT": "0",
           "CREDITS_LEDGER_ADDR": "127.0.0.1:0", "CREDITS_INVOICE_ADDR": "127.0.0.1:0",
           "CREDITS_PORTAL_ADDR": "127.0.0.1:0",
           "CREDITS_BILLING_ADDR": "127.0.0.1:0", "CREDITS_USAGE_GRACE_S": str(GRACE_S)}
    for name in ("CREDITS_LEDGER_DSN", "CREDITS_INVOICE_DSN", "CREDITS_TEMPORAL_ADDR", "CREDITS_API_KEY"):
        env.pop(name, None)
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl.main", "up", cwd=ROOT, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        yield UpStack(process, env, await _read_banner(process))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _sweep(client: Client) -> None:
    """Runs the stack's own ExpireCredits schedule now and waits for that run to finish."""
    schedule = client.get_schedule_handle(EXPIRE_SCHEDULE)
    before = len((await schedule.describe()).info.recent_actions)
    await schedule.trigger()
    for _ in range(300):
        actions = (await schedule.describe()).info.recent_actions
        if len(actions) > before:
            started = actions[-1].action
            await client.get_workflow_handle(started.workflow_id, run_id=started.first_execution_run_id).result()
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the expiry schedule did not start a run")


async def test_the_repro_on_a_creditctl_up_stack(up: UpStack) -> None:
    created = json.loads(await _creditctl(up.env, "tenants", "create", "acme", "--json"))
    channels = [grpc.aio.insecure_channel(up.addresses[n]) for n in ("ledger gRPC", "invoice gRPC",
                                                                      "billing front door gRPC")]
    s = Services(ledger_pb2_grpc.LedgerServiceStub(channels[0]), invoice_pb2_grpc.InvoiceServiceStub(channels[1]),
                 created["api_key"])
    front = billing_pb2_grpc.BillingServiceStub(channels[2])
    client = await Client.connect(up.addresses["temporal"])
    try:
        await seed_catalog(s)  # plan chatppt-pro: input tokens at 0.00001 USD
        await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key="acct", account_id="acct-repro"),
                                     metadata=s.md)
        promo = await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
            idempotency_key="promo", account_id="acct-repro", type=lpb.PROMOTIONAL, unit="USD", amount="30.00",
            effective_at=ts(day(-4)), expires_at=ts(day(14))), metadata=s.md)
        await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(
            idempotency_key="cust", customer_id="repro", name="Repro", ledger_account_id="acct-repro"), metadata=s.md)
        await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
            idempotency_key="sub", subscription_id="sub-repro", customer_id="repro", plan_id="chatppt-pro",
            anchor=ts(ANCHOR)), metadata=s.md)
        events = [ipb.UsageEvent(event_id=f"repro-{d}", customer_id="repro", meter_code="input_tokens",
                                 quantity="2000000", timestamp=ts(day(d) + timedelta(hours=12))) for d in (3, 17)]
        await s.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key="usage", events=events), metadata=s.md)

        await _sweep(client)  # after the lot's expiry and the period's end, before any invoice
        bal = (await s.ledger.GetBalance(lpb.GetBalanceRequest(account_id="acct-repro"), metadata=s.md)).totals[0]
        assert (bal.available, bal.pending_expiry, bal.expired) == ("0.00", "30.00", "0.00")

        draft = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
            idempotency_key="draft", customer_id="repro", period_start=ts(ANCHOR)), metadata=s.md)
        assert draft.subtotal == "40.00"
        op = await front.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=draft.invoice_id, wait=True,
                                                                     wait_timeout_s=60), metadata=s.md)
        assert op.status == bpb.COMPLETED, op.error
        inv = await s.invoice.GetInvoice(ipb.GetInvoiceRequest(invoice_id=draft.invoice_id), metadata=s.md)
        assert (inv.status, inv.subtotal, inv.credits_applied, inv.amount_due) == (
            ipb.FINALIZED, "40.00", "20.00", "20.00")
        assert {a.lot_id for a in inv.applications} == {promo.lot_id}

        await _sweep(client)  # the period is settled now: the remainder is breakage
        lot = await s.ledger.GetLot(lpb.GetLotRequest(lot_id=promo.lot_id), metadata=s.md)
        assert (lot.balance.consumed, lot.balance.expired, lot.balance.pending_expiry) == ("20.00", "10.00", "0.00")
        verified = await s.ledger.VerifyJournal(lpb.VerifyJournalRequest(), metadata=s.md)
        assert verified.ok, verified.violations

        # the customer portal `up` started and printed: a link minted with the CLI opens the customer's page
        portal_url = up.addresses["customer portal"].split()[0]
        cli_env = {**up.env, "CREDITS_API_KEY": created["api_key"],
                   "CREDITS_INVOICE_ADDR": up.addresses["invoice gRPC"]}
        link = (await _creditctl(cli_env, "portal", "link", "repro", "--ttl", "10m", "-q")).strip()
        assert link.startswith(f"{portal_url}/s/ps1."), link
        async with httpx.AsyncClient(follow_redirects=True, timeout=20) as web:
            page = await web.get(link)
        assert page.status_code == 200 and "Repro" in page.text and "Consumption" not in page.text
    finally:
        for channel in channels:
            await channel.close()
