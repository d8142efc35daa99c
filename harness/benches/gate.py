"""`creditctl bench gate`: gateway leases against per-request ReserveCredits, in gate processes.

What runs, all on this machine: an embedded PostgreSQL (fsync on), the ledger gRPC server in its own
process (``python -m harness.benches.ledger serve ledger``), and ``gates`` gate processes
(``python -m harness.benches.gate run ...``), each a `gateway.gate.Gate` with ``concurrency``
closed-loop clients on one account. Each client authorizes cost 1 and settles it at 1.

Phases:
1. exact — the account holds exactly ``exact_credits`` (500). The clients run until the ledger shows
   nothing available or held (demand lasts). ``overspend`` = what the gates authorized beyond 500
   (and the ledger's consumed must equal what they authorized); ``unused_while_demanded`` = what was
   never authorized although every gate still wanted more.
2. leases — a large balance; ``seconds`` of authorize + settle per gate process:
   ``authorizations_per_s`` (mean per gate process) and ``authorize_p99_us`` (the worst process).
3. baseline — the same processes and clients, each request a ReserveCredits + CommitHold round trip
   (what a gateway does without leases): ``baseline_reserve_per_s`` per gate process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from gateway.gate import Gate, GateConfig
from harness.benches.ledger import prepare_ledger, start_server_process
from service_runtime.embedded_postgres import EmbeddedPostgres

TENANT, UNIT = "bench", "token"
TARGETS = {"authorizations_per_s": 50_000, "authorize_p99_us": 1_000, "overspend": 0, "unused_while_demanded": 0}


@dataclass
class GateReport:
    gates: int
    exact_credits: int
    exact_authorized: int
    exact_ledger_consumed: int
    overspend: int
    unused_while_demanded: int
    authorizations_per_s: float
    authorize_p99_us: float
    local_hit_rate: float
    baseline_reserve_per_s: float
    ratio_vs_reserve: float
    seconds: float
    concurrency: int


def meets(key: str, value: float) -> bool | None:
    target = TARGETS.get(key)
    if target is None:
        return None
    return value >= target if key == "authorizations_per_s" else value <= target


# ---- one gate process ---------------------------------------------------------------------------

async def _exact(gate: Gate, stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str,
                 concurrency: int, deadline_s: float) -> dict[str, Any]:
    done = asyncio.Event()
    authorized = [0]

    async def client() -> None:
        while not done.is_set():
            d = await gate.authorize(account, 1)
            if d.allowed and d.ticket is not None:
                await gate.settle(d.ticket, 1)
                authorized[0] += 1
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.002)

    async def watch() -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            await asyncio.sleep(0.05)
            bal = await stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=md)
            bucket = next((b for b in bal.totals if b.unit == UNIT), None)
            if bucket is not None and bucket.available == "0" and bucket.held == "0":
                break
        done.set()

    await asyncio.gather(watch(), *(client() for _ in range(concurrency)))
    return {"authorized": authorized[0]}


async def _leases(gate: Gate, account: str, concurrency: int, seconds: float) -> dict[str, Any]:
    samples: list[int] = []
    counts = [0]
    end = time.monotonic() + seconds

    async def client() -> None:
        clock = time.perf_counter_ns
        n = 0
        while time.monotonic() < end:
            t0 = clock()
            d = await gate.authorize(account, 1)
            samples.append(clock() - t0)
            if d.allowed and d.ticket is not None:
                await gate.settle(d.ticket, 1)
                n += 1
            if n % 32 == 0:
                await asyncio.sleep(0)  # the fast path never suspends: let the others and the reporter run
        counts[0] += n

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    samples.sort()
    p99 = samples[int(len(samples) * 0.99)] / 1000 if samples else 0.0
    return {"authorized": counts[0], "per_s": counts[0] / elapsed, "p99_us": p99}


async def _reserves(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], account: str,
                    concurrency: int, seconds: float) -> dict[str, Any]:
    run, counts = uuid.uuid4().hex[:10], [0]
    end = time.monotonic() + seconds

    async def client(c: int) -> None:
        n = 0
        while time.monotonic() < end:
            key = f"bench-reserve/{run}/{c}/{n}"
            await stub.ReserveCredits(pb.ReserveCreditsRequest(
                idempotency_key=key, hold_key=key, account_id=account, unit=UNIT, release_on_ttl=True,
                charges=[pb.Charge(charge_id="r", kind=pb.USAGE, amount="1")]), metadata=md)
            await stub.CommitHold(pb.CommitHoldRequest(idempotency_key=f"{key}/c", hold_key=key), metadata=md)
            n += 1
        counts[0] += n

    started = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return {"authorized": counts[0], "per_s": counts[0] / (time.monotonic() - started)}


async def _gate_process(args: argparse.Namespace) -> dict[str, Any]:
    md = [("x-api-key", args.key)]
    async with grpc.aio.insecure_channel(args.addr) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        await channel.channel_ready()
        if args.mode == "reserve":
            return await _reserves(stub, md, args.account, args.concurrency, args.seconds)
        gate = Gate(stub, args.key, GateConfig(unit=UNIT, report_interval_s=args.report_interval, lease_ttl_s=30,
                                               max_lease=10**7))
        await gate.start()
        try:
            if args.mode == "exact":
                out = await _exact(gate, stub, md, args.account, args.concurrency, args.seconds)
            elif args.mode == "forever":
                out = await _forever(gate, args.account)
            else:
                out = await _leases(gate, args.account, args.concurrency, args.seconds)
        finally:
            await gate.close()
        out["local_hit_rate"] = gate.stats.local / max(1, gate.stats.authorized)
        out["committed"] = gate.stats.committed
        return out


async def _forever(gate: Gate, account: str) -> dict[str, Any]:
    """Authorizes and settles until killed, printing `A <authorized> C <committed> T <monotonic s>` every
    20 ms (the crash test reads the lines it saw before the kill)."""
    authorized = 0
    last = time.monotonic()
    while True:
        d = await gate.authorize(account, 1)
        if d.allowed and d.ticket is not None:
            await gate.settle(d.ticket, 1)
            authorized += 1
        if time.monotonic() - last > 0.02:
            print(f"A {authorized} C {gate.stats.committed} T {time.monotonic():.4f}", flush=True)
            last = time.monotonic()
            await asyncio.sleep(0.001)


# ---- the coordinator of the run -----------------------------------------------------------------

async def _run_gates(mode: str, gates: int, addr: str, key: str, account: str, concurrency: int,
                     seconds: float) -> list[dict[str, Any]]:
    args = ["--addr", addr, "--key", key, "--account", account, "--mode", mode, "--concurrency", str(concurrency),
            "--seconds", str(seconds)]
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", "harness.benches.gate", "run", *args,
                                                  stdout=asyncio.subprocess.PIPE) for _ in range(gates)]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    for p in procs:
        if p.returncode != 0:
            raise RuntimeError(f"a gate process ({mode}) exited with {p.returncode}")
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outs]


async def _account(channel: grpc.aio.Channel, md: list[tuple[str, str]], account: str, credits: int) -> None:
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    await stub.CreateAccount(pb.CreateAccountRequest(idempotency_key=f"acct-{account}", account_id=account),
                             metadata=md)
    await stub.GrantCredits(pb.GrantCreditsRequest(idempotency_key=f"grant-{account}", account_id=account, unit=UNIT,
                                                   amount=str(credits), type=pb.PURCHASED), metadata=md)


async def _consumed(dsn: str, account: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT coalesce(sum(consumed), 0) FROM lot_balances "
                                    "WHERE tenant_id = $1 AND account_id = $2", TENANT, account)
    finally:
        await conn.close()
    return int(value)


async def _bench(workdir: Path, dsn: str, gates: int, concurrency: int, seconds: float,
                 exact_credits: int) -> GateReport:
    key = await prepare_ledger(dsn)
    md = [("x-api-key", key)]
    ledger = await start_server_process("ledger", workdir, dsn=dsn)
    try:
        assert ledger.grpc_addr
        async with grpc.aio.insecure_channel(ledger.grpc_addr) as channel:
            await _account(channel, md, "exact", exact_credits)
            await _account(channel, md, "large", 10**15)
        exact = await _run_gates("exact", gates, ledger.grpc_addr, key, "exact", concurrency, 60)
        leased = await _run_gates("leases", gates, ledger.grpc_addr, key, "large", concurrency, seconds)
        reserved = await _run_gates("reserve", gates, ledger.grpc_addr, key, "large", concurrency, seconds)
        consumed = await _consumed(dsn, "exact")
    finally:
        await asyncio.to_thread(ledger.stop)
    authorized = sum(o["authorized"] for o in exact)
    per_s = sum(o["per_s"] for o in leased) / gates
    baseline = sum(o["per_s"] for o in reserved) / gates
    return GateReport(
        gates=gates, exact_credits=exact_credits, exact_authorized=authorized, exact_ledger_consumed=consumed,
        overspend=max(0, authorized - exact_credits, consumed - exact_credits),
        unused_while_demanded=max(0, exact_credits - authorized),
        authorizations_per_s=round(per_s, 1), authorize_p99_us=round(max(o["p99_us"] for o in leased), 1),
        local_hit_rate=round(sum(o["local_hit_rate"] for o in leased) / gates, 5),
        baseline_reserve_per_s=round(baseline, 1), ratio_vs_reserve=round(per_s / baseline, 1) if baseline else 0.0,
        seconds=seconds, concurrency=concurrency)


def run_bench(gates: int = 8, concurrency: int = 8, seconds: float = 5.0, exact_credits: int = 500) -> GateReport:
    workdir = Path(tempfile.mkdtemp(prefix="credits-bench-gate-"))
    pg = EmbeddedPostgres(workdir / "postgres", fsync=True)
    try:
        pg.start()
        dsn = pg.create_database("credits_ledger")
        return asyncio.run(_bench(workdir, dsn, gates, concurrency, seconds, exact_credits))
    finally:
        pg.stop("fast")
        shutil.rmtree(workdir, ignore_errors=True)


def as_dict(report: GateReport) -> dict[str, Any]:
    return asdict(report)


def describe(report: GateReport) -> str:
    lines = [f"{report.gates} gate processes x {report.concurrency} clients, {report.seconds:g} s per phase"]
    for name, value in as_dict(report).items():
        verdict = {True: " (meets target)", False: " (MISSES target)", None: ""}[meets(name, float(value))]
        lines.append(f"  {name:<24} {value}{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.benches.gate")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one gate process; prints its result as one JSON line")
    r.add_argument("--addr", required=True)
    r.add_argument("--key", required=True)
    r.add_argument("--account", required=True)
    r.add_argument("--mode", choices=("exact", "leases", "reserve", "forever"), required=True)
    r.add_argument("--concurrency", type=int, default=8)
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument("--report-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_gate_process(args))), flush=True)


if __name__ == "__main__":
    main()
