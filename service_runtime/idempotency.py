"""Idempotent mutations, for every service: the caller's key is recorded in the transaction of the change.

One table (`idempotency_keys`, in service_runtime/migrations), one key rule (`check_key`, which is
service_runtime.identifiers.check_key), one answer to a reused key: same key + same request returns
the stored response; same key + another request is ALREADY_EXISTS naming `idempotency_key`. Two
ways to use it:

- `Guard` (claim first; the invoice service): `claim` takes the key's advisory lock at the start
  of the caller's transaction and reads the key (`idempotency_claim`, service_runtime/migrations),
  so a concurrent request with the same key waits and then sees the committed answer; `record`
  inserts the key with its response, and the call's audit record, before commit. A replay raises
  `Replayed` with the stored bytes. `burn_key` makes a later call with a key fail.

Idempotency records are only ever inserted, complete: the app role has no UPDATE or DELETE on them
(service_runtime/migrations/app_role_grants.txt), so no one can turn a retry into a second effect.
- `run_idempotent` (check, work, remember; the ledger), and its parts `stored_response`,
  `remember` and `request_hash` for callers that compose their own transaction. Two concurrent
  first calls race on the primary key: the loser's transaction rolls back and it returns the
  winner's stored response.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from google.protobuf.message import Message

from service_runtime.audit import AuditRecord, claim_audit
from service_runtime.identifiers import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from service_runtime.identifiers import check_key as check_key  # the one key rule, re-exported here
from service_runtime.rejections import conflict, precondition

T = TypeVar("T")

SELECT = "SELECT method, request_hash, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"
INSERT = """
INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response) VALUES ($1, $2, $3, $4, $5)
"""
REMEMBER_IF_ABSENT = INSERT.rstrip() + "\nON CONFLICT DO NOTHING\n"
CLAIM_KEY = "SELECT method, request_hash, response FROM idempotency_claim($1, $2)"
BURN_KEY = """
INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response)
VALUES ($1, $2, $3, '', '') ON CONFLICT (tenant_id, key) DO NOTHING
"""
# The call's audit record (service_runtime.audit), written in the transaction of the change; with the
# stored response in the same statement when there is one.
_AUDIT_COLUMNS = "tenant_id, key_id, role, method, code, detail, reason, subjects, request_id"
INSERT_AUDIT = f"""
INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, string_to_array($8, chr(31)), $9)
"""
INSERT_AND_AUDIT = f"""
WITH stored AS (INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response)
                VALUES ($1, $2, $3, $4, $5))
INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES ($6, $7, $8, $9, $10, $11, $12, string_to_array($13, chr(31)), $14)
"""
TOMBSTONE_SUFFIX = ":aborted"


def request_hash(request: Message) -> bytes:
    return hash_of_serialized(request.SerializeToString(deterministic=True))


def hash_of_serialized(serialized: bytes) -> bytes:
    """`request_hash` of a request given as its deterministic serialization (a batch has it already)."""
    return hashlib.sha256(serialized).digest()


def _check_same_request(row: asyncpg.Record, key: str, method: str, digest: bytes) -> bytes:
    """The stored response of a key used before, if it was used for this very request."""
    if row["method"] == method + TOMBSTONE_SUFFIX:
        raise precondition("idempotency_key", f"{method} with this key was aborted before it arrived; it will not run")
    if row["method"] != method or bytes(row["request_hash"]) != digest:
        raise conflict("idempotency_key", f"{key!r} was already used for a different request ({row['method']})")
    return bytes(row["response"])


# ---- check, work, remember --------------------------------------------------------------------------

async def stored_response(conn: asyncpg.Connection, tenant_id: str, key: str, method: str,
                          digest: bytes) -> bytes | None:
    """The response stored under `key` for this request, None if the key is new."""
    row = await conn.fetchrow(SELECT, tenant_id, key)
    return None if row is None else _check_same_request(row, key, method, digest)


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


# ---- claim first ------------------------------------------------------------------------------------

class Replayed(Exception):
    """The key was already answered; `response` holds the stored serialized response."""

    def __init__(self, response: bytes) -> None:
        super().__init__("replayed")
        self.response = response


class Guard:
    """One request's idempotency key. An empty key (allowed where the key is optional) guards nothing."""

    def __init__(self, tenant_id: str, key: str, method: str, digest: bytes, encode: Callable[[Any], Any]) -> None:
        self.tenant_id = tenant_id
        self.key = key
        self.method = method
        self.request_hash = digest
        self._encode = encode
        self.response: Any = None
        self._audit: AuditRecord | None = None

    @classmethod
    def of(cls, tenant_id: str, method: str, request: Any, encode: Callable[[Any], Any], *,
           key_required: bool = True) -> Guard:
        """The guard of `request`'s `idempotency_key` (checked by the one key rule)."""
        key = check_key(request.idempotency_key, required=key_required)
        return cls(tenant_id, key, method, request_hash(request), encode)

    async def claim(self, conn: asyncpg.Connection) -> None:
        """Claims the key in `conn`'s transaction (first statement, READ COMMITTED): holds it until
        commit; Replayed if it was answered before."""
        if not self.key:
            return
        row = await conn.fetchrow(CLAIM_KEY, self.tenant_id, self.key)
        if row is not None:
            raise Replayed(_check_same_request(row, self.key, self.method, self.request_hash))

    async def record(self, conn: asyncpg.Connection, result: Any) -> Any:
        """Encodes `result` into the response message, stores it under the key, returns it.

        The call's audit record (if the call guard prepared one) is written in this same
        transaction: durable exactly when the change is, and no second commit per mutation."""
        self.response = self._encode(result)
        if self._audit is None:  # kept on the guard: a retried transaction writes it again
            self._audit = claim_audit()
        audit = self._audit
        row = () if audit is None else (
            audit.tenant_id, audit.key_id, audit.role, audit.method, audit.code, audit.detail[:1000], audit.reason,
            chr(31).join(audit.subjects), audit.request_id)
        if self.key:
            stored = (self.tenant_id, self.key, self.method, self.request_hash, self.response.SerializeToString())
            await conn.execute(INSERT_AND_AUDIT if row else INSERT, *stored, *row)
        elif row:
            await conn.execute(INSERT_AUDIT, *row)
        return self.response


async def burn_key(conn: asyncpg.Connection, tenant_id: str, key: str, method: str) -> None:
    """Makes a later `method` call with `key` fail (a cancel that arrived before its try). Waits for
    a call holding the key to end: then the key keeps that call's answer."""
    await conn.fetch(CLAIM_KEY, tenant_id, key)
    await conn.execute(BURN_KEY, tenant_id, key, method + TOMBSTONE_SUFFIX)
