"""Audit growth under a flood of refused unauthenticated calls, measured on a real ledger server.

    python -m tests.security.refusal_flood [calls]     # default 10,000

Sends `calls` requests with no key, a malformed key and an unknown key (a third each, 50 at a time)
to a fresh ledger server, and prints the rows and bytes each audit table gained. Importable: the
security tests use `flood` with fewer calls.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

AUDIT_TABLES = ("audit_log", "refused_call_windows")
KEYS = (None, "not-a-key", "ck_0123456789ab.wrong-secret")


@dataclass
class Growth:
    calls: int
    rows: dict[str, int]
    bytes: dict[str, int]
    seconds: float


async def _sizes(dsn: str) -> tuple[dict[str, int], dict[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows, sizes = {}, {}
        for table in AUDIT_TABLES:
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                rows[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
                sizes[table] = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
        return rows, sizes
    finally:
        await conn.close()


async def flood(stub: ledger_pb2_grpc.LedgerServiceStub, dsn: str, calls: int, concurrency: int = 50) -> Growth:
    """Sends `calls` refused calls to `stub` (all must be UNAUTHENTICATED); the audit growth in `dsn`."""
    rows0, bytes0 = await _sizes(dsn)
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0

    async def one(i: int) -> None:
        key = KEYS[i % len(KEYS)]
        metadata = [("x-api-key", key)] if key else []
        try:
            await stub.GetLot(pb.GetLotRequest(lot_id="lot-1"), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        else:
            raise AssertionError("an unauthenticated call was answered")

    while sent < calls:
        batch = min(concurrency, calls - sent)
        await asyncio.gather(*(one(sent + i) for i in range(batch)))
        sent += batch
    seconds = loop.time() - started
    rows1, bytes1 = await _sizes(dsn)
    return Growth(calls, {t: rows1[t] - rows0.get(t, 0) for t in rows1},
                  {t: bytes1[t] - bytes0.get(t, 0) for t in bytes1}, round(seconds, 2))


async def main(calls: int) -> None:
    from ledger_service.server import create_ledger_server
    from ledger_service.storage import MIGRATIONS_DIR
    from service_runtime.databases import TENANCY_MIGRATIONS
    from service_runtime.settings import Settings
    from tests.postgres_fixtures import fresh_database, stop_server

    try:
        dsn = await fresh_database("flood", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
        server, port, pool = await create_ledger_server(dsn, "127.0.0.1:0", Settings())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                growth = await flood(ledger_pb2_grpc.LedgerServiceStub(channel), dsn, calls)
        finally:
            await server.stop(0)
            await pool.close()
        print(json.dumps(growth.__dict__, indent=2))
    finally:
        stop_server()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
