"""The coordinator's own API keys, one per tenant, kept out of workflow history.

Workflow inputs carry only the tenant id. Activities look the tenant's key up here, in worker
memory, so no secret ever reaches Temporal's history, the UI or a replay file.

Two stores:
- `MintingKeyStore` (the default of `creditctl up`): the coordinator has the service databases'
  DSNs, so on first use for a tenant it mints a fresh `operator` key and writes its hash into both
  the ledger and invoice databases (the way `creditctl tenants create` does). The secret lives
  only in this process. Each key expires after a ttl (CREDITS_COORDINATOR_KEY_TTL_S, default 24 h)
  and is replaced once half of it has passed; `close()` revokes the keys the store minted, so a
  restarted worker leaves no live key behind (a crashed one leaves keys that expire by themselves).
- `StaticKeyStore`: tenant -> key given by configuration (CREDITS_COORDINATOR_KEYS as JSON, or
  CREDITS_API_KEY for a single tenant), for a worker that may not reach the databases.

The role is `operator`: it may reserve, commit, release and reverse (WRITERS) and also run the
expiry sweep, which the narrower `service` role may not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from service_runtime.api_keys import mint_key, store_tenant_key
from service_runtime.settings import Settings, SettingsError

log = logging.getLogger(__name__)

COORDINATOR_ROLE = "operator"
COORDINATOR_OWNER = "system:coordinator"  # the owner of every key the store mints
DEFAULT_KEY_TTL = timedelta(hours=24)
KEY_TTL_ENV = "CREDITS_COORDINATOR_KEY_TTL_S"


class KeyStore(Protocol):
    async def key_for(self, tenant_id: str) -> str: ...

    async def tenants(self) -> list[str]: ...

    async def close(self) -> None: ...


class UnknownTenant(LookupError):
    pass


class StaticKeyStore:
    """Keys given up front: {tenant_id: api_key}."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = dict(keys)

    @staticmethod
    def from_env() -> StaticKeyStore:
        raw = Settings.from_env().coordinator_keys  # CREDITS_COORDINATOR_KEYS, checked to be a JSON object
        return StaticKeyStore(json.loads(raw) if raw else {})

    async def key_for(self, tenant_id: str) -> str:
        try:
            return self._keys[tenant_id]
        except KeyError:
            raise UnknownTenant(f"the coordinator has no key for tenant {tenant_id!r}") from None

    async def tenants(self) -> list[str]:
        return sorted(self._keys)

    async def close(self) -> None:
        """Nothing to revoke: these keys belong to whoever configured them."""


_SELECT_TENANT = "SELECT name FROM tenants WHERE tenant_id = $1"
_SELECT_TENANTS = "SELECT tenant_id FROM tenants ORDER BY tenant_id"
# Matches the hash too: a key_id this store drew that collided with an existing key is not its key.
_REVOKE_KEYS = """
UPDATE api_keys k SET revoked_at = now() FROM unnest($1::text[], $2::text[]) AS m (key_id, key_hash)
WHERE k.key_id = m.key_id AND k.key_hash = m.key_hash AND k.revoked_at IS NULL
"""


def key_ttl_from_env() -> timedelta:
    """The minted keys' ttl: CREDITS_COORDINATOR_KEY_TTL_S whole seconds, default 24 h."""
    try:
        return timedelta(seconds=Settings.from_env().coordinator_key_ttl_s)  # default 86400 (DEFAULT_KEY_TTL)
    except SettingsError as err:  # the one line naming the variable
        raise ValueError(str(err)) from None


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Minted:
    key: str
    minted_at: datetime


class MintingKeyStore:
    """Mints short-lived operator keys, one live per tenant, into every service database.

    Invariants: a minted key lives at most `ttl` (its `expires_at` is set when it is minted, and
    the store re-mints once a key is `ttl / 2` old, so a cached key is never handed out near its
    expiry); a store never revokes keys it did not mint. Several workers may mint for the same
    tenant at once, each its own key, and a crashed worker's keys simply expire. A replaced key is
    not revoked when replaced (an activity may still be using it); `close()` revokes it with the rest.
    """

    def __init__(self, dsns: Sequence[str], ttl: timedelta = DEFAULT_KEY_TTL,
                 now: Callable[[], datetime] = _utc_now) -> None:
        if ttl <= timedelta(0):
            raise ValueError("the key ttl must be positive")
        self._dsns = list(dsns)
        self._ttl = ttl
        self._now = now
        self._keys: dict[str, _Minted] = {}
        self._minted: dict[tuple[str, str], datetime] = {}  # (key_id, key_hash) -> expires_at, keys it wrote
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    def _fresh(self, tenant_id: str) -> str | None:
        minted = self._keys.get(tenant_id)
        if minted is None or self._now() >= minted.minted_at + self._ttl / 2:
            return None
        return minted.key

    async def key_for(self, tenant_id: str) -> str:
        key = self._fresh(tenant_id)
        if key is not None:
            return key
        async with self._lock:  # single flight: one mint per store at a time
            if self._closed:
                raise RuntimeError("the coordinator key store is closed")
            key = self._fresh(tenant_id)
            if key is None:
                key = await self._mint(tenant_id)
            return key

    async def _mint(self, tenant_id: str) -> str:
        key_id, key, key_hash = mint_key()
        minted_at = self._now()
        expires_at = minted_at + self._ttl
        self._minted = {k: exp for k, exp in self._minted.items() if exp > minted_at}  # expired: nothing to revoke
        self._minted[(key_id, key_hash)] = expires_at  # before the writes, so close() also revokes a half-written key
        for dsn in self._dsns:
            conn = await asyncpg.connect(dsn)
            try:
                name = await conn.fetchval(_SELECT_TENANT, tenant_id)
                if name is None:
                    raise UnknownTenant(f"tenant {tenant_id!r} does not exist")
                await store_tenant_key(conn, tenant_id, name, key_id, key_hash, COORDINATOR_ROLE, expires_at,
                                       COORDINATOR_OWNER)
            finally:
                await conn.close()
        self._keys[tenant_id] = _Minted(key, minted_at)
        return key

    async def close(self) -> None:
        """Revokes every unexpired key this store minted, in every database; best effort (logged)."""
        async with self._lock:
            self._closed = True
            self._keys.clear()
            key_ids, key_hashes = [k for k, _ in self._minted], [h for _, h in self._minted]
            self._minted.clear()
            if not key_ids:
                return
            for dsn in self._dsns:
                try:
                    conn = await asyncpg.connect(dsn)
                    try:
                        await conn.execute(_REVOKE_KEYS, key_ids, key_hashes)
                    finally:
                        await conn.close()
                except Exception:
                    log.warning("could not revoke %d coordinator key(s) in a service database; they expire "
                                "by themselves within %s", len(key_ids), self._ttl, exc_info=True)

    async def tenants(self) -> list[str]:
        conn = await asyncpg.connect(self._dsns[0])
        try:
            return [r["tenant_id"] for r in await conn.fetch(_SELECT_TENANTS)]
        finally:
            await conn.close()
