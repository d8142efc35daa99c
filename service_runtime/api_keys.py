"""API keys: minting, hashing at rest, and resolving a presented key to its tenant and role."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service_runtime.rejections import Reason, Rejection

ROLES = ("admin", "operator", "finance", "support", "service", "readonly")
KEY_PREFIX = "ck_"
_CACHE_TTL_S = 5.0  # a revoked key stops working within this long


@dataclass(frozen=True)
class Caller:
    """Who is calling: resolved from the x-api-key metadata by the auth interceptor."""

    tenant_id: str
    key_id: str
    role: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_key() -> tuple[str, str, str]:
    """Returns (key_id, full key to hand out once, hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return key_id, f"{KEY_PREFIX}{key_id}.{secret}", hash_secret(secret)


def parse_key(presented: str) -> tuple[str, str]:
    if not presented.startswith(KEY_PREFIX) or "." not in presented or len(presented) > 200:
        raise Rejection(Reason.UNAUTHENTICATED, "malformed API key", "x-api-key")
    key_id, _, secret = presented[len(KEY_PREFIX):].partition(".")
    if not key_id or not secret:
        raise Rejection(Reason.UNAUTHENTICATED, "malformed API key", "x-api-key")
    return key_id, secret


INSERT_TENANT = "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING"
INSERT_KEY = """
INSERT INTO api_keys (key_id, tenant_id, key_hash, role, expires_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (key_id) DO NOTHING
"""
SELECT_KEY = "SELECT tenant_id, key_hash, role, expires_at, revoked_at FROM api_keys WHERE key_id = $1"


async def store_tenant_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: str,
    tenant_name: str,
    key_id: str,
    key_hash: str,
    role: str,
    expires_at: datetime | None = None,
) -> None:
    await conn.execute(INSERT_TENANT, tenant_id, tenant_name)
    await conn.execute(INSERT_KEY, key_id, tenant_id, key_hash, role, expires_at)


SELECT_KEYS = """
SELECT key_id, tenant_id, role, created_at, expires_at, revoked_at FROM api_keys
WHERE ($1 = '' OR tenant_id = $1) ORDER BY tenant_id, created_at
"""
REVOKE_KEY = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id"
EXPIRE_KEY = """
UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE key_id = $1 AND revoked_at IS NULL
RETURNING tenant_id, role
"""


class KeyResolver:
    """Resolves presented keys against one service database, with a short positive cache."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._pool = pool
        self._cache: dict[str, tuple[float, Caller, datetime | None]] = {}

    async def resolve(self, presented: str | None) -> Caller:
        if not presented:
            raise Rejection(Reason.UNAUTHENTICATED, "missing API key", "x-api-key")
        now = time.monotonic()
        hit = self._cache.get(presented)
        if hit is not None and hit[0] > now:
            expires_at = hit[2]
            if expires_at is None or expires_at > datetime.now(expires_at.tzinfo):
                return hit[1]
        key_id, secret = parse_key(presented)
        row = await self._pool.fetchrow(SELECT_KEY, key_id)
        if row is None or not hmac.compare_digest(row["key_hash"], hash_secret(secret)):
            raise Rejection(Reason.UNAUTHENTICATED, "unknown API key", "x-api-key")
        if row["revoked_at"] is not None:
            raise Rejection(Reason.UNAUTHENTICATED, "API key revoked", "x-api-key")
        expires_at = row["expires_at"]
        if expires_at is not None and expires_at <= datetime.now(expires_at.tzinfo):
            raise Rejection(Reason.UNAUTHENTICATED, "API key expired", "x-api-key")
        caller = Caller(tenant_id=row["tenant_id"], key_id=key_id, role=row["role"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[presented] = (now + _CACHE_TTL_S, caller, expires_at)
        return caller
