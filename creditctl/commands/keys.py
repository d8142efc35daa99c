"""creditctl keys create|list|revoke|rotate: API keys in every service database (ids and hashes, never secrets)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import click

from creditctl.arguments import DURATION
from creditctl.connection import load_settings
from creditctl.errors import UserError
from creditctl.help_listing import Group
from creditctl.output import Format, emit_rows, format_options, print_json
from creditctl.service_databases import connected
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


async def _store_key(conns: list[asyncpg.Connection], tenant_id: str, role: str, expires_at: datetime | None,
                     owner: str) -> tuple[str, str]:
    key_id, key, key_hash = mint_key()
    for conn in conns:
        if not await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id):
            raise UserError(f"NOT_FOUND: tenant: {tenant_id!r} does not exist (creditctl tenants create {tenant_id})")
    for conn in conns:
        await store_tenant_key(conn, tenant_id, tenant_id, key_id, key_hash, role, expires_at, owner)
    return key_id, key


async def create_key(settings: Settings, tenant_id: str, role: str, expires_at: datetime | None,
                     owner: str = "") -> tuple[str, str]:
    """Mints a key of `owner` (a person or system) for an existing tenant in every service database;
    returns (key_id, key)."""
    async with connected(settings) as conns:
        return await _store_key(conns, tenant_id, role, expires_at, owner)


async def list_keys(settings: Settings, tenant_id: str) -> list[dict[str, object]]:
    async with connected(settings) as conns:
        rows = await conns[0].fetch(SELECT_KEYS, tenant_id)
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()} for r in rows]


async def _revoke(conns: list[asyncpg.Connection], key_id: str, at: datetime | None) -> bool:
    found = False
    for conn in conns:
        if at is None:
            found = bool(await conn.fetchval(REVOKE_KEY, key_id)) or found
        else:
            found = bool(await conn.fetchrow(EXPIRE_KEY, key_id, at)) or found
    return found


async def revoke_key(settings: Settings, key_id: str, at: datetime | None = None) -> bool:
    """Revokes now, or (with `at`) lets the key expire then; in every service database."""
    async with connected(settings) as conns:
        return await _revoke(conns, key_id, at)


def replacement_expiry(created_at: datetime, expires_at: datetime | None, now: datetime) -> datetime | None:
    """The replacement keeps the old key's expiry rule: the same lifetime from now; none if it had none."""
    return None if expires_at is None else now + (expires_at - created_at)


async def rotate_key(settings: Settings, key_id: str, grace: timedelta) -> tuple[str, str]:
    """A new key with the same tenant, role, owner and lifetime; the old one expires after `grace`."""
    async with connected(settings) as conns:
        row = await conns[0].fetchrow(
            "SELECT tenant_id, role, owner, created_at, expires_at, revoked_at FROM api_keys WHERE key_id = $1", key_id)
        if row is None or row["revoked_at"] is not None:
            raise UserError(f"NOT_FOUND: key_id: key {key_id!r} not found or already revoked")
        now = datetime.now(UTC)
        new = await _store_key(conns, row["tenant_id"], row["role"],
                               replacement_expiry(row["created_at"], row["expires_at"], now), row["owner"])
        await _revoke(conns, key_id, now + grace)
    return new


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
@click.option("--expires-in", type=DURATION, default=None, help="e.g. 90d [default: never]")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts")
def create(tenant: str, owner: str, role: str, expires_in: timedelta | None, as_json: bool) -> int:
    expires = datetime.now(UTC) + expires_in if expires_in else None
    key_id, key = asyncio.run(create_key(load_settings(), tenant, role, expires, owner))
    if as_json:
        print_json({"key_id": key_id, "api_key": key, "role": role, "owner": owner,
                    "expires_at": expires.isoformat() if expires else None}, indent=None)
    else:
        until = f"expires {expires.isoformat(timespec='seconds')}" if expires else "never expires"
        click.echo(f"key {key_id} for {tenant} ({role}, {owner}; {until}); the key (shown once):\n{key}")
    return 0


KEY_COLUMNS = ("key_id", "tenant_id", "role", "owner", "created_at", "expires_at", "revoked_at")


@command.command("list", help="keys (ids, roles, expiry, revocation; never secrets)")
@click.option("--tenant", default="")
@format_options(csv_=True, quiet=True)
def list_(tenant: str, fmt: Format) -> int:
    emit_rows(asyncio.run(list_keys(load_settings(), tenant)), KEY_COLUMNS, fmt, empty="(no keys)")
    return 0


@command.command("revoke", help="revoke a key now (every server refuses it within 1 s)")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True)
def revoke(key_id: str, as_json: bool) -> int:
    if not asyncio.run(revoke_key(load_settings(), key_id)):
        raise UserError(f"NOT_FOUND: key_id: key {key_id!r} not found or already revoked")
    if as_json:
        print_json({"key_id": key_id, "revoked": True}, indent=None)
    else:
        click.echo(f"key {key_id} revoked")
    return 0


@command.command("rotate", help="mint a replacement with the same tenant, role, owner and lifetime; the old key "
                 "expires after --grace")
@click.argument("key_id")
@click.option("--grace", type=DURATION, default="1h", help="old key stays valid this long")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts")
def rotate(key_id: str, grace: timedelta, as_json: bool) -> int:
    new_id, key = asyncio.run(rotate_key(load_settings(), key_id, grace))
    if as_json:
        print_json({"old_key_id": key_id, "old_key_expires_in_s": int(grace.total_seconds()), "key_id": new_id,
                    "api_key": key}, indent=None)
    else:
        click.echo(f"key {new_id} replaces {key_id} (which stops working in {int(grace.total_seconds())} s); "
                   f"the key (shown once):\n{key}")
    return 0
