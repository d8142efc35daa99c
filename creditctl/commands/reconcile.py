"""creditctl reconcile: cross-check ledger, invoices and Temporal once the system is quiet (SPEC §11).

Reads both service databases (CREDITS_LEDGER_DSN / CREDITS_INVOICE_DSN, or the embedded Postgres
of `creditctl up`) and Temporal (--temporal, else CREDITS_TEMPORAL_ADDR, else the one `creditctl
up` starts) and prints every violation with the ids to look at; exit 1 when any.
"""

from __future__ import annotations

import asyncio

import click

from creditctl.connection import load_settings
from creditctl.help_listing import Command
from creditctl.output import print_json
from service_runtime.databases import resolve_databases
from service_runtime.settings import Settings

DEFAULT_TEMPORAL = "127.0.0.1:7233"


async def _reconcile(settings: Settings, temporal_addr: str, as_json: bool) -> int:
    from temporalio.client import Client

    from reconciler.run import reconcile

    dbs = resolve_databases(settings, start_embedded=False)
    client: Client | None = None
    note = ""
    try:
        client = await asyncio.wait_for(Client.connect(temporal_addr, namespace=settings.temporal_namespace), 5)
    except Exception as exc:  # reported; the database checks still run
        note = f"temporal at {temporal_addr} unreachable ({exc}); decision and quiet checks skipped"
    report = await reconcile(dbs.ledger_dsn, dbs.invoice_dsn, client)
    if as_json:
        print_json({**report.as_dict(), "note": note})
    else:
        if note:
            click.echo(note, err=True)
        click.echo(report.render())
    return 0 if report.ok else 1


@click.command("reconcile", cls=Command, help="cross-check ledger, invoices and Temporal once the system is quiet")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option("--temporal", default="", help=f"Temporal frontend (default: settings, else {DEFAULT_TEMPORAL})")
def command(as_json: bool, temporal: str) -> int:
    settings = load_settings()
    return asyncio.run(_reconcile(settings, temporal or settings.temporal_addr or DEFAULT_TEMPORAL, as_json))
