"""`creditctl bench saga`: finalized invoices/s through the real saga vs a bare workflow baseline.

Every part runs where it would in a deployment: embedded Postgres (fsync on), the ledger and the
invoice services each in their own OS process (uvloop), `temporal server start-dev` (in memory by
default, or on a database file like `creditctl up` with `--temporal-db-file`), and one coordinator
worker in its own process (`python -m coordinator.worker`, uvloop). This process is only the client:
it seeds N customers (each $100 of usage and a $50 credit), then keeps `concurrency` finalization
sagas in flight until all N are done, timing each saga from start to result; then it runs N bare
workflows the same way, on the same server, task queue and worker, each with as many sequential
no-op activities as the saga has activities (regular activities on both sides: like with like).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from coordinator import naming
from coordinator.messages import BenchInput, FinalizeInvoiceInput
from coordinator.workflows import SAGA_ACTIVITIES, BareWorkflow, FinalizeInvoiceWorkflow

ROOT = Path(__file__).resolve().parents[1]
TENANT = "bench"
_UVLOOP_SERVE = "import uvloop; from {mod} import serve; from service_runtime.settings import Settings; " \
                "uvloop.run(serve(Settings.from_env()))"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(start: Callable[[int], Awaitable[Any]], n: int, concurrency: int) -> tuple[float, list[float]]:
    """Runs n workflows with at most `concurrency` in flight; (elapsed s, per-workflow latency ms)."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            handle = await start(i)
            await handle.result()
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, latencies


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def _ready(addr: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(addr) as channel:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see {log}")
            try:
                await asyncio.wait_for(channel.channel_ready(), 1)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{addr} not ready; see {log}") from None


async def run_bench(invoices: int, concurrency: int, *, temporal_db_file: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from credits.invoice.v1 import invoice_pb2_grpc
    from credits.ledger.v1 import ledger_pb2_grpc
    from temporalio.client import Client

    from coordinator import search_attributes as sa
    from coordinator.scenario import Services, seed_catalog, seed_customer
    from service_runtime.api_keys import mint_key, store_tenant_key
    from service_runtime.databases import INVOICE_DB, LEDGER_DB, TENANCY_MIGRATIONS
    from service_runtime.embedded_postgres import EmbeddedPostgres
    from service_runtime.postgres import create_pool, migrate
    from service_runtime.temporal_server import TemporalDevServer, reserve_port

    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="credits-bench-saga-") as tmp_name:
        tmp = Path(tmp_name)
        pg = EmbeddedPostgres(tmp / "postgres", reserve_port()).start()
        temporal = TemporalDevServer(headless=True, search_attributes=sa.DEV_SERVER_FLAGS,
                                     db_file=tmp / "temporal.db" if temporal_db_file else None,
                                     log_path=tmp / "temporal.log")
        try:
            say("starting postgres, temporal, ledger, invoice and worker processes")
            ledger_dsn, invoice_dsn = pg.create_database(LEDGER_DB), pg.create_database(INVOICE_DB)
            from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
            from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS

            await migrate(ledger_dsn, TENANCY_MIGRATIONS, LEDGER_MIGRATIONS)
            await migrate(invoice_dsn, TENANCY_MIGRATIONS, INVOICE_MIGRATIONS)
            key_id, key, key_hash = mint_key()
            for dsn in (ledger_dsn, invoice_dsn):
                pool = await create_pool(dsn, min_size=1, max_size=1)
                try:
                    await store_tenant_key(pool, TENANT, "Bench", key_id, key_hash, "admin")
                finally:
                    await pool.close()
            await asyncio.to_thread(temporal.start)
            ledger_addr, invoice_addr = f"127.0.0.1:{reserve_port()}", f"127.0.0.1:{reserve_port()}"
            env = {"CREDITS_LEDGER_DSN": ledger_dsn, "CREDITS_INVOICE_DSN": invoice_dsn,
                   "CREDITS_LEDGER_ADDR": ledger_addr, "CREDITS_INVOICE_ADDR": invoice_addr,
                   "CREDITS_USAGE_GRACE_S": str(400 * 86400), "CREDITS_TEMPORAL_ADDR": temporal.address,
                   "CREDITS_TASK_QUEUE": "credits-bench", "CREDITS_DATA_DIR": str(tmp)}
            py = sys.executable
            with _process([py, "-m", "ledger_service.server"], env, tmp / "ledger.log") as ledger, \
                    _process([py, "-c", _UVLOOP_SERVE.format(mod="invoice_service.server")], env,
                             tmp / "invoice.log") as invoice, \
                    _process([py, "-m", "coordinator.worker"], env, tmp / "worker.log"):
                await _ready(ledger_addr, ledger, tmp / "ledger.log")
                await _ready(invoice_addr, invoice, tmp / "invoice.log")
                return await _measure(Client, temporal.address, ledger_addr, invoice_addr, key, invoices,
                                      concurrency, Services, seed_catalog, seed_customer, ledger_pb2_grpc,
                                      invoice_pb2_grpc, temporal_db_file, say)
        finally:
            await asyncio.to_thread(temporal.stop)
            await asyncio.to_thread(pg.stop, "immediate")


async def _measure(client_cls: Any, temporal_addr: str, ledger_addr: str, invoice_addr: str, key: str,
                   invoices: int, concurrency: int, services_cls: Any, seed_catalog: Any, seed_customer: Any,
                   ledger_pb2_grpc: Any, invoice_pb2_grpc: Any, temporal_db_file: bool,
                   say: Callable[[str], None]) -> dict[str, Any]:
    client = await client_cls.connect(temporal_addr)
    queue = "credits-bench"
    async with grpc.aio.insecure_channel(ledger_addr) as lch, grpc.aio.insecure_channel(invoice_addr) as ich:
        s = services_cls(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), key)
        await seed_catalog(s)
        sem = asyncio.Semaphore(16)

        async def seed(i: int) -> str:
            async with sem:
                return str(await seed_customer(s, f"bench-{i}"))

        say(f"seeding {invoices} customers")
        invoice_ids = await asyncio.gather(*(seed(i) for i in range(invoices + 10)))
    # Warm-up (not measured): the worker's first workflow tasks, channels and the services' pools.
    warm = invoice_ids[invoices:]

    def start_saga(i: int, ids: list[str] = invoice_ids) -> Any:
        return client.start_workflow(FinalizeInvoiceWorkflow.run, FinalizeInvoiceInput(TENANT, ids[i]),
                                     id=naming.finalize_workflow_id(TENANT, ids[i]), task_queue=queue)

    def start_bare(i: int, tag: str = "run") -> Any:
        return client.start_workflow(BareWorkflow.run, BenchInput(SAGA_ACTIVITIES), id=f"bench-bare/{tag}/{i}",
                                     task_queue=queue)

    say("warming up")
    await _timed(lambda i: start_saga(i, warm), len(warm), concurrency)
    await _timed(lambda i: start_bare(i, "warm"), len(warm), concurrency)
    say(f"{invoices} sagas, {concurrency} in flight")
    saga_s, saga_ms = await _timed(start_saga, invoices, concurrency)
    say(f"{invoices} bare workflows, {concurrency} in flight")
    bare_s, bare_ms = await _timed(start_bare, invoices, concurrency)
    saga_rate, bare_rate = invoices / saga_s, invoices / bare_s
    return {"invoices": invoices, "concurrency": concurrency, "activities_per_workflow": SAGA_ACTIVITIES,
            "temporal_store": "file" if temporal_db_file else "memory",
            "invoices_per_s": round(saga_rate, 1), "p50_ms": round(_pct(saga_ms, 0.5), 1),
            "p99_ms": round(_pct(saga_ms, 0.99), 1), "bare_workflows_per_s": round(bare_rate, 1),
            "bare_p50_ms": round(_pct(bare_ms, 0.5), 1), "bare_p99_ms": round(_pct(bare_ms, 0.99), 1),
            "ratio_vs_bare": round(saga_rate / bare_rate, 3)}


if __name__ == "__main__":  # python -m coordinator.bench [invoices] [concurrency]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    print(json.dumps(asyncio.run(run_bench(n, c, progress=lambda m: print("…", m, file=sys.stderr)))))
