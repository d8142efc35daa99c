"""Helpers for tests: create a tenant and an API key directly in a service database."""

from __future__ import annotations

import asyncpg

from service_runtime.api_keys import mint_key, store_tenant_key


async def add_tenant_key(dsns: list[str] | str, tenant_id: str, role: str = "admin", owner: str = "") -> str:
    """Creates `tenant_id` (if missing) with a new key of `role` (and `owner`: "" for an ownerless
    key, its own principal) in each DSN; returns the key."""
    key_id, key, key_hash = mint_key()
    for dsn in [dsns] if isinstance(dsns, str) else dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await store_tenant_key(conn, tenant_id, tenant_id, key_id, key_hash, role, owner=owner)
        finally:
            await conn.close()
    return key
