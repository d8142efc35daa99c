"""API keys: minting, hashing at rest, and resolving a presented key to its tenant, role and owner.

Every key belongs to a person or a system (`owner`). Resolved keys are cached per server, and a
change to a key (revoked, expiry moved) reaches every server at once: the database notifies
`credits_api_keys` (service_runtime/migrations/0005) and each server's `KeyResolver`, listening on a
connection of its pool, drops the key. While a server is not listening (starting, or its listener
connection lost) it does not cache at all, so a revoked key never outlives its revocation by more
than the notification's trip (measured in tests/security/test_fast_revocation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service_runtime import portal_sessions
from service_runtime.portal_sessions import PortalSession
from service_runtime.rejections import Reason, Rejection

log = logging.getLogger(__name__)

ROLES = ("admin", "operator", "finance", "support", "service", "readonly")
KEY_PREFIX = "ck_"
KEY_CHANNEL = "credits_api_keys"  # NOTIFY payload: the key id that changed
_CACHE_TTL_S = 60.0  # a backstop only: a change is heard at once (or nothing is cached)
LISTENER_NAME = "credits-api-key-changes"  # the listener connection's application_name
_LISTENER_CHECK_S = 0.5  # how often the listener connection is checked (a silent stall: cache off within ~1 s)
MAX_OWNER_LENGTH = 200


@dataclass(frozen=True)
class Caller:
    """Who is calling: resolved from the x-api-key metadata by the auth interceptor."""

    tenant_id: str
    key_id: str
    role: str
    owner: str = ""  # the person or system the key belongs to ("" for keys made before owners)
    portal: PortalSession | None = None  # a customer portal session, not a key (role "portal")

    @property
    def principal(self) -> str:
        """Who is behind the key, for rules about people (two-person approval): the owner, or for
        an ownerless key the key itself."""
        return self.owner or f"key:{self.key_id}"


class KeyRefused(Rejection):
    """UNAUTHENTICATED. `caller` is the key's when its secret matched (revoked, expired): such a
    refusal is audited as that key's; None when the caller proved nothing (no key, malformed, unknown
    id or secret): such refusals are only counted (service_runtime.refusal_counts)."""

    def __init__(self, message: str, caller: Caller | None = None) -> None:
        super().__init__(Reason.UNAUTHENTICATED, message, "x-api-key")
        self.caller = caller
        self.reason_text = message


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_key() -> tuple[str, str, str]:
    """Returns (key_id, full key to hand out once, hash to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return key_id, f"{KEY_PREFIX}{key_id}.{secret}", hash_secret(secret)


def parse_key(presented: str) -> tuple[str, str]:
    if not presented.startswith(KEY_PREFIX) or "." not in presented or len(presented) > 200:
        raise KeyRefused("malformed API key")
    key_id, _, secret = presented[len(KEY_PREFIX):].partition(".")
    if not key_id or not secret:
        raise KeyRefused("malformed API key")
    return key_id, secret


def check_owner(owner: str) -> str:
    """An owner as stored: 1-200 printable characters, e.g. "alice@example.com", "system:coordinator"."""
    owner = owner.strip()
    if not owner or len(owner) > MAX_OWNER_LENGTH or not owner.isprintable():
        raise ValueError(f"a key owner is 1-{MAX_OWNER_LENGTH} printable characters (a person or system:<name>)")
    return owner


INSERT_TENANT = "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING"
INSERT_KEY = """
INSERT INTO api_keys (key_id, tenant_id, key_hash, role, expires_at, owner) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (key_id) DO NOTHING
"""
SELECT_KEY = "SELECT tenant_id, key_hash, role, owner, expires_at, revoked_at FROM api_keys WHERE key_id = $1"


async def store_tenant_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: str,
    tenant_name: str,
    key_id: str,
    key_hash: str,
    role: str,
    expires_at: datetime | None = None,
    owner: str = "",
) -> None:
    """Stores a tenant (if new) and a key's hash; `owner` is the person or system it is for."""
    await conn.execute(INSERT_TENANT, tenant_id, tenant_name)
    await conn.execute(INSERT_KEY, key_id, tenant_id, key_hash, role, expires_at, owner)


SELECT_KEYS = """
SELECT key_id, tenant_id, role, owner, created_at, expires_at, revoked_at FROM api_keys
WHERE ($1 = '' OR tenant_id = $1) ORDER BY tenant_id, created_at
"""
REVOKE_KEY = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id"
EXPIRE_KEY = """
UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE key_id = $1 AND revoked_at IS NULL
RETURNING tenant_id, role
"""


