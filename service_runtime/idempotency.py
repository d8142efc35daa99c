"""Idempotent transactions: the caller's key is recorded in the same transaction as the change.

Same key + same request returns the stored response; same key + another request is
ALREADY_EXISTS naming the key. Two concurrent first calls race on the primary key: the loser's
transaction rolls back and it returns the winner's stored response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from google.protobuf.message import Message

from service_runtime.rejections import conflict, invalid

T = TypeVar("T")

SELECT = "SELECT method, request_hash, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"
INSERT = """
INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response) VALUES ($1, $2, $3, $4, $5)
"""
REMEMBER_IF_ABSENT = INSERT.rstrip() + "\nON CONFLICT DO NOTHING\n"
MAX_KEY_LENGTH = 200


def request_hash(request: Message) -> bytes:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def check_key(key: str) -> str:
    if not key:
        raise invalid("idempotency_key", "is required for every mutation")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise invalid("idempotency_key", f"must be 1-{MAX_KEY_LENGTH} printable characters")
    return key


async def stored_response(conn: asyncpg.Connection, tenant_id: str, key: str, method: str,
                          digest: bytes) -> bytes | None:
    row = await conn.fetchrow(SELECT, tenant_id, key)
    if row is None:
        return None
    if row["method"] != method or bytes(row["request_hash"]) != digest:
        raise conflict("idempotency_key", f"{key!r} was used for a different request")
    return bytes(row["response"])


async def remember(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, key: str, method: str, digest: bytes,
                   response: Message, *, if_absent: bool = False) -> None:
    """Stores a response under its key (in the caller's transaction when given a connection).

    `if_absent` tolerates a key already stored by a concurrent identical call (sweeps whose parts
    are idempotent on their own); otherwise a duplicate key raises UniqueViolationError.
    """
    sql = REMEMBER_IF_ABSENT if if_absent else INSERT
    await conn.execute(sql, tenant_id, key, method, digest, response.SerializeToString())


async def run_idempotent(
    pool: asyncpg.Pool, tenant_id: str, key: str, method: str, request: Message,
    work: Callable[[asyncpg.Connection], Awaitable[Any]], pack: Callable[[Any], Message],
) -> bytes | Message:
    """Runs `work` once per key in one transaction; returns the fresh response or stored bytes."""
    check_key(key)
    digest = request_hash(request)
    for _attempt in range(3):
        try:
            async with pool.acquire() as conn, conn.transaction():
                stored = await stored_response(conn, tenant_id, key, method, digest)
                if stored is not None:
                    return stored
                response = pack(await work(conn))
                await conn.execute(INSERT, tenant_id, key, method, digest, response.SerializeToString())
                return response
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "idempotency_keys_pkey":
                raise
    raise RuntimeError("idempotency key race did not settle")
