"""`creditctl bench watch` and `creditctl bench statement`: the customer-transparency reads, measured.

Both start an embedded PostgreSQL (fsync on) in a temporary directory and the ledger server in its
own process (`python -m harness.benches.ledger serve ledger`, as `bench ledger` does), so the server's
peak RSS can be sampled on its own.

watch: `watchers` WatchBalance streams on one account while `debit_concurrency` closed-loop
DebitCredits calls run for `seconds`. The streams are many clients: one in this process (it learns
the head sequence), the rest spread over WATCHER_PROCESSES client processes (`python -m
harness.benches.transparency ADDR KEY ACCOUNT N`), a connection per hundred, so neither the debit
load nor one event loop of a thousand streams sets the figure. `--profile FILE` writes a cProfile
of the ledger server process. For every change a stream receives: its latency (receipt time
minus the change's `recorded_at`, the server's batch time, taken before COMMIT — so this bounds
commit → client from above), and whether its sequence is the previous one + 1 (else a gap, or a
duplicate when not greater). Baseline in the same run: the same load with one watcher.
A stream that was behind gets its pending changes in one message (`following`): each is counted and
timed on its own. Keys: watchers, watch_p99_ms, watch_p50_ms, baseline_watch_p99_ms, changes,
messages (the stream messages that carried them), gaps, duplicates, debits_per_s.

statement: an account with `entries` journal entries (one grant, then BatchDebitCredits), the time
of GetStatement (first page with every total, median of 5) vs the baseline of paging the raw journal
(ListEntries, 1,000 a page) and summing it on the client; then an account with `export_entries`
entries exported whole through ExportStatement (CSV) by a fresh ledger server process on the same
database (the filling process is stopped first, so the figure is the export's, not the fill's), with
that process's peak RSS during the export and its RSS just before.
Keys: entries, statement_ms, baseline_list_entries_ms, export_entries, export_s, export_bytes,
export_rss_mb, rss_before_export_mb, rss_after_fill_mb (the filling process, for comparison).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from harness.benches.ledger import RssSampler, prepare_ledger, start_server_process
from service_runtime.embedded_postgres import EmbeddedPostgres

UNIT = "token"
TARGETS = {"watch_p99_ms": 250.0, "gaps": 0, "duplicates": 0, "statement_ms": 1000.0, "export_rss_mb": 200.0}
Say = Callable[[str], None]
_ADDR: list[str] = []  # the ledger under watch (set by bench_watch)


def meets(key: str, value: float) -> bool | None:
    target = TARGETS.get(key)
    return None if target is None else value <= target


@dataclass
class _Stream:
    latencies_ms: list[float] = field(default_factory=list)
    last: int = 0
    gaps: int = 0
    duplicates: int = 0
    changes: int = 0
    messages: int = 0  # stream messages carrying them (fewer when the server coalesced a backlog)


async def _running_ledger(workdir: Path, profile: str = "") -> tuple[EmbeddedPostgres, Any, str, str]:
    pg = EmbeddedPostgres(workdir / "postgres", fsync=True)
    await asyncio.to_thread(pg.start)
    dsn = await asyncio.to_thread(pg.create_database, "credits_ledger")
    key = await prepare_ledger(dsn)
    server = await start_server_process("ledger", workdir, dsn=dsn, profile=profile)
    return pg, server, key, dsn


async def _account(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str,
                   amount: int) -> None:
    await stub.CreateAccount(pb.CreateAccountRequest(idempotency_key=f"a-{account}", account_id=account),
                             metadata=md)
    await stub.GrantCredits(pb.GrantCreditsRequest(idempotency_key=f"g-{account}", account_id=account,
                                                   type=pb.PURCHASED, unit=UNIT, amount=str(amount)), metadata=md)


async def _watch(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str,
                 out: _Stream, ready: asyncio.Event | None) -> None:
    call = stub.WatchBalance(pb.WatchBalanceRequest(account_id=account), metadata=md)
    try:
        async for message in call:
            now = time.time()
            if message.type == pb.CHANGE_SNAPSHOT:
                out.last = message.sequence
                if ready is not None:
                    ready.set()
                continue
            out.messages += 1
            for change in (message, *message.following):  # a stream that was behind gets its changes at once
                out.changes += 1
                if change.sequence <= out.last:
                    out.duplicates += 1
                elif change.sequence != out.last + 1:
                    out.gaps += 1
                out.last = max(out.last, change.sequence)
                at = change.recorded_at  # seconds + nanos: cheaper than ToDatetime() for each of ~100,000
                out.latencies_ms.append((now - at.seconds - at.nanos * 1e-9) * 1000
                                        if change.HasField("recorded_at") else 0.0)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            raise


async def _load(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str,
                concurrency: int, seconds: float, tag: str) -> int:
    done = 0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop:
            await stub.DebitCredits(pb.DebitCreditsRequest(
                idempotency_key=f"{tag}-{w}-{i}", account_id=account, unit=UNIT,
                charges=[pb.Charge(kind=pb.USAGE, amount="1")]), metadata=md)
            i += 1
            done += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done


WATCHERS_PER_CONNECTION = 100  # watchers are many clients: a connection per hundred, the debits on their own
WATCHER_PROCESSES = 4           # ... and several client processes, so no one event loop carries them all


async def _open_watchers(addr: str, md: list[tuple[str, str]], account: str,
                         watchers: int) -> tuple[list[_Stream], list[asyncio.Task[None]], list[grpc.aio.Channel]]:
    channels = [grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(0, watchers, WATCHERS_PER_CONNECTION)]
    stubs = [ledger_pb2_grpc.LedgerServiceStub(c) for c in channels]
    streams = [_Stream() for _ in range(watchers)]
    readies = [asyncio.Event() for _ in range(watchers)]
    tasks = [asyncio.create_task(_watch(stubs[i // WATCHERS_PER_CONNECTION], md, account, s, r))
             for i, (s, r) in enumerate(zip(streams, readies, strict=True))]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    return streams, tasks, channels


async def _close_watchers(streams: list[_Stream], tasks: list[asyncio.Task[None]],
                          channels: list[grpc.aio.Channel], head: int) -> None:
    for _ in range(600):  # let every stream drain what was committed (30 s at most)
        if min(s.last for s in streams) >= head:
            break
        await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()


async def watcher_process(addr: str, key: str, account: str, watchers: int) -> None:
    """`python -m harness.benches.transparency ADDR KEY ACCOUNT N`: N streams; prints READY once every
    snapshot arrived, then reads the head sequence from stdin, drains to it and prints the streams as JSON."""
    streams, tasks, channels = await _open_watchers(addr, [("x-api-key", key)], account, watchers)
    print("READY", flush=True)
    head = int(await asyncio.to_thread(sys.stdin.readline))
    await _close_watchers(streams, tasks, channels, head)
    print(json.dumps([[s.latencies_ms, s.last, s.gaps, s.duplicates, s.changes, s.messages] for s in streams]),
          flush=True)


async def _watch_round(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str,
                       watchers: int, concurrency: int, seconds: float, tag: str) -> tuple[list[_Stream], int]:
    """One stream in this process (it learns the head sequence), the rest in WATCHER_PROCESSES clients."""
    mine, tasks, channels = await _open_watchers(_ADDR[0], md, account, 1)
    others = watchers - 1
    sizes = [others // WATCHER_PROCESSES + (1 if i < others % WATCHER_PROCESSES else 0)
             for i in range(WATCHER_PROCESSES)]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness.benches.transparency", _ADDR[0], md[0][1], account, str(n),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE) for n in sizes if n]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 180)
            if line.strip() != b"READY":
                raise RuntimeError(f"a watcher process did not start: {line!r}")
        debits = await _load(stub, md, account, concurrency, seconds, tag)
        await asyncio.sleep(0.5)
        head = mine[0].last
        await _close_watchers(mine, tasks, channels, head)
        streams = list(mine)
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(f"{head}\n".encode()), 60)
            for latencies, last, gaps, duplicates, changes, messages in json.loads(out):
                streams.append(_Stream(latencies, last, gaps, duplicates, changes, messages))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return streams, debits


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_watch(watchers: int, seconds: float, concurrency: int, say: Say,
                      profile: str = "") -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    pg, server, key, _ = await _running_ledger(workdir, profile)
    md = [("x-api-key", key)]
    channel = grpc.aio.insecure_channel(server.grpc_addr)
    _ADDR[:] = [server.grpc_addr]
    try:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        await _account(stub, md, "watched", 10**12)
        await _account(stub, md, "baseline", 10**12)
        say(f"baseline: 1 watcher, {concurrency} debits in flight for {seconds:g} s")
        base, base_debits = await _watch_round(stub, md, "baseline", 1, concurrency, seconds, "b")
        say(f"{watchers} watchers, {concurrency} debits in flight for {seconds:g} s")
        streams, debits = await _watch_round(stub, md, "watched", watchers, concurrency, seconds, "w")
        latencies = [x for s in streams for x in s.latencies_ms]
        return {"watchers": watchers, "watch_p99_ms": round(_p(latencies, 0.99), 1),
                "watch_p50_ms": round(_p(latencies, 0.50), 1),
                "baseline_watch_p99_ms": round(_p(base[0].latencies_ms, 0.99), 1),
                "changes": sum(s.changes for s in streams), "messages": sum(s.messages for s in streams),
                "gaps": sum(s.gaps for s in streams),
                "duplicates": sum(s.duplicates for s in streams), "debits_per_s": round(debits / seconds, 1),
                "baseline_debits_per_s": round(base_debits / seconds, 1)}
    finally:
        await channel.close()
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(pg.stop, "fast")
        shutil.rmtree(workdir, ignore_errors=True)


async def _fill(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str, entries: int,
                say: Say) -> None:
    """One grant and entries - 1 debits (10,000 per BatchDebitCredits call, 4 in flight)."""
    await _account(stub, md, account, 10**15)
    left = entries - 1
    batches = [min(10_000, left - i) for i in range(0, left, 10_000)]
    sem = asyncio.Semaphore(4)

    async def one(b: int, n: int) -> None:
        async with sem:
            await stub.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=[pb.DebitCreditsRequest(
                idempotency_key=f"{account}-{b}-{i}", account_id=account, unit=UNIT,
                charges=[pb.Charge(kind=pb.USAGE, amount="1")]) for i in range(n)]), metadata=md, timeout=600)

    started = time.monotonic()
    await asyncio.gather(*(one(b, n) for b, n in enumerate(batches)))
    say(f"  {account}: {entries:,} entries in {time.monotonic() - started:.1f} s")


async def bench_statement(entries: int, export_entries: int, say: Say) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-statement-"))
    pg, server, key, dsn = await _running_ledger(workdir)
    md = [("x-api-key", key)]
    try:
        async with _channel(server.grpc_addr) as stub:
            say(f"filling an account with {entries:,} entries")
            await _fill(stub, md, "statement", entries, say)
            figures = await _statement(stub, md, entries)
            if export_entries:
                say(f"filling an account with {export_entries:,} entries to export")
                await _fill(stub, md, "export", export_entries, say)
                figures["rss_after_fill_mb"] = round(_rss_mb(server.pid), 1)
        if export_entries:  # the export alone: a fresh server process on the same database, as after a restart
            await asyncio.to_thread(server.stop)
            say("restarting the ledger server on the same database; exporting")
            server = await start_server_process("ledger", workdir, dsn=dsn)
            async with _channel(server.grpc_addr) as stub:
                figures |= await _export(stub, md, server.pid, export_entries)
        return figures
    finally:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(pg.stop, "fast")
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def _channel(addr: str) -> AsyncIterator[ledger_pb2_grpc.LedgerServiceStub]:
    async with grpc.aio.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        yield ledger_pb2_grpc.LedgerServiceStub(channel)


def _rss_mb(pid: int) -> float:
    with RssSampler(pid) as now:
        pass
    return now.peak_mb


async def _statement(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]],
                     entries: int) -> dict[str, float]:
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        st = await stub.GetStatement(pb.GetStatementRequest(account_id="statement", page_size=100), metadata=md)
        timings.append((time.perf_counter() - started) * 1000)
    assert st.entries == entries, (st.entries, entries)
    started = time.perf_counter()
    token, total = "", 0
    while True:
        page = await stub.ListEntries(pb.ListEntriesRequest(account_id="statement", page_size=1000,
                                                            page_token=token), metadata=md)
        total += sum(int(e.amount) for e in page.entries)
        token = page.next_page_token
        if not token:
            break
    baseline_ms = (time.perf_counter() - started) * 1000
    return {"entries": entries, "statement_ms": round(statistics.median(timings), 1),
            "baseline_list_entries_ms": round(baseline_ms, 1)}


async def _export(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], pid: int,
                  expected: int) -> dict[str, float]:
    await stub.GetBalance(pb.GetBalanceRequest(account_id="export"), metadata=md)  # the process warmed up
    with RssSampler(pid) as idle:
        await asyncio.sleep(0.5)
    with RssSampler(pid) as rss:
        started = time.perf_counter()
        size, done = 0, 0
        async for chunk in stub.ExportStatement(pb.ExportStatementRequest(
                account_id="export", format=pb.EXPORT_CSV, kind=pb.EXPORT_STATEMENT), metadata=md):
            size += len(chunk.data)
            done = chunk.entries_done
        elapsed = time.perf_counter() - started
    assert done == expected, (done, expected)
    return {"export_entries": done, "export_s": round(elapsed, 1), "export_bytes": size,
            "export_rss_mb": round(rss.peak_mb, 1), "rss_before_export_mb": round(idle.peak_mb, 1)}


if __name__ == "__main__":
    asyncio.run(watcher_process(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
