"""The audit trail: who did what, to which objects, why, and with what outcome.

The server interceptor records every mutation (any request with an idempotency_key) and every
refused attempt (no/unknown/expired/revoked key, wrong role, bad input, another tenant's id).
Records are written by a group-committing writer; a caller is answered only after its record is
durable, so an acknowledged mutation is always in the trail. Every server also answers
credits.audit.v1.AuditService/QueryAudit over its own database.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from credits.audit.v1 import audit_pb2 as pb
from credits.audit.v1 import audit_pb2_grpc
from google.protobuf.message import Message

from service_runtime.call_context import current_caller
from service_runtime.group_commit import GroupCommit
from service_runtime.pages import decode_int_token, encode_token, page_size
from service_runtime.proto_time import from_timestamp, to_timestamp
from service_runtime.rejections import invalid

# Request fields that name the objects a call is about.
SUBJECT_FIELDS = ("account_id", "parent_account_id", "from_account_id", "to_account_id", "lot_id", "hold_key",
                  "transfer_id", "invoice_id", "customer_id", "incident_id", "tenant_id", "request_id")
REASON_FIELDS = ("reason", "reason_code")
# Subjects travel joined by U+001F (unnest would flatten a text[][]) and are split back here.
INSERT = """
INSERT INTO audit_log (tenant_id, key_id, role, method, code, detail, reason, subjects, request_id)
SELECT t, k, r, m, c, d, re, string_to_array(s, chr(31)), q
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[]) AS x(t, k, r, m, c, d, re, s, q)
"""


def clean(text: str, limit: int = 500) -> str:
    """Text as Postgres can store it: no NUL (it would fail the whole audit batch), bounded."""
    return text[:limit].replace("\x00", "\\0")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    tenant_id: str
    key_id: str
    role: str
    method: str
    code: str
    detail: str
    reason: str
    subjects: tuple[str, ...]
    request_id: str


@dataclass
class PendingAudit:
    """The record of the call in progress; a data layer that writes it in its own transaction
    claims it, so the interceptor does not write it again."""

    record: AuditRecord
    claimed: bool = False


pending_audit: contextvars.ContextVar[PendingAudit | None] = contextvars.ContextVar("pending_audit", default=None)


def claim_audit() -> AuditRecord | None:
    """Takes the current call's audit record to write in the caller's transaction (None if none)."""
    pending = pending_audit.get()
    if pending is None or pending.claimed:
        return None
    pending.claimed = True
    return pending.record


def is_mutation(request: Message) -> bool:
    descriptor = getattr(request, "DESCRIPTOR", None)
    return descriptor is not None and "idempotency_key" in descriptor.fields_by_name


_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _fields_of(descriptor: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The subject and reason fields a message type has (computed once per type)."""
    found = _FIELDS.get(descriptor.full_name)
    if found is None:
        by_name = descriptor.fields_by_name
        found = _FIELDS[descriptor.full_name] = (tuple(n for n in SUBJECT_FIELDS if n in by_name),
                                                 tuple(n for n in REASON_FIELDS if n in by_name))
    return found


def describe(request: Any) -> tuple[tuple[str, ...], str]:
    """(subjects, reason) named by a request's top-level string fields."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return (), ""
    subject_fields, reason_fields = _fields_of(descriptor)
    subjects: list[str] = []
    reason = ""
    for name in subject_fields:
        value = getattr(request, name)
        if isinstance(value, str) and value:
            subjects.append(clean(f"{name}={value}", 160))
    for name in reason_fields:
        value = getattr(request, name)
        if isinstance(value, str) and value:
            reason = clean(value)
            break
    return tuple(subjects), reason


class AuditWriter:
    """Batches audit records from concurrent calls into one INSERT; `record` returns once durable."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 1000) -> None:
        self._pool = pool
        self._commits: GroupCommit[AuditRecord] = GroupCommit(self._write, "audit records", max_batch)

    async def record(self, rec: AuditRecord) -> None:
        await self._commits.add(rec)

    async def _write(self, records: list[AuditRecord]) -> None:
        await self._pool.execute(INSERT, *_columns(records))


def _columns(records: list[AuditRecord]) -> list[list[str]]:
    return [
        [r.tenant_id for r in records], [r.key_id for r in records], [r.role for r in records],
        [r.method for r in records], [r.code for r in records], [r.detail[:1000] for r in records],
        [r.reason for r in records], [chr(31).join(r.subjects) for r in records], [r.request_id for r in records],
    ]


SELECT = """
SELECT audit_id, tenant_id, key_id, role, method, code, detail, reason, subjects, request_id, at FROM audit_log
WHERE tenant_id = $1 AND ($2 = '' OR $2 = ANY(subjects)) AND ($3 = '' OR key_id = $3)
  AND ($4 = '' OR method = $4 OR method LIKE '%/' || $4) AND ($5::timestamptz IS NULL OR at >= $5)
  AND ($6::timestamptz IS NULL OR at < $6) AND (NOT $7 OR code <> 'OK') AND audit_id > $8
ORDER BY audit_id LIMIT $9
"""


def _when(msg: Any, name: str) -> datetime | None:
    return from_timestamp(getattr(msg, name), name) if msg.HasField(name) else None


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """QueryAudit over this service's own audit_log, scoped to the caller's tenant."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def QueryAudit(self, request: pb.QueryAuditRequest, context: Any) -> pb.QueryAuditResponse:
        limit = page_size(request.page_size)
        after = decode_int_token(request.page_token)
        for name in ("subject", "key_id", "method"):
            value = getattr(request, name)
            if len(value) > 200:
                raise invalid(name, "is longer than 200 characters")
            if "\x00" in value:
                raise invalid(name, "must not contain NUL")
        rows = await self._pool.fetch(
            SELECT, current_caller().tenant_id, request.subject, request.key_id, request.method,
            _when(request, "from"), _when(request, "to"), request.refused_only, after, limit)
        out = pb.QueryAuditResponse(records=[
            pb.AuditRecord(audit_id=r["audit_id"], tenant_id=r["tenant_id"], key_id=r["key_id"], role=r["role"],
                           method=r["method"], code=r["code"], detail=r["detail"], reason=r["reason"],
                           subjects=list(r["subjects"]), request_id=r["request_id"], at=to_timestamp(r["at"]))
            for r in rows])
        if len(rows) == limit:
            out.next_page_token = encode_token(rows[-1]["audit_id"])
        return out


AUDIT_SERVICE = "credits.audit.v1.AuditService"
AUDIT_PERMISSIONS = {f"/{AUDIT_SERVICE}/QueryAudit": frozenset({"admin", "finance", "support", "operator"})}
