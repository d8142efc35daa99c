"""`creditctl bench alerts`: accounts crossing balance thresholds under debit load, each crossing's event
delivered to a real local webhook receiver; latency from the ledger change to the first delivery.

What runs: an embedded PostgreSQL (fsync on) in a temporary directory; the ledger server with its
webhook delivery loop in its own process (`python -m ledger_service.server`, as deployed); in this
process the example receiver (verifying every signature) and a closed loop of DebitCredits calls
(`concurrency` in flight) over `accounts` accounts.

Each account is granted 100.00 and a tenant-wide LOW_BALANCE rule watches 50.00 and 20.00. Round 1
debits 6 x 10.00 per account (crossing 50), a grant of 40.00 recovers it (80.00), round 2 debits
7 x 10.00 (crossing 50 again, then 20). The model: per account 3 `balance.low` and 1 `balance.recovered`.
The same rounds on as many accounts without any rule are the baseline (debits/s without alerts).

Figures: `alert_p99_ms` / `alert_p50_ms` (event time, taken in the ledger change's transaction, to its
first arrival at the receiver), `crossings` (the model's), `events` (distinct events received),
`duplicates` (events received or stored beyond the model's), `missed` (the model's events never
received), `debits_per_s` and `baseline_debits_per_s`. Where the time goes: `claim_p99_ms` (event time to the
start of its first POST in the delivery loop, from webhook_attempts) — the rest of `alert_p99_ms` is the POST
and the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from credits.alerts.v1 import alerts_pb2 as apb
from credits.alerts.v1 import alerts_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from harness.benches.ledger import prepare_ledger
from service_runtime.embedded_postgres import EmbeddedPostgres

ROUND_1, RECOVER, ROUND_2 = 6, "40.00", 7


@dataclass
class AlertBench:
    accounts: int
    crossings: int
    events: int
    duplicates: int
    missed: int
    alert_p50_ms: float
    alert_p99_ms: float
    claim_p50_ms: float
    claim_p99_ms: float
    debits_per_s: float
    baseline_debits_per_s: float
    seconds: float

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def _closed_loop(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> float:
    """Runs every call, `concurrency` at a time (calls of one account stay in order); returns calls/s."""
    queue = list(reversed(calls))
    start = time.monotonic()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(calls) / (time.monotonic() - start)


def _rounds(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], accounts: list[str],
            debits: int, tag: str) -> list[Callable[[], Awaitable[Any]]]:
    """Per account `debits` debits of 10.00, accounts interleaved (account-major order would serialise)."""
    out: list[Callable[[], Awaitable[Any]]] = []
    for i in range(debits):
        for a in accounts:
            request = pb.DebitCreditsRequest(idempotency_key=f"{tag}-{a}-{i}", account_id=a, unit="USD",
                                             charges=[pb.Charge(amount="10.00", kind=pb.USAGE)])
            out.append(_call(stub.DebitCredits, request, md))
    return out


def _call(method: Any, request: Any, md: list[tuple[str, str]]) -> Callable[[], Awaitable[Any]]:
    async def one() -> Any:
        return await method(request, metadata=md)

    return one


def _grants(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], accounts: list[str], amount: str,
            tag: str) -> list[Callable[[], Awaitable[Any]]]:
    return [_call(stub.GrantCredits, pb.GrantCreditsRequest(idempotency_key=f"{tag}-{a}", account_id=a, unit="USD",
                                                           amount=amount, type=pb.PURCHASED), md) for a in accounts]


async def _round_trip(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]], accounts: list[str],
                      concurrency: int, tag: str) -> float:
    """Grant 100, round 1, recover, round 2 on `accounts`; the debit rate of both rounds."""
    await _closed_loop(_grants(stub, md, accounts, "100.00", f"{tag}-g"), concurrency)
    start = time.monotonic()
    await _closed_loop(_rounds(stub, md, accounts, ROUND_1, f"{tag}-r1"), concurrency)
    spent = time.monotonic() - start
    await _closed_loop(_grants(stub, md, accounts, RECOVER, f"{tag}-up"), concurrency)
    start = time.monotonic()
    await _closed_loop(_rounds(stub, md, accounts, ROUND_2, f"{tag}-r2"), concurrency)
    spent += time.monotonic() - start
    return len(accounts) * (ROUND_1 + ROUND_2) / spent


def expected_events(accounts: list[str]) -> set[str]:
    """The model: 100 -> 40 crosses 50; +40 -> 80 recovers 50; -70 -> 10 crosses 50 and 20."""
    out: set[str] = set()
    for a in accounts:
        out |= {f"low/{a}/below:5000/1", f"low/{a}/below:5000/1/recovered", f"low/{a}/below:5000/2",
                f"low/{a}/below:2000/1"}
    return out


async def _ledger_process(dsn: str, work: Path) -> tuple[asyncio.subprocess.Process, str]:
    """The ledger server and its delivery loop, as `python -m ledger_service.server` runs them."""
    import os
    import sys

    from service_runtime.temporal_server import reserve_port

    addr = f"127.0.0.1:{reserve_port()}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
           "CREDITS_LEDGER_DSN": dsn, "CREDITS_INVOICE_DSN": dsn, "CREDITS_LEDGER_ADDR": addr,
           "CREDITS_DATA_DIR": str(work), "CREDITS_WEBHOOK_POLL_S": "0.5", "CREDITS_LOG_LEVEL": "WARNING"}
    log = (work / "ledger.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ledger_service.server", env=env,
                                                stdout=log, stderr=log)
    async with grpc.aio.insecure_channel(addr) as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)
    return proc, addr


async def run(accounts: int = 1000, concurrency: int = 64, workdir: Path | None = None) -> AlertBench:
    from ledger_service.webhooks.example_receiver import PATH, ExampleReceiver

    own = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix="credits-bench-alerts-"))
    pg = EmbeddedPostgres(work / "postgres", fsync=True)
    started = time.monotonic()
    try:
        await asyncio.to_thread(pg.start)
        dsn = await asyncio.to_thread(pg.create_database, "credits_ledger")
        key = await prepare_ledger(dsn)
        proc, addr = await _ledger_process(dsn, work)
        watched = [f"acct-{i:05d}" for i in range(accounts)]
        expected = expected_events(watched)
        arrivals: dict[str, float] = {}
        all_in = asyncio.Event()

        def arrived(event: dict[str, Any]) -> None:
            arrivals.setdefault(event["id"], time.time())
            if expected <= set(arrivals):
                all_in.set()

        receiver = ExampleReceiver([], on_event=arrived)
        receiver_port = await receiver.start()
        channel = grpc.aio.insecure_channel(addr)
        try:
            stub, alerts = ledger_pb2_grpc.LedgerServiceStub(channel), alerts_pb2_grpc.AlertsServiceStub(channel)
            md = [("x-api-key", key)]
            plain = [f"base-{i:05d}" for i in range(accounts)]
            await _closed_loop([_call(stub.CreateAccount, pb.CreateAccountRequest(idempotency_key=f"acct-{a}",
                                                                                   account_id=a), md)
                                for a in watched + plain], concurrency)
            baseline = await _round_trip(stub, md, plain, concurrency, "base")
            await alerts.CreateAlertRule(apb.CreateAlertRuleRequest(idempotency_key="rule", rule=apb.AlertRule(
                rule_id="low", unit="USD", kind=apb.LOW_BALANCE, thresholds=["50.00", "20.00"])), metadata=md)
            hook = await alerts.CreateWebhookEndpoint(apb.CreateWebhookEndpointRequest(
                idempotency_key="hook", endpoint_id="bench", url=f"http://127.0.0.1:{receiver_port}{PATH}",
                allow_private_targets=True), metadata=md)
            receiver.secrets.append(hook.secret)
            rate = await _round_trip(stub, md, watched, concurrency, "alerts")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 60)
            await asyncio.sleep(1.0)  # late duplicates, if any, would arrive now
            stored, posted = await _stored_events(dsn)
        finally:
            await channel.close()
            await receiver.stop()
            proc.terminate()
            await proc.wait()
        latencies = [(arrivals[e] - stored[e].timestamp()) * 1000 for e in expected if e in arrivals and e in stored]
        claims = [(posted[e] - stored[e]).total_seconds() * 1000 for e in expected if e in posted and e in stored]
        duplicates = (len(set(stored) - expected) + len(set(arrivals) - expected)
                      + sum(n - 1 for n in receiver.deliveries.values() if n > 1))
        return AlertBench(
            accounts=accounts, crossings=len(expected), events=len(set(arrivals) & expected), duplicates=duplicates,
            missed=len(expected - set(arrivals)), alert_p50_ms=_pct(latencies, 0.5), alert_p99_ms=_pct(latencies, 0.99),
            claim_p50_ms=_pct(claims, 0.5), claim_p99_ms=_pct(claims, 0.99),
            debits_per_s=round(rate, 1), baseline_debits_per_s=round(baseline, 1),
            seconds=round(time.monotonic() - started, 1))
    finally:
        await asyncio.to_thread(pg.stop, "fast")
        if own:
            shutil.rmtree(work, ignore_errors=True)


async def _stored_events(dsn: str) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """Each event's time, and the start of its first POST (the attempt's end less its duration)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT event_id, occurred_at FROM alert_events")
        posts = await conn.fetch("SELECT event_id, at - make_interval(secs => duration_ms / 1000.0) AS started "
                                 "FROM webhook_attempts WHERE attempt = 1")
        return {r["event_id"]: r["occurred_at"] for r in rows}, {r["event_id"]: r["started"] for r in posts}
    finally:
        await conn.close()


def describe(r: AlertBench) -> str:
    return (f"{r.accounts} accounts, {r.crossings} model events: {r.events} received, {r.duplicates} duplicates, "
            f"{r.missed} missed; change -> first delivery p50 {r.alert_p50_ms} ms, p99 {r.alert_p99_ms} ms "
            f"(target <= 1000; of it change -> POST start p50 {r.claim_p50_ms} ms, p99 {r.claim_p99_ms} ms); "
            f"debits/s with alerts {r.debits_per_s} vs without {r.baseline_debits_per_s}; "
            f"{r.seconds} s")


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(accounts=100)).figures()))
