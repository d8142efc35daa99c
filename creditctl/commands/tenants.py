"""creditctl tenants create: a tenant in every service database, with its first API key."""

from __future__ import annotations

import asyncio
import re

import click

from creditctl.connection import load_settings
from creditctl.errors import UserError
from creditctl.help_listing import Group
from creditctl.output import print_json
from creditctl.service_databases import connected
from service_runtime.api_keys import ROLES, check_owner, mint_key, store_tenant_key
from service_runtime.settings import Settings


async def create_tenant(settings: Settings, tenant_id: str, name: str, role: str, owner: str = "") -> str:
    """Creates the tenant in every service database with one key of `owner`; returns the key (shown once).
    An existing tenant is refused (ALREADY_EXISTS) and no key is minted: more keys are `keys create`."""
    key_id, key, key_hash = mint_key()
    async with connected(settings) as conns:
        for conn in conns:
            if await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id):
                raise UserError(f"ALREADY_EXISTS: tenant_id: tenant {tenant_id!r} exists; no key minted "
                                f"(another key: creditctl keys create {tenant_id} --owner ...)")
        for conn in conns:
            async with conn.transaction():
                await store_tenant_key(conn, tenant_id, name, key_id, key_hash, role, owner=owner)
    return key


def _tenant_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise click.BadParameter("use 1-64 letters, digits, '.', '_' or '-'", ctx, param)
    return value


@click.group("tenants", cls=Group, help="tenants and their first API key")
def command() -> None:
    pass


def _owner(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_owner(value) if value else ""
    except ValueError as err:
        raise click.BadParameter(str(err), ctx, param) from None


@command.command("create", help="create a tenant and print its first API key")
@click.argument("tenant_id", callback=_tenant_id)
@click.option("--name", default="")
@click.option("--role", default="admin", type=click.Choice(ROLES))
@click.option("--owner", default="", callback=_owner,
              help="the person or system the first key is for (the two-person rule compares owners)")
@click.option("--json", "as_json", is_flag=True)
def create(tenant_id: str, name: str, role: str, owner: str, as_json: bool) -> int:
    key = asyncio.run(create_tenant(load_settings(), tenant_id, name or tenant_id, role, owner))
    if as_json:
        print_json({"tenant_id": tenant_id, "api_key": key, "role": role}, indent=None)
    else:
        click.echo(f"tenant {tenant_id} created; its {role} API key (shown once):\n{key}")
    return 0
