"""creditctl migrate, creditctl tenants create: set-up of databases and tenants."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path

import asyncpg

from service_runtime.api_keys import ROLES, mint_key, store_tenant_key
from service_runtime.databases import TENANCY_MIGRATIONS, resolve_databases
from service_runtime.postgres import migrate
from service_runtime.settings import Settings


def service_migrations() -> dict[str, list[Path]]:
    """Migration directories per service database, tenancy first."""
    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS

    return {
        "ledger": [TENANCY_MIGRATIONS, LEDGER_MIGRATIONS],
        "invoice": [TENANCY_MIGRATIONS, INVOICE_MIGRATIONS],
    }


async def migrate_all(settings: Settings) -> dict[str, list[str]]:
    dbs = resolve_databases(settings)
    dirs = service_migrations()
    return {
        "ledger": await migrate(dbs.ledger_dsn, *dirs["ledger"]),
        "invoice": await migrate(dbs.invoice_dsn, *dirs["invoice"]),
    }


async def create_tenant(settings: Settings, tenant_id: str, name: str, role: str) -> str:
    """Creates the tenant in every service database with one key; returns the key (shown once)."""
    dbs = resolve_databases(settings)
    await migrate_all(settings)
    key_id, key, key_hash = mint_key()
    for dsn in (dbs.ledger_dsn, dbs.invoice_dsn):
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await store_tenant_key(conn, tenant_id, name, key_id, key_hash, role)
        finally:
            await conn.close()
    return key


def _cmd_migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate_all(Settings.from_env()))
    if args.json:
        print(json.dumps(applied))
    else:
        for db, names in applied.items():
            print(f"{db}: {', '.join(names) if names else 'up to date'}")
    return 0


def _cmd_tenant_create(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.tenant_id):
        print("tenant_id: use 1-64 letters, digits, '.', '_' or '-'")
        return 2
    key = asyncio.run(create_tenant(Settings.from_env(), args.tenant_id, args.name or args.tenant_id,
                                    args.role))
    if args.json:
        print(json.dumps({"tenant_id": args.tenant_id, "api_key": key, "role": args.role}))
    else:
        print(f"tenant {args.tenant_id} created; its {args.role} API key (shown once):\n{key}")
    return 0


async def verify_ledger(settings: Settings, tenant_id: str | None) -> dict[str, dict[str, object]]:
    """Replays the journal of each tenant (or one) and compares it with the balance projection."""
    from ledger_service.storage.reads import verify_journal
    from service_runtime.postgres import create_pool

    dsn = resolve_databases(settings).ledger_dsn
    pool = await create_pool(dsn, min_size=1, max_size=2)
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


def _cmd_verify(args: argparse.Namespace) -> int:
    report = asyncio.run(verify_ledger(Settings.from_env(), args.tenant))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for tenant, r in report.items():
            status = "ok" if r["ok"] else "VIOLATIONS"
            print(f"{tenant}: {status} ({r['entries']} entries, {r['lots']} lots)")
            for v in r["violations"]:  # type: ignore[attr-defined]
                print(f"  - {v}")
    return 0 if all(r["ok"] for r in report.values()) else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("migrate", help="apply the numbered SQL migrations to every service database")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_migrate)

    tenants = sub.add_parser("tenants", help="tenants and their first API key")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True)
    c = tsub.add_parser("create", help="create a tenant and print its first API key")
    c.add_argument("tenant_id")
    c.add_argument("--name", default="")
    c.add_argument("--role", default="admin", choices=ROLES)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_tenant_create)

    ledger = sub.choices.get("ledger") or sub.add_parser("ledger", help="ledger maintenance")
    lsub = getattr(ledger, "_credits_sub", None) or ledger.add_subparsers(dest="ledger_command", required=True)
    ledger._credits_sub = lsub  # type: ignore[attr-defined]
    v = lsub.add_parser("verify", help="replay the journal and compare it with the balance projection")
    v.add_argument("--tenant", default=None)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_verify)
