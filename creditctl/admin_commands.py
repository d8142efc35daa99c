"""creditctl migrate, creditctl tenants create: set-up of databases and tenants."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from service_runtime.api_keys import EXPIRE_KEY, REVOKE_KEY, ROLES, SELECT_KEYS, mint_key, store_tenant_key
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


async def _each_service_db(settings: Settings) -> list[asyncpg.Connection]:
    dbs = resolve_databases(settings)
    await migrate_all(settings)
    return [await asyncpg.connect(dsn) for dsn in (dbs.ledger_dsn, dbs.invoice_dsn)]


async def create_key(settings: Settings, tenant_id: str, role: str, expires_at: datetime | None) -> tuple[str, str]:
    """Mints a key for an existing tenant in every service database; returns (key_id, key)."""
    key_id, key, key_hash = mint_key()
    conns = await _each_service_db(settings)
    try:
        for conn in conns:
            if not await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id):
                raise SystemExit(f"tenant {tenant_id!r} not found")
            await store_tenant_key(conn, tenant_id, tenant_id, key_id, key_hash, role, expires_at)
    finally:
        for conn in conns:
            await conn.close()
    return key_id, key


async def list_keys(settings: Settings, tenant_id: str) -> list[dict[str, object]]:
    conns = await _each_service_db(settings)
    try:
        rows = await conns[0].fetch(SELECT_KEYS, tenant_id)
    finally:
        for conn in conns:
            await conn.close()
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()} for r in rows]


async def revoke_key(settings: Settings, key_id: str, at: datetime | None = None) -> bool:
    """Revokes now, or (with `at`) lets the key expire then; in every service database."""
    conns = await _each_service_db(settings)
    found = False
    try:
        for conn in conns:
            if at is None:
                found = bool(await conn.fetchval(REVOKE_KEY, key_id)) or found
            else:
                found = bool(await conn.fetchrow(EXPIRE_KEY, key_id, at)) or found
    finally:
        for conn in conns:
            await conn.close()
    return found


async def rotate_key(settings: Settings, key_id: str, grace: timedelta) -> tuple[str, str]:
    """A new key with the same tenant and role; the old one expires after `grace`."""
    conns = await _each_service_db(settings)
    try:
        row = await conns[0].fetchrow("SELECT tenant_id, role, revoked_at FROM api_keys WHERE key_id = $1", key_id)
    finally:
        for conn in conns:
            await conn.close()
    if row is None or row["revoked_at"] is not None:
        raise SystemExit(f"key {key_id!r} not found or already revoked")
    new = await create_key(settings, row["tenant_id"], row["role"], None)
    await revoke_key(settings, key_id, datetime.now(UTC) + grace)
    return new


def _duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if not m:
        raise argparse.ArgumentTypeError("use a duration like 90s, 30m, 12h or 30d")
    return timedelta(seconds=int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def _cmd_keys(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    out: object
    if args.keys_command == "create":
        expires = datetime.now(UTC) + args.expires_in if args.expires_in else None
        key_id, key = asyncio.run(create_key(settings, args.tenant, args.role, expires))
        out = {"key_id": key_id, "api_key": key, "role": args.role,
               "expires_at": expires.isoformat() if expires else None}
    elif args.keys_command == "list":
        out = asyncio.run(list_keys(settings, args.tenant or ""))
    elif args.keys_command == "revoke":
        if not asyncio.run(revoke_key(settings, args.key_id)):
            print(f"key {args.key_id!r} not found or already revoked")
            return 1
        out = {"key_id": args.key_id, "revoked": True}
    else:
        key_id, key = asyncio.run(rotate_key(settings, args.key_id, args.grace))
        out = {"old_key_id": args.key_id, "old_key_expires_in_s": int(args.grace.total_seconds()),
               "key_id": key_id, "api_key": key}
    if args.json or not isinstance(out, list):
        print(json.dumps(out, indent=None if args.json else 2))
    else:
        print(f"{'key_id':14} {'tenant':16} {'role':9} {'expires_at':26} revoked_at")
        for k in out:
            print(f"{k['key_id']!s:14} {k['tenant_id']!s:16} {k['role']!s:9} {k['expires_at']!s:26} {k['revoked_at']}")
    return 0


async def query_audit(settings: Settings, args: argparse.Namespace) -> list[dict[str, object]]:
    """Audit records from the ledger and invoice services (gRPC, CREDITS_API_KEY), oldest first."""
    from credits.audit.v1 import audit_pb2, audit_pb2_grpc
    from google.protobuf.json_format import MessageToDict

    from service_runtime.tls import open_channel

    request = audit_pb2.QueryAuditRequest(subject=args.subject or "", key_id=args.actor or "",
                                          method=args.action or "", refused_only=args.refused,
                                          page_size=args.limit)
    if args.since:
        getattr(request, "from").FromDatetime(datetime.now(UTC) - args.since)
    records: list[dict[str, object]] = []
    for service, addr in (("ledger", settings.ledger_addr), ("invoice", settings.invoice_addr)):
        async with open_channel(addr) as channel:
            out = await audit_pb2_grpc.AuditServiceStub(channel).QueryAudit(
                request, metadata=[("x-api-key", settings.api_key)], timeout=10)
        for r in out.records:
            records.append({"service": service, **MessageToDict(r, preserving_proto_field_name=True)})
    return sorted(records, key=lambda r: str(r.get("at", "")))


def _cmd_audit(args: argparse.Namespace) -> int:
    records = asyncio.run(query_audit(Settings.from_env(), args))
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(f"{'at':27} {'service':8} {'actor':13} {'role':9} {'action':28} {'code':20} subjects")
    for r in records:
        action = str(r.get("method", "")).rsplit("/", 1)[-1]
        subjects = ",".join(r.get("subjects", []))  # type: ignore[arg-type]
        print(f"{r.get('at', '')!s:27} {r['service']!s:8} {r.get('key_id', '')!s:13} {r.get('role', '')!s:9} "
              f"{action:28} {r.get('code', '')!s:20} {subjects}")
    return 0


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

    keys = sub.add_parser("keys", help="API keys: create (expirable), list, revoke, rotate")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="mint a key for a tenant (printed once)")
    kc.add_argument("tenant")
    kc.add_argument("--role", default="service", choices=ROLES)
    kc.add_argument("--expires-in", type=_duration, default=None, help="e.g. 90d")
    kl = ksub.add_parser("list", help="keys (ids, roles, expiry, revocation; never secrets)")
    kl.add_argument("--tenant", default="")
    kr = ksub.add_parser("revoke", help="revoke a key now (effective within 5 s)")
    kr.add_argument("key_id")
    kt = ksub.add_parser("rotate", help="mint a replacement with the same tenant and role; the old key expires")
    kt.add_argument("key_id")
    kt.add_argument("--grace", type=_duration, default=timedelta(hours=1), help="old key stays valid this long")
    for p in (kc, kl, kr, kt):
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_cmd_keys)

    a = sub.add_parser("audit", help="the audit trail of the ledger and invoice services (CREDITS_API_KEY)")
    a.add_argument("--subject", help="e.g. account_id=acme or invoice_id=inv_1")
    a.add_argument("--actor", help="key id")
    a.add_argument("--action", help="method name, e.g. GrantCredits")
    a.add_argument("--since", type=_duration, default=None, help="e.g. 24h")
    a.add_argument("--refused", action="store_true", help="only refused attempts")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_cmd_audit)
