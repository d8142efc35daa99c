"""The audit trail: mutations and refused attempts are recorded durably, queryable per tenant."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from credits.audit.v1 import audit_pb2, audit_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.tenancy import add_tenant_key


async def test_mutations_and_refused_attempts_are_audited(ledger: Ledger) -> None:
    audit = audit_pb2_grpc.AuditServiceStub(ledger.channel)
    md = [("x-api-key", ledger.key), ("x-request-id", "req-42")]
    await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
    lot = await ledger.grant("acme", "5", reason_code="welcome")
    # Refused: bad input, no key, wrong role, another tenant's id.
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.grant("acme", "-1")
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.stub.GetLot(pb.GetLotRequest(lot_id=lot.lot_id))
    readonly = await add_tenant_key(ledger.dsn, "tenant-a", role="readonly")
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.stub.VoidGrant(pb.VoidGrantRequest(idempotency_key="v", lot_id=lot.lot_id),
                                    metadata=[("x-api-key", readonly)])
    other = await add_tenant_key(ledger.dsn, "tenant-b")
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.stub.GetLot(pb.GetLotRequest(lot_id=lot.lot_id), metadata=[("x-api-key", other)])

    all_a = await audit.QueryAudit(audit_pb2.QueryAuditRequest(), metadata=ledger.md)
    by_method = [(r.method.rsplit("/", 1)[1], r.code) for r in all_a.records]
    assert by_method == [("CreateAccount", "OK"), ("GrantCredits", "OK"), ("GrantCredits", "INVALID_ARGUMENT"),
                         ("VoidGrant", "PERMISSION_DENIED")]
    create = all_a.records[0]
    assert create.request_id == "req-42" and create.role == "admin" and "account_id=acme" in create.subjects
    assert all_a.records[1].reason == "welcome"
    assert all_a.records[3].role == "readonly" and f"lot_id={lot.lot_id}" in all_a.records[3].subjects

    refused = await audit.QueryAudit(audit_pb2.QueryAuditRequest(refused_only=True, method="GrantCredits"),
                                     metadata=ledger.md)
    assert [r.code for r in refused.records] == ["INVALID_ARGUMENT"]
    # The other tenant sees only its own attempt, which was refused with NOT_FOUND.
    seen_b = await audit.QueryAudit(audit_pb2.QueryAuditRequest(), metadata=[("x-api-key", other)])
    assert [(r.method.rsplit("/", 1)[1], r.code) for r in seen_b.records] == [("GetLot", "NOT_FOUND")]

    conn = await asyncpg.connect(ledger.dsn)
    try:
        # The call with no key proved nothing: it is counted in its window, not stored on its own.
        assert await conn.fetch("SELECT method, code FROM audit_log WHERE tenant_id = ''") == []
        windows = await conn.fetch("SELECT source, reason, calls FROM refused_call_windows")
        assert [tuple(w) for w in windows] == [("ipv4:127.0.0.1", "missing API key", 1)]
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM audit_log")
    finally:
        await conn.close()


async def test_audit_query_needs_an_auditing_role(ledger: Ledger) -> None:
    audit = audit_pb2_grpc.AuditServiceStub(ledger.channel)
    service = await add_tenant_key(ledger.dsn, "tenant-a", role="service")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await audit.QueryAudit(audit_pb2.QueryAuditRequest(), metadata=[("x-api-key", service)])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await audit.QueryAudit(audit_pb2.QueryAuditRequest(page_token="x"), metadata=ledger.md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
