"""Readiness: the gRPC health status follows the server's database.

Invariant: after every check, the overall status ("") and each registered service name are SERVING
iff the database answered `SELECT 1` within `timeout_s` (on the watcher's held connection, or failing
that on a fresh one); `LIVENESS` stays SERVING whatever the database does (a liveness probe must not
restart a process that only waits for its database). Each SERVING <-> NOT_SERVING change is logged
once and mirrored in the gauge credits_database_up. Once `stop()` of the server returns, the watcher
task is finished and its connection closed.

Why a dedicated connection and not the service pool: `pool.acquire()` waits for a free connection, so
a pool exhausted by slow requests would look like an outage; the replica would be drained while
healthy-but-busy, its load would move to the others, and the same would happen there. The watcher
holds one connection of its own (one Postgres backend per server, with the same DSN and role as the
pool, so credentials are checked too) and never competes with request traffic. A busy pool is load,
not an outage: it is for timeouts and metrics, not for health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2

from service_runtime import metrics

log = logging.getLogger(__name__)

LIVENESS = "liveness"  # the name liveness probes ask for: SERVING while the process serves at all

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseWatch:
    """Checks the database every `interval_s` and sets `names` SERVING or NOT_SERVING to match."""

    def __init__(self, dsn: str, servicer: health.aio.HealthServicer, names: Sequence[str], label: str,
                 interval_s: float, timeout_s: float) -> None:
        self._dsn = dsn
        self._servicer = servicer
        self._names = list(names)
        self._gauge = metrics.DATABASE_UP.labels(label)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None
        self.up = True  # the server starts SERVING: it has just migrated / opened its pool
        self._gauge.set(1)

    async def run(self) -> None:
        """Checks until cancelled; closes the held connection on the way out."""
        try:
            while True:
                await asyncio.sleep(self._interval_s)
                try:
                    await self._publish(await self.check())
                except Exception:  # never let the watch die quietly: health would freeze
                    log.exception("database health check failed")
        finally:
            self._drop()

    async def check(self) -> str | None:
        """None if the database answered; otherwise why it did not (for the log)."""
        if self._conn is not None:
            if await self._select_one(self._conn) is None:
                return None
            self._drop()  # the held connection may be stale (e.g. Postgres restarted): try a fresh one
        try:
            async with asyncio.timeout(self._timeout_s):
                self._conn = await asyncpg.connect(self._dsn)
        except Exception as exc:
            return _describe(exc)
        error = await self._select_one(self._conn)
        if error is not None:
            self._drop()
        return error

    async def _select_one(self, conn: asyncpg.Connection) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.fetchval("SELECT 1")
        except Exception as exc:
            return _describe(exc)
        return None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()  # synchronous: safe inside cancellation
            self._conn = None

    async def _publish(self, error: str | None) -> None:
        up = error is None
        if up == self.up:
            return
        self.up = up
        self._gauge.set(1 if up else 0)
        for name in self._names:
            await self._servicer.set(name, _SERVING if up else _NOT_SERVING)
        if up:
            log.info("database reachable again: health SERVING")
        else:
            log.warning("database unreachable (%s): health NOT_SERVING", error)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    return f"{type(exc).__name__}: {exc}"


class Closeable(Protocol):
    async def close(self) -> None: ...


class WatchedServer(grpc.aio.Server):
    """A grpc.aio.Server whose `stop` first ends its database watch, then enters graceful shutdown
    (everything NOT_SERVING, so probes drain it), then stops the server itself, then closes what
    it was given to close (the key resolver's listener, which holds a connection of the pool)."""

    def __init__(self, server: grpc.aio.Server, servicer: health.aio.HealthServicer,
                 watch: asyncio.Task[None] | None, *closing: Closeable) -> None:
        self._inner = server
        self._servicer = servicer
        self._watch = watch
        self._closing = list(closing)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._inner.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._inner.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self, grace: float | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch])  # returns once it has finished; raises only if we are cancelled
            self._watch = None
        await self._servicer.enter_graceful_shutdown()
        await self._inner.stop(grace)
        closing, self._closing = self._closing, []
        for part in closing:
            await part.close()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - grpc's signature
        return await self._inner.wait_for_termination(timeout)
