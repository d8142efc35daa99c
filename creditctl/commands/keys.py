"""creditctl keys create|list|revoke|rotate: API keys in every service database (ids and hashes, never secrets)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import click

from creditctl.arguments import DURATION
from creditctl.connection import load_settings
from creditctl.errors import UserError
from creditctl.help_listing import Group
from creditctl.output import print_json
from creditctl.service_databases import close_each, connect_each
from service_runtime.api_keys import (
    EXPIRE_KEY,
    REVOKE_KEY,
    ROLES,
    SELECT_KEYS,
    check_owner,
    mint_key,
    store_tenant_key,
)
from service_runtime.settings import Settings


async def create_key(settings: Settings, tenant_id: str, role: str, expires_at: datetime | None,
                     owner: str = "") -> tuple[str, str]:
    """Mints a key of `owner` (a person or system) for an existing tenant in every service database;
    returns (key_id, key)."""
    key_id, key, key_hash = mint_key()
    conns = await connect_each(settings)
    try:
        for conn in conns:
            if not await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id):
                raise UserError(f"tenant {tenant_id!r} not found")
            await store_tenant_key(conn, tenant_id, tenant_id, key_id, key_hash, role, expires_at, owner)
    finally:
        await close_each(conns)
    return key_id, key


async def list_keys(settings: Settings, tenant_id: str) -> list[dict[str, object]]:
    conns = await connect_each(settings)
    try:
        rows = await conns[0].fetch(SELECT_KEYS, tenant_id)
    finally:
        await close_each(conns)
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()} for r in rows]


async def revoke_key(settings: Settings, key_id: str, at: datetime | None = None) -> bool:
    """Revokes now, or (with `at`) lets the key expire then; in every service database."""
    conns = await connect_each(settings)
    found = False
    try:
        for conn in conns:
            if at is None:
                found = bool(await conn.fetchval(REVOKE_KEY, key_id)) or found
            else:
                found = bool(await conn.fetchrow(EXPIRE_KEY, key_id, at)) or found
    finally:
        await close_each(conns)
    return found


async def rotate_key(settings: Settings, key_id: str, grace: timedelta) -> tuple[str, str]:
    """A new key with the same tenant, role and owner; the old one expires after `grace`."""
    conns = await connect_each(settings)
    try:
        row = await conns[0].fetchrow("SELECT tenant_id, role, owner, revoked_at FROM api_keys WHERE key_id = $1",
                                      key_id)
    finally:
        await close_each(conns)
    if row is None or row["revoked_at"] is not None:
        raise UserError(f"key {key_id!r} not found or already revoked")
    new = await create_key(settings, row["tenant_id"], row["role"], None, row["owner"])
    await revoke_key(settings, key_id, datetime.now(UTC) + grace)
    return new


def _print(out: object, as_json: bool) -> None:
    """JSON on one line with --json, indented without (as creditctl always printed keys)."""
    print_json(out, indent=None if as_json else 2)


@click.group("keys", cls=Group, help="API keys: create (expirable), list, revoke, rotate")
def command() -> None:
    pass


def _owner(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_owner(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx, param) from None


@command.command("create", help="mint a key for a tenant (printed once)")
@click.argument("tenant")
@click.option("--owner", required=True, callback=_owner,
              help="the person or system the key is for (alice@example.com, system:billing-gateway); "
                   "the two-person rule compares owners")
@click.option("--role", default="service", type=click.Choice(ROLES))
@click.option("--expires-in", type=DURATION, default=None, help="e.g. 90d")
@click.option("--json", "as_json", is_flag=True)
def create(tenant: str, owner: str, role: str, expires_in: timedelta | None, as_json: bool) -> int:
    expires = datetime.now(UTC) + expires_in if expires_in else None
    key_id, key = asyncio.run(create_key(load_settings(), tenant, role, expires, owner))
    _print({"key_id": key_id, "api_key": key, "role": role, "owner": owner,
            "expires_at": expires.isoformat() if expires else None}, as_json)
    return 0


@command.command("list", help="keys (ids, roles, expiry, revocation; never secrets)")
@click.option("--tenant", default="")
@click.option("--json", "as_json", is_flag=True)
def list_(tenant: str, as_json: bool) -> int:
    keys = asyncio.run(list_keys(load_settings(), tenant))
    if as_json:
        print_json(keys, indent=None)
        return 0
    click.echo(f"{'key_id':14} {'tenant':16} {'role':9} {'owner':24} {'expires_at':26} revoked_at")
    for k in keys:
        click.echo(f"{k['key_id']!s:14} {k['tenant_id']!s:16} {k['role']!s:9} {k['owner'] or '-'!s:24} "
                   f"{k['expires_at']!s:26} {k['revoked_at']}")
    return 0


@command.command("revoke", help="revoke a key now (every server refuses it within 1 s)")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True)
def revoke(key_id: str, as_json: bool) -> int:
    if not asyncio.run(revoke_key(load_settings(), key_id)):
        raise UserError(f"key {key_id!r} not found or already revoked")
    _print({"key_id": key_id, "revoked": True}, as_json)
    return 0


@command.command("rotate", help="mint a replacement with the same tenant, role and owner; the old key expires")
@click.argument("key_id")
@click.option("--grace", type=DURATION, default="1h", help="old key stays valid this long")
@click.option("--json", "as_json", is_flag=True)
def rotate(key_id: str, grace: timedelta, as_json: bool) -> int:
    new_id, key = asyncio.run(rotate_key(load_settings(), key_id, grace))
    _print({"old_key_id": key_id, "old_key_expires_in_s": int(grace.total_seconds()), "key_id": new_id,
            "api_key": key}, as_json)
    return 0
