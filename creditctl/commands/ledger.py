"""creditctl ledger verify: replay each tenant's journal and compare it with the balance projection."""

from __future__ import annotations

import asyncio

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import load_settings, rpc
from creditctl.help_listing import Group
from creditctl.output import print_json
from creditctl.service_databases import opened
from service_runtime.settings import Settings


async def verify_ledger(settings: Settings, tenant_id: str | None) -> dict[str, dict[str, object]]:
    """Replays the journal of each tenant (or one) and compares it with the balance projection."""
    from ledger_service.storage.reads import verify_journal
    from service_runtime.postgres import create_pool

    async with opened(settings, migrated=False) as dbs:  # an embedded Postgres started for this is stopped after
        pool = await create_pool(dbs.ledger_dsn, min_size=1, max_size=2)
        try:
            tenants = [tenant_id] if tenant_id else [r["tenant_id"] for r in await pool.fetch(
                "SELECT tenant_id FROM tenants ORDER BY tenant_id")]
            out: dict[str, dict[str, object]] = {}
            for t in tenants:
                v = await verify_journal(pool, t)
                out[t] = {"ok": not v.violations, "entries": v.entries, "lots": v.lots, "violations": v.violations}
            return out
        finally:
            await pool.close()


@click.group("ledger", cls=Group, help="ledger maintenance")
def command() -> None:
    pass


@command.command("verify", help="replay the journal and compare it with the balance projection")
@click.option("--tenant", default=None)
@click.option("--api", "via_api", is_flag=True,
              help="through the ledger's VerifyJournal RPC, for the tenant of CREDITS_API_KEY (no database access)")
@click.option("--json", "as_json", is_flag=True)
def verify(tenant: str | None, via_api: bool, as_json: bool) -> int:
    """Exit 1 when any tenant's journal and projection disagree."""
    if via_api:
        v = rpc("ledger", "VerifyJournal", lpb.VerifyJournalRequest())
        report = {"(tenant of CREDITS_API_KEY)": {"ok": v.ok, "entries": v.entries, "lots": v.lots,
                                                  "violations": list(v.violations)}}
    else:
        report = asyncio.run(verify_ledger(load_settings(), tenant))
    if as_json:
        print_json(report)
    else:
        for name, r in report.items():
            click.echo(f"{name}: {'ok' if r['ok'] else 'VIOLATIONS'} ({r['entries']} entries, {r['lots']} lots)")
            for v in r["violations"]:  # type: ignore[attr-defined]
                click.echo(f"  - {v}")
    return 0 if all(r["ok"] for r in report.values()) else 1
