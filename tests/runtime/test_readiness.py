"""gRPC health follows the database: NOT_SERVING while it is down, SERVING again once it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from ledger_service.api.servicer import SERVICE
from ledger_service.server import create_ledger_server
from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.readiness import LIVENESS
from service_runtime.settings import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTERVAL_S = 0.2


async def _status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def _eventually(stub: health_pb2_grpc.HealthStub, wanted: int, within_s: float = 8) -> None:
    deadline = time.monotonic() + within_s
    while (status := await _status(stub)) != wanted:
        assert time.monotonic() < deadline, f"health stayed {status}, wanted {wanted}"
        await asyncio.sleep(INTERVAL_S / 4)


def _database_up() -> float | None:
    return REGISTRY.get_sample_value("credits_database_up", {"server": "credits-ledger"})


def _watch_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("database health of")]


async def test_health_follows_the_database_and_a_busy_pool_stays_serving(tmp_path: Path) -> None:
    pg = await asyncio.to_thread(lambda: EmbeddedPostgres(tmp_path / "pg", fsync=False).start())
    settings = Settings(health_interval_s=INTERVAL_S, health_timeout_s=1.0, pool_max_size=2)
    try:
        server, port, pool = await create_ledger_server(pg.dsn(), "127.0.0.1:0", settings)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            assert [await _status(stub, name) for name in ("", SERVICE, LIVENESS)] == [SERVING] * 3
            assert _database_up() == 1

            # Every pool connection taken (as under load): still SERVING, the check has its own connection.
            held = [await pool.acquire() for _ in range(2)]
            try:
                await asyncio.sleep(INTERVAL_S * 4)
                assert await _status(stub) == SERVING
            finally:
                for conn in held:
                    await pool.release(conn)

            await asyncio.to_thread(pg.stop, "immediate")
            await _eventually(stub, NOT_SERVING)
            assert await _status(stub, SERVICE) == NOT_SERVING
            assert await _status(stub, LIVENESS) == SERVING  # liveness probes must not restart the process
            assert _database_up() == 0

            await asyncio.to_thread(pg.start)
            await _eventually(stub, SERVING)
            assert await _status(stub, SERVICE) == SERVING
            assert _database_up() == 1
        finally:
            await channel.close()
            assert len(_watch_tasks()) == 1
            await server.stop(0)
            assert _watch_tasks() == []  # stop() ends the watch before it returns
            await pool.close()
    finally:
        await asyncio.to_thread(pg.stop, "immediate")
