"""The coordinator's own API keys, one per tenant, kept out of workflow history.

Workflow inputs carry only the tenant id. Activities look the tenant's key up here, in worker
memory, so no secret ever reaches Temporal's history, the UI or a replay file.

Two stores:
- `MintingKeyStore` (the default of `creditctl up`): the coordinator has the service databases'
  DSNs, so on first use for a tenant it mints a fresh `operator` key and writes its hash into both
  the ledger and invoice databases (the way `creditctl tenants create` does). The secret lives
  only in this process; a restarted worker mints a new one.
- `StaticKeyStore`: tenant -> key given by configuration (CREDITS_COORDINATOR_KEYS as JSON, or
  CREDITS_API_KEY for a single tenant), for a worker that may not reach the databases.

The role is `operator`: it may reserve, commit, release and reverse (WRITERS) and also run the
expiry sweep, which the narrower `service` role may not.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Protocol

import asyncpg

from service_runtime.api_keys import mint_key, store_tenant_key

COORDINATOR_ROLE = "operator"


class KeyStore(Protocol):
    async def key_for(self, tenant_id: str) -> str: ...

    async def tenants(self) -> list[str]: ...


class UnknownTenant(LookupError):
    pass


class StaticKeyStore:
    """Keys given up front: {tenant_id: api_key}."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = dict(keys)

    @staticmethod
    def from_env() -> StaticKeyStore:
        raw = os.environ.get("CREDITS_COORDINATOR_KEYS", "")
        return StaticKeyStore(json.loads(raw) if raw else {})

    async def key_for(self, tenant_id: str) -> str:
        try:
            return self._keys[tenant_id]
        except KeyError:
            raise UnknownTenant(f"the coordinator has no key for tenant {tenant_id!r}") from None

    async def tenants(self) -> list[str]:
        return sorted(self._keys)


_SELECT_TENANT = "SELECT name FROM tenants WHERE tenant_id = $1"
_SELECT_TENANTS = "SELECT tenant_id FROM tenants ORDER BY tenant_id"


class MintingKeyStore:
    """Mints one operator key per tenant into every service database, on first use."""

    def __init__(self, dsns: Sequence[str]) -> None:
        self._dsns = list(dsns)
        self._keys: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def key_for(self, tenant_id: str) -> str:
        key = self._keys.get(tenant_id)
        if key is not None:
            return key
        async with self._lock:
            if tenant_id not in self._keys:
                self._keys[tenant_id] = await self._mint(tenant_id)
            return self._keys[tenant_id]

    async def _mint(self, tenant_id: str) -> str:
        key_id, key, key_hash = mint_key()
        for dsn in self._dsns:
            conn = await asyncpg.connect(dsn)
            try:
                name = await conn.fetchval(_SELECT_TENANT, tenant_id)
                if name is None:
                    raise UnknownTenant(f"tenant {tenant_id!r} does not exist")
                await store_tenant_key(conn, tenant_id, name, key_id, key_hash, COORDINATOR_ROLE)
            finally:
                await conn.close()
        return key

    async def tenants(self) -> list[str]:
        conn = await asyncpg.connect(self._dsns[0])
        try:
            return [r["tenant_id"] for r in await conn.fetch(_SELECT_TENANTS)]
        finally:
            await conn.close()