class KeyResolver:
    """Resolves presented keys against one service database, with a per-server cache that a change
    to a key empties at once (`watch`); without a running watch nothing is cached."""

    def __init__(self, pool: asyncpg.Pool,
                 portal_revoked: Callable[[portal_sessions.PortalSession], Awaitable[bool]] | None = None) -> None:
        self.pool = pool
        self._portal_revoked = portal_revoked  # the ledger's per-link revocations (storage/portal_links.py)
        self._cache: dict[str, tuple[float, Caller, datetime | None, str]] = {}  # key_id -> ..., hash
        self._listening = False
        self._changes = 0  # key changes heard so far: a lookup that overlapped one is not cached
        self._heard = asyncio.Event()  # set while listening
        self._watch: asyncio.Task[None] | None = None

    async def resolve(self, presented: str | None) -> Caller:
        if not presented:
            raise KeyRefused("missing API key")
        if presented.startswith(portal_sessions.PREFIX):  # a portal session: checked by its signature alone
            session = portal_sessions.verify(presented, portal_sessions.secret_from_env())
            if self._portal_revoked is not None and await self._portal_revoked(session):
                raise portal_sessions.SessionRefused("portal link revoked")
            owner = "finance" if session.kind == portal_sessions.FINANCE else f"customer:{session.customer_id}"
            return Caller(tenant_id=session.tenant_id, key_id=f"ps-{session.session_id}", role=session.role,
                          owner=owner, portal=session)
        key_id, secret = parse_key(presented)
        digest = hash_secret(secret)
        hit = self._cache.get(key_id) if self._listening else None
        if hit is not None and hit[0] > time.monotonic() and hmac.compare_digest(hit[3], digest):
            expires_at = hit[2]
            if expires_at is None or expires_at > datetime.now(expires_at.tzinfo):
                return hit[1]
        changes = self._changes if self._listening else -1
        row = await self.pool.fetchrow(SELECT_KEY, key_id)
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            raise KeyRefused("unknown API key")
        caller = Caller(tenant_id=row["tenant_id"], key_id=key_id, role=row["role"], owner=row["owner"])
        if row["revoked_at"] is not None:
            raise KeyRefused("API key revoked", caller)
        expires_at = row["expires_at"]
        if expires_at is not None and expires_at <= datetime.now(expires_at.tzinfo):
            raise KeyRefused("API key expired", caller)
        if self._listening and changes == self._changes:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (time.monotonic() + _CACHE_TTL_S, caller, expires_at, digest)
        return caller

    def forget(self, key_id: str) -> None:
        self._changes += 1
        self._cache.pop(key_id, None)

    # ---- hearing changes ---------------------------------------------------------------------------

    async def watch(self, dsn: str = "", ready_within_s: float = 5.0) -> None:
        """Starts listening for key changes (idempotent) on a connection of its own to `dsn` (the
        database of the pool; without one, on a connection taken from the pool for good); returns
        once listening, or after `ready_within_s` (until then nothing is cached)."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._listen_forever(dsn), name="api key changes")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), ready_within_s)

    async def close(self) -> None:
        """Stops listening and releases the listener's connection to the pool."""
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listening = False

    def _on_change(self, _conn: object, _pid: int, _channel: str, key_id: str) -> None:
        self.forget(key_id)

    async def _listen_forever(self, dsn: str) -> None:
        delay = 0.1
        while True:
            try:
                if dsn:
                    conn = await asyncpg.connect(dsn, timeout=10, server_settings={"application_name": LISTENER_NAME})
                    try:
                        await self._listen_on(conn)
                    finally:
                        await conn.close(timeout=2)
                else:
                    async with self.pool.acquire() as pooled:
                        await self._listen_on(pooled)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database down or restarting: retry; meanwhile nothing is cached
                log.warning("not hearing API key changes (%s); keys are looked up on every call", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _listen_on(self, conn: asyncpg.Connection) -> None:
        """Listens on KEY_CHANNEL on `conn` until the connection fails."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(KEY_CHANNEL, self._on_change)
        self._cache.clear()  # whatever changed while nobody listened
        self._changes += 1
        self._listening = True
        self._heard.set()
        try:
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LISTENER_CHECK_S)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=_LISTENER_CHECK_S)
        finally:
            self._listening = False
            self._heard.clear()
            self._changes += 1
            self._cache.clear()
            if not lost.is_set():
                with contextlib.suppress(Exception):
                    await conn.remove_listener(KEY_CHANNEL, self._on_change)
