"""Idempotency guard: the caller's key is claimed and answered in the transaction of the change.

`claim` inserts the key row first (a concurrent request with the same key waits on it, then sees
the committed answer); `record` stores the serialized response before commit. A replay raises
`Replayed` with the stored bytes; the API layer parses them into the response type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg

from service_runtime.audit import AuditRecord, claim_audit
from service_runtime.rejections import conflict, precondition

CLAIM_KEY = """
INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response)
VALUES ($1, $2, $3, $4, '') ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1
"""
SELECT_KEY = "SELECT method, request_hash, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"
STORE_RESPONSE = "UPDATE idempotency_keys SET response = $3 WHERE tenant_id = $1 AND key = $2"
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
STORE_RESPONSE_AND_AUDIT = f"""
WITH stored AS (UPDATE idempotency_keys SET response = $3 WHERE tenant_id = $1 AND key = $2)
INSERT INTO audit_log ({_AUDIT_COLUMNS}) VALUES ($4, $5, $6, $7, $8, $9, $10, string_to_array($11, chr(31)), $12)
"""
TOMBSTONE_SUFFIX = ":aborted"


class Replayed(Exception):
    """The key was already answered; `response` holds the stored serialized response."""

    def __init__(self, response: bytes) -> None:
        super().__init__("replayed")
        self.response = response


class Guard:
    """One request's idempotency key. An empty key (allowed for usage ingestion) guards nothing."""

    def __init__(self, tenant_id: str, key: str, method: str, request: bytes,
                 encode: Callable[[Any], Any]) -> None:
        self.tenant_id = tenant_id
        self.key = key
        self.method = method
        self.request_hash = hashlib.sha256(request).digest()
        self._encode = encode
        self.response: Any = None
        self._audit: AuditRecord | None = None

    async def claim(self, conn: asyncpg.Connection) -> None:
        if not self.key:
            return
        if await conn.fetchval(CLAIM_KEY, self.tenant_id, self.key, self.method, self.request_hash):
            return
        row = await conn.fetchrow(SELECT_KEY, self.tenant_id, self.key)
        assert row is not None
        if row["method"] == self.method + TOMBSTONE_SUFFIX:
            raise precondition("idempotency_key", f"{self.method} with this key was aborted before it "
                                                  "arrived; it will not run")
        if row["method"] != self.method or bytes(row["request_hash"]) != self.request_hash:
            raise conflict("idempotency_key", f"already used for a different request ({row['method']})")
        raise Replayed(bytes(row["response"]))

    async def record(self, conn: asyncpg.Connection, result: Any) -> Any:
        """Encodes `result` into the response message, stores it under the key, returns it.

        The call's audit record (if the interceptor prepared one) is written in this same
        transaction: durable exactly when the change is, and no second commit per mutation."""
        self.response = self._encode(result)
        if self._audit is None:  # kept on the guard: a retried transaction writes it again
            self._audit = claim_audit()
        audit = self._audit
        row = () if audit is None else (
            audit.tenant_id, audit.key_id, audit.role, audit.method, audit.code, audit.detail[:1000], audit.reason,
            chr(31).join(audit.subjects), audit.request_id)
        if self.key:
            stored = (self.tenant_id, self.key, self.response.SerializeToString())
            await conn.execute(STORE_RESPONSE_AND_AUDIT if row else STORE_RESPONSE, *stored, *row)
        elif row:
            await conn.execute(INSERT_AUDIT, *row)
        return self.response


async def burn_key(conn: asyncpg.Connection, tenant_id: str, key: str, method: str) -> None:
    """Makes a later `method` call with `key` fail (a cancel that arrived before its try)."""
    await conn.execute(BURN_KEY, tenant_id, key, method + TOMBSTONE_SUFFIX)
