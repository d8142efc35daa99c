"""creditctl demo: a throw-away stack, the seed scenario finalized through the saga, the invoice printed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.help_listing import Command
from service_runtime.api_keys import mint_key, store_tenant_key
from service_runtime.embedded_postgres import free_port
from service_runtime.postgres import create_pool
from service_runtime.settings import Settings
from service_runtime.tls import open_channel

if TYPE_CHECKING:
    from stack.launcher import RunningStack

DEMO_GRACE_S = 400 * 24 * 3600  # the seed scenario bills August 2026 usage
TENANT = "chatppt"


def _settings(data_dir: Path) -> Settings:
    """Everything on fresh ports, so the demo runs next to a `creditctl up`."""
    return Settings(data_dir=data_dir, ledger_dsn="", invoice_dsn="", embedded_pg_port=free_port(),
                    ledger_addr="127.0.0.1:0", invoice_addr="127.0.0.1:0", billing_addr="127.0.0.1:0",
                    temporal_addr="", temporal_port=0, temporal_ui_port=free_port(), task_queue="credits-demo",
                    portal_addr="127.0.0.1:0")


async def _admin_key(stack: RunningStack) -> str:
    """The demo tenant with an admin key, in both service databases."""
    key_id, key, key_hash = mint_key()
    for dsn in (stack.ledger_dsn, stack.invoice_dsn):
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            await store_tenant_key(pool, TENANT, "ChatPPT", key_id, key_hash, "admin")
        finally:
            await pool.close()
    return key


async def _seed_and_finalize(stack: RunningStack, key: str) -> int:
    """Seeds John Wick's August, finalizes the draft through the front door and prints the invoice."""
    from stack.scenario import Services, seed_catalog, seed_customer

    lch, ich, bch = (open_channel(a) for a in (stack.ledger_addr, stack.invoice_addr, stack.billing_addr))
    try:
        s = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), key)
        await seed_catalog(s)
        invoice_id = await seed_customer(s)
        click.echo(f"seeded: John Wick on ChatPPT, Aug 2026 usage worth $100, $50 referral credit; draft {invoice_id}")
        op = await billing_pb2_grpc.BillingServiceStub(bch).FinalizeInvoice(
            bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True, wait_timeout_s=60), metadata=s.md)
        if op.status != bpb.COMPLETED:
            click.echo(f"finalization did not complete: {bpb.OperationStatus.Name(op.status)} {op.error}")
            return 1
        text = await s.invoice.RenderInvoice(ipb.RenderInvoiceRequest(invoice_id=invoice_id, format=ipb.TEXT),
                                             metadata=s.md)
        inv = await s.invoice.GetInvoice(ipb.GetInvoiceRequest(invoice_id=invoice_id), metadata=s.md)
    finally:
        for ch in (lch, ich, bch):
            await ch.close()
    click.echo()
    click.echo(text.content)
    click.echo(f"total {inv.subtotal}, credits {inv.credits_applied}, due {inv.amount_due}")
    click.echo(f"saga workflow: {op.operation_id}")
    click.echo(f"Temporal UI:   {op.ui_url}")
    return 0 if (inv.subtotal, inv.credits_applied, inv.amount_due) == ("100.00", "50.00", "50.00") else 1


def keep_up_by_default() -> bool:
    """Keep the stack up after the demo only for a person at a terminal: not in CI, not with stdin piped."""
    return sys.stdin.isatty() and not os.environ.get("CI")


async def _until_interrupted(say: str) -> None:
    """Says `say`, then waits for Ctrl-C (SIGINT) or SIGTERM. The handlers are in place before the line
    is out: a Ctrl-C sent as soon as it is read stops the stack cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        click.echo(say)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _demo(keep_up: bool) -> int:
    from stack.launcher import running_stack

    with tempfile.TemporaryDirectory(prefix="credits-demo-") as tmp:
        click.echo(f"starting the stack in {tmp} ...")
        async with running_stack(_settings(Path(tmp)), usage_grace_s=DEMO_GRACE_S, schedules=False,
                                 portal=False) as stack:
            for name, value in stack.addresses.items():
                click.echo(f"  {name:<26} {value}")
            status = await _seed_and_finalize(stack, await _admin_key(stack))
            if keep_up:
                await _until_interrupted("\nThe stack stays up so the Temporal UI link above opens the saga; "
                                         "Ctrl-C stops it.")
                click.echo("stopping ...")
        click.echo("stack stopped.")
        return status


@click.command("demo", cls=Command, help="start a throw-away stack, finalize the seed invoice, print it")
@click.option("--verbose", is_flag=True)  # accepted as it always was; the demo prints the same either way
@click.option("--keep-up/--no-keep-up", default=None,
              help="after the demo keep the stack up until Ctrl-C, so the Temporal UI link works "
                   "[default: keep up at a terminal, exit when stdin is not a TTY or CI is set]")
def command(verbose: bool, keep_up: bool | None) -> int:
    return asyncio.run(_demo(keep_up_by_default() if keep_up is None else keep_up))
