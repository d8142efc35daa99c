"""creditctl reconcile: cross-check ledger, invoices and Temporal once the system is quiet (SPEC §11).

Reads both service databases (CREDITS_LEDGER_DSN / CREDITS_INVOICE_DSN, or the embedded Postgres
of `creditctl up`) and Temporal (--temporal, else CREDITS_TEMPORAL_ADDR, else the address the running
`creditctl up` recorded in its data directory, else 127.0.0.1:CREDITS_TEMPORAL_PORT) and prints every
violation with the ids to look at.

Exit status: 0 every check ran and found nothing; 1 violations; 2 a check could not run (Temporal or
a database unreachable) and found nothing else — "no violations" from a run that skipped checks is not a pass.
`--skip-temporal` skips the Temporal checks on purpose (then 0 is a pass of the database checks).
"""

from __future__ import annotations

import asyncio

import asyncpg
import click

from creditctl.connection import load_settings
from creditctl.errors import UserError
from creditctl.help_listing import Command
from creditctl.output import print_json
from service_runtime.databases import resolve_databases
from service_runtime.settings import Settings
from service_runtime.temporal_client import connect_temporal

NOT_RUN = 2  # a check that could not run


def temporal_address(settings: Settings, given: str) -> str:
    """--temporal, else the settings (the environment, else the running stack's file), else the local port."""
    return given or settings.temporal_addr or f"127.0.0.1:{settings.temporal_port or 7233}"


async def _reconcile(settings: Settings, temporal_addr: str, as_json: bool) -> int:
    from temporalio.client import Client

    from reconciler.run import reconcile
    from reconciler.temporal_checks import temporal_calls_settled

    dbs = resolve_databases(settings, start_embedded=False)
    client: Client | None = None
    not_run = ""
    if temporal_addr:
        try:
            client = await asyncio.wait_for(connect_temporal(temporal_addr, settings=settings), 5)
        except Exception as exc:  # the database checks still run; the status says what did not
            reason = " ".join(str(exc).split()) or type(exc).__name__
            not_run = (f"temporal checks (decisions, quiet) could not run: temporal at {temporal_addr} unreachable "
                       f"({reason}); start the stack (creditctl up), pass --temporal ADDR, or --skip-temporal")
    try:
        report = await reconcile(dbs.ledger_dsn, dbs.invoice_dsn, client)
    except (OSError, asyncpg.PostgresError) as err:  # nothing was checked: not a pass, not a violation
        await temporal_calls_settled()  # the client's threads done before the process exits (reconciler.run)
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"reconcile could not run: a service database is unreachable ({reason}); start the stack "
                        "(creditctl up) or set CREDITS_LEDGER_DSN / CREDITS_INVOICE_DSN", NOT_RUN) from None
    skipped = "temporal checks skipped (--skip-temporal)" if not temporal_addr else ""
    if as_json:
        print_json({**report.as_dict(), "not_run": not_run, "skipped": skipped})
    else:
        click.echo(report.render() + (f" ({skipped})" if skipped else ""))
        if not_run:
            click.echo(not_run, err=True)
    if not report.ok:
        return 1
    return NOT_RUN if not_run else 0


@click.command("reconcile", cls=Command, help="cross-check ledger, invoices and Temporal once the system is quiet "
               "(exit 1: violations; 2: a check could not run)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option("--temporal", default="", help="Temporal frontend (default: CREDITS_TEMPORAL_ADDR, else the running "
              "stack's, else 127.0.0.1:CREDITS_TEMPORAL_PORT)")
@click.option("--skip-temporal", is_flag=True, help="run only the database checks, on purpose")
def command(as_json: bool, temporal: str, skip_temporal: bool) -> int:
    settings = load_settings()
    return asyncio.run(_reconcile(settings, "" if skip_temporal else temporal_address(settings, temporal), as_json))
