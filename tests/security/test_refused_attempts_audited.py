"""Refused attempts (expired key, revoked key, the requester approving its own grant) get the
documented status, leave an audit record, and write nothing else; an over-limit support grant is
audited and creates no lot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.server import create_ledger_server
from service_runtime.api_keys import mint_key, store_tenant_key
from service_runtime.settings import Settings
from tests.ledger.requests_and_checks import table_counts
from tests.security.conftest import TENANT_A, Stack, code_of
from tests.security.test_support_grants import grant, md, setup_unit


async def _audit(dsn: str, key_id: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT method, code FROM audit_log WHERE key_id = $1 ORDER BY audit_id", key_id)
        return [(r["method"].rsplit("/", 1)[1], r["code"]) for r in rows]
    finally:
        await conn.close()


async def test_expired_and_revoked_keys_are_refused_audited_and_write_nothing(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.ledger_dsn)
    keys = {}
    try:
        for state in ("expired", "revoked"):
            key_id, key, key_hash = mint_key()
            expires = datetime.now(UTC) - timedelta(seconds=1) if state == "expired" else None
            await store_tenant_key(conn, TENANT_A, TENANT_A, key_id, key_hash, "admin", expires)
            if state == "revoked":
                await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", key_id)
            keys[state] = (key_id, key)
    finally:
        await conn.close()
    before = await table_counts(stack.ledger_dsn)
    for state, (key_id, key) in keys.items():
        code, details, _ = await code_of(stack.ledger.CreateAccount(
            pb.CreateAccountRequest(idempotency_key=f"k-{state}", account_id=f"acct-{state}"), metadata=md(key)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and state in details
        assert await _audit(stack.ledger_dsn, key_id) == [("CreateAccount", "UNAUTHENTICATED")]
    assert await table_counts(stack.ledger_dsn) == before


async def test_over_limit_grant_and_self_approval_are_audited(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    support_id = support.split(".")[0][3:]
    pending = await stack.ledger.GrantCredits(grant(account, unit, "99"), metadata=md(support))
    assert not pending.lot_id and pending.grant_request.request_id
    assert await _audit(stack.ledger_dsn, support_id) == [("GrantCredits", "OK")]
    # The requester gains the finance role, and still may not decide its own request.
    conn = await asyncpg.connect(stack.ledger_dsn)
    try:
        await conn.execute("UPDATE api_keys SET role = 'finance' WHERE key_id = $1", support_id)
    finally:
        await conn.close()
    server, port, pool = await create_ledger_server(stack.ledger_dsn, "127.0.0.1:0", Settings())  # no key cache
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        before = await table_counts(stack.ledger_dsn)
        code, details, _ = await code_of(ledger_pb2_grpc.LedgerServiceStub(channel).ApproveGrantRequest(
            pb.ApproveGrantRequestRequest(idempotency_key="self", request_id=pending.grant_request.request_id),
            metadata=md(support)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "two-person rule" in details
        assert await table_counts(stack.ledger_dsn) == before
        assert (await _audit(stack.ledger_dsn, support_id))[-1] == ("ApproveGrantRequest", "PERMISSION_DENIED")
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()
