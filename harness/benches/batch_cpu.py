"""Where a batched debit's CPU goes: the ledger server process vs its Postgres backends (issue #17).

    python -m harness.benches.batch_cpu [SECONDS] [ROUNDS]

Starts an embedded Postgres (fsync on) and the ledger server process as `creditctl bench ledger`
does, then runs only its batch phase (BatchDebitCredits, 1,000 debits per call, 4 in flight, one
account) for SECONDS per round, and prints per round the debits/s and the CPU (user + system, psutil)
per debit of the server process, of each Postgres process that used any, and of this load generator.
Run it under the bench lock: `flock /tmp/bench.lock python -m harness.benches.batch_cpu 4 2`.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
from credits.ledger.v1 import ledger_pb2 as pb

from harness.benches import ledger as bench

SIZE, IN_FLIGHT = 1000, 4


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _postgres(pgdata: Path) -> list[psutil.Process]:
    """The postmaster of `pgdata` and its children (backends, WAL writer, checkpointer, autovacuum)."""
    for p in psutil.process_iter(["cmdline", "name"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "postgres" and str(pgdata) in " ".join(cmd):
            return [p, *p.children(recursive=True)]
    return []


@dataclass
class HotAccount:
    """The ledger server process with the bench's hot account, a channel to it, and the processes whose
    CPU the tools count."""

    channel: grpc.aio.Channel
    md: tuple[tuple[str, str], ...]
    encoder: bench.DebitEncoder
    server: psutil.Process
    me: psutil.Process


@asynccontextmanager
async def hot_account(dsn: str, workdir: Path) -> AsyncIterator[HotAccount]:
    """Starts the ledger server process on `dsn` as `creditctl bench ledger` does and sets up its hot account."""
    key = await bench.prepare_ledger(dsn)
    md = (("x-api-key", key),)
    server = await bench.start_server_process("ledger", workdir, dsn=dsn)
    try:
        async with grpc.aio.insecure_channel(server.grpc_addr, options=bench._CHANNEL_OPTIONS) as ch:
            await bench._setup_account(ch, md)
            yield HotAccount(ch, md, bench.DebitEncoder(bench.ACCOUNT, bench.UNIT, "1"), psutil.Process(server.pid),
                             psutil.Process())
    finally:
        await asyncio.to_thread(server.stop)


def run_on_embedded_postgres(prefix: str, run: Callable[[str, Path, Path], Coroutine[Any, Any, None]],
                             loop_runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run) -> None:
    """An embedded Postgres (fsync on) in a temporary directory, `run(dsn, workdir, pgdata)` on it, then
    everything removed."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    pg = bench.EmbeddedPostgres(workdir / "postgres", fsync=True)
    try:
        pg.start()
        loop_runner(run(pg.create_database("credits_ledger"), workdir, pg.pgdata))
    finally:
        pg.stop("fast")
        shutil.rmtree(workdir, ignore_errors=True)


async def _wal(dsn: str) -> tuple[int, int, int]:
    """The cluster's WAL written so far (pg_stat_wal): records, full-page images, bytes."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    finally:
        await conn.close()
    return int(row["wal_records"]), int(row["wal_fpi"]), int(row["wal_bytes"])


async def _run(dsn: str, workdir: Path, pgdata: Path, seconds: float, rounds: int) -> None:
    async with hot_account(dsn, workdir) as hot:
        call = hot.channel.unary_unary(bench.BATCH_METHOD,
                                       response_deserializer=pb.BatchDebitCreditsResponse.FromString)
        srv, me = hot.server, hot.me

        async def batch(w: int, seq: int) -> int:
            keys = [f"b-{w}-{seq}-{i}-{time.monotonic_ns()}" for i in range(SIZE)]
            resp = await call(hot.encoder.batch(keys), metadata=hot.md)
            return sum(1 for r in resp.results if r.HasField("hold"))

        await bench.closed_loop("warm-up", batch, concurrency=IN_FLIGHT, seconds=1, warmup_s=0.5)
        for r in range(rounds):
            wal0 = await _wal(dsn)
            pg = _postgres(pgdata)
            before = {p.pid: _cpu(p) for p in pg}
            s0, m0 = _cpu(srv), _cpu(me)
            phase = await bench.closed_loop("batch", batch, concurrency=IN_FLIGHT, seconds=seconds, warmup_s=0)
            n = max(phase.total_units, 1)
            print(f"round {r}: {phase.rate:,.0f} debits/s, {phase.errors} errors; CPU per debit: "
                  f"server {(_cpu(srv) - s0) / n * 1e6:.1f} µs, load generator {(_cpu(me) - m0) / n * 1e6:.1f} µs")
            wal1 = await _wal(dsn)
            print(f"    WAL per debit: {(wal1[2] - wal0[2]) / n:,.0f} bytes, {(wal1[0] - wal0[0]) / n:.1f} records, "
                  f"{(wal1[1] - wal0[1]) / n:.2f} full-page images")
            for p in pg:
                used = _cpu(p) - before.get(p.pid, 0.0)
                if used > 0.01:
                    print(f"    postgres {' '.join(p.cmdline())[:50]:50} {used / n * 1e6:6.1f} µs")


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 4.0
    rounds = int(argv[1]) if len(argv) > 1 else 2
    run_on_embedded_postgres("batch-cpu-", lambda dsn, workdir, pgdata: _run(dsn, workdir, pgdata, seconds, rounds))


if __name__ == "__main__":
    main(sys.argv[1:])
