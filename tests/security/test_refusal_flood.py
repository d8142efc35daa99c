"""Finding 3 (audit flooding without a key): refused calls that prove no key are counted per window,
source address and reason (one row per window with a count), so the audit grows by a bounded
number of rows however many such calls arrive; refusals of a real key keep their own records, now
under the key's tenant; an optional per-key rate limit answers RESOURCE_EXHAUSTED with RetryInfo."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
from credits.audit.v1 import audit_pb2, audit_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from ledger_service.server import create_ledger_server
from service_runtime.settings import Settings
from tests.ledger.conftest import Ledger
from tests.security.refusal_flood import KEYS, flood
from tests.tenancy import add_tenant_key

CALLS = 1_500


async def test_a_flood_of_keyless_calls_adds_a_bounded_number_of_rows(ledger: Ledger) -> None:
    started = time.time()
    growth = await flood(ledger.stub, ledger.dsn, CALLS)
    windows_spanned = int(time.time() // 60 - started // 60) + 1
    assert growth.rows["audit_log"] == 0
    assert 0 < growth.rows["refused_call_windows"] <= len(KEYS) * windows_spanned
    conn = await asyncpg.connect(ledger.dsn)
    try:
        rows = await conn.fetch("SELECT source, reason, sum(calls) AS calls FROM refused_call_windows "
                                "GROUP BY source, reason ORDER BY reason")
        assert [tuple(r) for r in rows] == [("ipv4:127.0.0.1", "malformed API key", CALLS // 3),
                                            ("ipv4:127.0.0.1", "missing API key", CALLS // 3),
                                            ("ipv4:127.0.0.1", "unknown API key", CALLS // 3)]
        # The owner may prune old windows (the table is a counter, not the append-only trail).
        assert await conn.fetchval("SELECT count(*) FROM refused_call_windows WHERE window_s = 60") == \
            growth.rows["refused_call_windows"]
    finally:
        await conn.close()
    again = await flood(ledger.stub, ledger.dsn, 300)  # the same window: counts grow, rows barely
    assert again.rows["audit_log"] == 0 and again.rows["refused_call_windows"] <= len(KEYS)


async def test_refusals_of_a_real_key_keep_their_records_under_its_tenant(ledger: Ledger) -> None:
    revoked = await add_tenant_key(ledger.dsn, "tenant-a", role="finance")
    conn = await asyncpg.connect(ledger.dsn)
    try:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", revoked[3:].split(".")[0])
    finally:
        await conn.close()
    readonly = await add_tenant_key(ledger.dsn, "tenant-a", role="readonly")
    for key in (revoked, readonly):
        try:
            await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="x", account_id="x"),
                                            metadata=[("x-api-key", key)])
        except grpc.aio.AioRpcError:
            pass
    audit = audit_pb2_grpc.AuditServiceStub(ledger.channel)
    seen = await audit.QueryAudit(audit_pb2.QueryAuditRequest(refused_only=True), metadata=ledger.md)
    assert sorted((r.code, r.key_id, r.tenant_id) for r in seen.records) == sorted([
        ("UNAUTHENTICATED", revoked[3:].split(".")[0], "tenant-a"),
        ("PERMISSION_DENIED", readonly[3:].split(".")[0], "tenant-a")])


async def test_a_key_over_its_rate_limit_gets_resource_exhausted_with_retry_info(ledger: Ledger) -> None:
    settings = Settings(key_rate_limit=5, key_rate_burst=5, key_rate_exempt_roles="service")
    server, port, pool = await create_ledger_server(ledger.dsn, "127.0.0.1:0", settings)
    service = await add_tenant_key(ledger.dsn, "tenant-a", role="service")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            request = pb.GetAccountRequest(account_id="nobody")

            async def code(key: str) -> tuple[grpc.StatusCode, grpc.aio.AioRpcError | None]:
                try:
                    await stub.GetAccount(request, metadata=[("x-api-key", key)])
                except grpc.aio.AioRpcError as err:
                    return err.code(), err
                return grpc.StatusCode.OK, None

            assert [(await code(ledger.key))[0] for _ in range(5)] == [grpc.StatusCode.NOT_FOUND] * 5  # the burst
            exhausted, err = await code(ledger.key)
            assert exhausted == grpc.StatusCode.RESOURCE_EXHAUSTED and err is not None
            assert "rate limit of 5 calls/s" in (err.details() or "")
            status = status_pb2.Status.FromString(dict(err.trailing_metadata() or ())["grpc-status-details-bin"])
            info = error_details_pb2.RetryInfo()
            assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and status.details[0].Unpack(info)
            delay = info.retry_delay.ToTimedelta().total_seconds()
            assert 0 < delay <= 0.2 + 1e-6
            # Other keys have their own bucket; exempt roles have none.
            assert [(await code(service))[0] for _ in range(20)] == [grpc.StatusCode.NOT_FOUND] * 20
            await asyncio.sleep(delay)
            assert (await code(ledger.key))[0] == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
        await pool.close()
    conn = await asyncpg.connect(ledger.dsn)
    try:  # an authenticated refusal: its own record, with the key
        rows = await conn.fetch("SELECT key_id, tenant_id FROM audit_log WHERE code = 'RESOURCE_EXHAUSTED'")
        assert [tuple(r) for r in rows] == [(ledger.key[3:].split(".")[0], "tenant-a")]
    finally:
        await conn.close()
