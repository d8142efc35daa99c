"""`creditctl bench saga`: finalized invoices/s through the real saga vs a bare workflow baseline.

Every part runs where it would in a deployment: embedded Postgres (fsync on), the ledger and the
invoice services each in their own OS process (uvloop), `temporal server start-dev` (in memory by
default, or on a database file like `creditctl up` with `--temporal-db-file`), and one worker in its
own process (`python -m harness.worker`: the coordinator's worker plus the bare workflow, uvloop), all
started by the harness's process launcher (harness.processes). This process is only the client:
it seeds N customers (each $100 of usage and a $50 credit), then keeps `concurrency` finalization
sagas in flight until all N are done, timing each saga from start to result, and runs N bare
workflows the same way, on the same server, task queue and worker, each with as many sequential
no-op activities as the saga has activities (regular activities on both sides: like with like).
The two kinds run in interleaved rounds (`rounds`, the order alternating: saga first, then bare
first, ...), so a drift of the server over the run (Temporal's in-memory store and heap grow) weighs
on both alike; rates are totals over all rounds, and each round's ratio is reported too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.messages import FinalizeInvoiceInput
from coordinator.workflows import SAGA_ACTIVITIES, FinalizeInvoiceWorkflow
from harness.bare import BareWorkflow, BenchInput
from harness.processes import ProcessStack
from service_runtime.temporal_client import connect_temporal
from stack.scenario import PERIOD_START, Services, seed_catalog, seed_customer

TENANT = "bench"
QUEUE = "credits-bench"


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


def _offset(start: Callable[[int], Awaitable[Any]], offset: int, i: int) -> Awaitable[Any]:
    return start(offset + i)


async def run_bench(invoices: int, concurrency: int, *, temporal_db_file: bool = False, rounds: int = 3,
                    progress: Callable[[str], None] | None = None, breakdown: bool = False,
                    profile_dir: Path | None = None) -> dict[str, Any]:
    """Runs the benchmark; `breakdown` adds per-activity timings read from the workflow histories,
    `profile_dir` records py-spy profiles (collapsed stacks) of the service and worker processes
    while the sagas run (saga-*.txt) and while the bare workflows run (bare-*.txt)."""
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="credits-bench-saga-") as tmp_name:
        stack = ProcessStack(Path(tmp_name), QUEUE, temporal_db_file=temporal_db_file)
        try:
            say("starting postgres, temporal, ledger, invoice and worker processes")
            await stack.start_infrastructure([TENANT])
            stack.add_services(uvloop_invoice=True)
            stack.add_worker()  # mints its own operator keys from the two databases
            await stack.start_processes()
            pids = {**stack.pids(), "client": os.getpid()}
            return await _measure(stack, stack.tenants[TENANT].admin, invoices, concurrency, temporal_db_file, say,
                                  rounds, breakdown, _Profiler(profile_dir, pids))
        finally:
            await stack.stop()


async def _measure(stack: ProcessStack, key: str, invoices: int, concurrency: int, temporal_db_file: bool,
                   say: Callable[[str], None], rounds: int = 3, breakdown: bool = False,
                   profiler: _Profiler | None = None) -> dict[str, Any]:
    client = await connect_temporal(stack.temporal_addr, tls=False)
    queue = QUEUE
    async with grpc.aio.insecure_channel(stack.ledger_addr) as lch, \
            grpc.aio.insecure_channel(stack.invoice_addr) as ich:
        s = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), key)
        await seed_catalog(s)
        sem = asyncio.Semaphore(16)

        async def seed(i: int) -> tuple[str, str]:
            async with sem:
                return str(await seed_customer(s, f"bench-{i}")), f"bench-{i}"

        say(f"seeding {invoices} customers")
        seeded = await asyncio.gather(*(seed(i) for i in range(invoices + 10)))
    invoice_ids = [invoice_id for invoice_id, _ in seeded]
    # Warm-up (not measured): the worker's first workflow tasks, channels and the services' pools.
    warm = seeded[invoices:]
    period = PERIOD_START.isoformat()

    def start_saga(i: int, pairs: list[tuple[str, str]] = seeded) -> Any:
        # Started as the front door starts it: business-key id, and the search attributes it knows.
        invoice_id, customer = pairs[i]
        return client.start_workflow(FinalizeInvoiceWorkflow.run,
                                     FinalizeInvoiceInput(TENANT, invoice_id, local_reads=True),
                                     id=naming.finalize_workflow_id(TENANT, invoice_id), task_queue=queue,
                                     search_attributes=sa.at_start(TENANT, invoice_id, customer, period))

    def start_bare(i: int, tag: str = "run") -> Any:
        return client.start_workflow(BareWorkflow.run, BenchInput(SAGA_ACTIVITIES), id=f"bench-bare/{tag}/{i}",
                                     task_queue=queue)

    say("warming up")
    await _timed(lambda i: start_saga(i, warm), len(warm), concurrency)
    await _timed(lambda i: start_bare(i, "warm"), len(warm), concurrency)
    # Interleaved rounds, the order alternating (saga first, then bare first, ...), so that both
    # kinds meet the same server state (Temporal's in-memory store and heap grow as the run goes on).
    rounds = max(1, min(rounds, invoices // concurrency))
    bounds = [invoices * r // rounds for r in range(rounds + 1)]
    saga_s = bare_s = 0.0
    saga_ms: list[float] = []
    bare_ms: list[float] = []
    round_ratios: list[float] = []
    cpu = {"saga": dict.fromkeys(profiler.cpu() if profiler else {}, 0.0),
           "bare": dict.fromkeys(profiler.cpu() if profiler else {}, 0.0)}
    for r in range(rounds):
        lo, n = bounds[r], bounds[r + 1] - bounds[r]
        took: dict[str, float] = {}
        for kind in ("saga", "bare") if r % 2 == 0 else ("bare", "saga"):
            say(f"round {r + 1}/{rounds}: {n} {'sagas' if kind == 'saga' else 'bare workflows'}, "
                f"{concurrency} in flight")
            if profiler is not None:
                profiler.start(f"{kind}-r{r + 1}")
            before = profiler.cpu() if profiler is not None else {}
            starter = start_saga if kind == "saga" else start_bare
            took[kind], ms = await _timed(functools.partial(_offset, starter, lo), n, concurrency)
            (saga_ms if kind == "saga" else bare_ms).extend(ms)
            if profiler is not None:
                after = profiler.cpu()
                profiler.stop()
                for k, v in after.items():
                    cpu[kind][k] = cpu[kind].get(k, 0.0) + v - before.get(k, 0.0)
        saga_s, bare_s = saga_s + took["saga"], bare_s + took["bare"]
        round_ratios.append(round(took["bare"] / took["saga"], 3))
    saga_rate, bare_rate = invoices / saga_s, invoices / bare_s
    extra: dict[str, Any] = {}
    if breakdown and profiler is not None:  # CPU ms per workflow, by process (and its children)
        extra["saga_cpu_ms"] = {k: round(v * 1000 / invoices, 1) for k, v in cpu["saga"].items()}
        extra["bare_cpu_ms"] = {k: round(v * 1000 / invoices, 1) for k, v in cpu["bare"].items()}
    if breakdown:
        say("reading histories")
        sample = range(0, invoices, max(1, invoices // 100))
        extra["saga_breakdown"] = await _breakdown(
            client, [naming.finalize_workflow_id(TENANT, invoice_ids[i]) for i in sample])
        extra["bare_breakdown"] = await _breakdown(client, [f"bench-bare/run/{i}" for i in sample])
    return {**extra, "invoices": invoices, "concurrency": concurrency, "activities_per_workflow": SAGA_ACTIVITIES,
            "temporal_store": "file" if temporal_db_file else "memory",
            "invoices_per_s": round(saga_rate, 1), "p50_ms": round(_pct(saga_ms, 0.5), 1),
            "p99_ms": round(_pct(saga_ms, 0.99), 1), "bare_workflows_per_s": round(bare_rate, 1),
            "bare_p50_ms": round(_pct(bare_ms, 0.5), 1), "bare_p99_ms": round(_pct(bare_ms, 0.99), 1),
            "ratio_vs_bare": round(saga_rate / bare_rate, 3), "rounds": rounds, "round_ratios": round_ratios}


class _Profiler:
    """py-spy (if on PATH) recording the service and worker processes while the sagas run."""

    def __init__(self, out: Path | None, pids: dict[str, int]) -> None:
        self._out, self._pids = out, pids
        self._procs: list[subprocess.Popen[bytes]] = []

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of each process and its descendants."""
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        out: dict[str, float] = {}
        skip = set(self._pids.values()) | {p.pid for p in self._procs}
        for name, root in self._pids.items():
            total, todo = 0.0, [root] if root in stats else []
            while todo:
                pid = todo.pop()
                total += stats[pid][1]
                todo.extend(c for c in children.get(pid, ()) if c not in skip)
            out[name] = total
        return out

    def start(self, tag: str) -> None:
        if self._out is None:
            return
        self._out.mkdir(parents=True, exist_ok=True)
        for name, pid in self._pids.items():
            self._procs.append(subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
                 "--output", str(self._out / f"{tag}-{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def stop(self) -> None:
        for proc in self._procs:
            proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()


async def _breakdown(client: Any, workflow_ids: list[str]) -> dict[str, Any]:
    """Per activity type, from the histories: queue wait (scheduled -> started) and run time
    (started -> completed), median and p90 in ms; plus each workflow's time outside activities."""
    from temporalio.api.enums.v1 import EventType

    waits: dict[str, list[float]] = {}
    runs: dict[str, list[float]] = {}
    outside: list[float] = []
    gaps: dict[int, list[float]] = {}  # i: from activity i's completion (0: the start) to the next event
    for wf_id in workflow_ids:
        events = [e async for e in client.get_workflow_handle(wf_id).fetch_history_events()]
        sched: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        in_activities = 0.0
        last, n = events[0].event_time.ToMicroseconds() / 1000, 0
        for e in events:
            at = e.event_time.ToMicroseconds() / 1000
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                sched[e.event_id] = (e.activity_task_scheduled_event_attributes.activity_type.name, at)
                gaps.setdefault(n, []).append(at - last)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                sid = e.activity_task_started_event_attributes.scheduled_event_id
                started[sid] = at
                name, s_at = sched[sid]
                waits.setdefault(name, []).append(at - s_at)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                sid = e.activity_task_completed_event_attributes.scheduled_event_id
                name, s_at = sched[sid]
                runs.setdefault(name, []).append(at - started.get(sid, s_at))
                in_activities += at - s_at
                last, n = at, n + 1
        total = (events[-1].event_time.ToMicroseconds() - events[0].event_time.ToMicroseconds()) / 1000
        gaps.setdefault(n, []).append(events[-1].event_time.ToMicroseconds() / 1000 - last)
        outside.append(total - in_activities)

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50": round(_pct(values, 0.5), 1), "p90": round(_pct(values, 0.9), 1)}

    return {"activities": {name: {"wait": stats(waits.get(name, [0.0])), "run": stats(runs[name])}
                           for name in runs},
            "outside_activities": stats(outside), "gaps": {i: stats(v) for i, v in sorted(gaps.items())}}


if __name__ == "__main__":  # python -m harness.benches.saga [invoices] [concurrency] [--rounds R] [--breakdown] ...
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.benches.saga")
    parser.add_argument("invoices", type=int, nargs="?", default=300)
    parser.add_argument("concurrency", type=int, nargs="?", default=40)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved saga/bare rounds (default 3)")
    parser.add_argument("--breakdown", action="store_true", help="per-activity timings from the histories")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy profiles of the processes into DIR")
    a = parser.parse_args()
    print(json.dumps(asyncio.run(run_bench(a.invoices, a.concurrency, rounds=a.rounds, breakdown=a.breakdown,
                                           profile_dir=a.profile,
                                           progress=lambda m: print("…", m, file=sys.stderr)))))
