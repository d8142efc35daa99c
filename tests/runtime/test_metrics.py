"""The metrics endpoint: RPC series by method and code after real calls, and the ledger's gauges."""

from __future__ import annotations

import asyncio
import urllib.request

import asyncpg
import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from ledger_service.server import refresh_gauges
from service_runtime import metrics
from tests.ledger.conftest import Ledger


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def metrics_port() -> int:
    port = metrics.start_endpoint("127.0.0.1:0")
    assert port
    return port


async def test_rpc_series_and_gauges_are_scraped(ledger: Ledger, metrics_port: int) -> None:
    await ledger.account("m")
    await ledger.grant("m", "5")
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r", hold_key="h", account_id="m", unit="USD", charges=[pb.Charge(amount="1", kind=pb.USAGE)]),
        metadata=ledger.md)
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key="d", account_id="m", unit="USD", charges=[pb.Charge(amount="99", kind=pb.USAGE)]),
            metadata=ledger.md)
    pool = await asyncpg.create_pool(ledger.dsn, min_size=1, max_size=1)
    try:
        await refresh_gauges(pool)
    finally:
        await pool.close()
    text = await asyncio.to_thread(_scrape, metrics_port)
    ok = ('credits_rpc_total{code="OK",method="ReserveCredits",service="credits.ledger.v1.LedgerService"}')
    rejected = ('credits_rpc_total{code="FAILED_PRECONDITION",method="DebitCredits",'
                'service="credits.ledger.v1.LedgerService"}')
    assert ok in text and rejected in text
    assert 'credits_rpc_duration_seconds_bucket{code="OK",le="0.1",method="ReserveCredits"' in text
    assert "credits_ledger_holds_pending 1.0" in text


def test_json_logs_carry_request_and_tenant_ids() -> None:
    import json
    import logging

    from service_runtime.logs import JsonFormatter, request_id, tenant_id

    request_id.set("req-7")
    tenant_id.set("acme")
    line = JsonFormatter().format(logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None))
    assert json.loads(line) | {"ts": None} == {"ts": None, "level": "INFO", "logger": "x", "msg": "hello you",
                                               "request_id": "req-7", "tenant_id": "acme"}
