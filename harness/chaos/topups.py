"""`creditctl chaos --topups N --seed S`: auto top-ups under crashes and payment faults, then an audit of
money against credit.

What runs: an embedded PostgreSQL in a temporary directory; a Temporal dev server; the ledger server in its
own process (`python -m ledger_service.server`) with the top-up sagas' starter and worker
(ledger_service/topups/saga.py: every crossing's AutoTopUp workflow runs there), killed with SIGKILL
mid-saga and restarted on a seeded schedule (so each kill is a worker kill and a service kill); in this
process the local payment server (harness/payments/server.py), whose payment methods answer late (past
the client's timeout), lose responses (the charge is made, the answer dropped), answer 503, stay pending
for a few lookups, or decline; and the workload: accounts with a top-up policy
(threshold 10.00, amount 50.00), each driven across its threshold `rounds` times (one crossing per round),
its calls retried with their idempotency keys through the kills.

At the end, once every top-up has settled, the provider's charges are compared with the ledger's lots:
`duplicate_charges` (a crossing charged more than once), `duplicate_credits` (a top-up credited more
than once), `unpaid_credits` (credit granted without a succeeded charge), `paid_without_credit` (a
succeeded charge with no credit), `unsettled` (top-ups still in flight) — all must be 0 — and
`faults_injected` by kind (kills counted only when a live process died).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from credits.alerts.v1 import alerts_pb2 as apb
from credits.alerts.v1 import alerts_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from harness.benches.ledger import prepare_ledger
from harness.payments.server import Behaviour, PaymentServer
from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.temporal_server import TemporalDevServer, reserve_port

METHODS = ("pm_ok", "pm_late", "pm_lost", "pm_flaky", "pm_pending", "pm_declined")
TERMINAL = ("GRANTED", "DECLINED", "CAPPED")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)


@dataclass
class TopUpChaosResult:
    seed: int
    accounts: int
    crossings: int
    topups_granted: int
    topups_declined: int
    charges: int
    duplicate_charges: int
    duplicate_credits: int
    unpaid_credits: int
    paid_without_credit: int
    unsettled: int
    faults_injected: dict[str, int] = field(default_factory=dict)
    faults_total: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [f"chaos topups seed {self.seed}: {self.crossings} crossings on {self.accounts} accounts, "
                 f"{self.topups_granted} granted, {self.topups_declined} declined, {self.charges} charges; "
                 f"{self.faults_total} faults {dict(self.faults_injected)}; {self.seconds} s",
                 f"duplicate_charges {self.duplicate_charges}, duplicate_credits {self.duplicate_credits}, "
                 f"unpaid_credits {self.unpaid_credits}, paid_without_credit {self.paid_without_credit}, "
                 f"unsettled {self.unsettled}"]
        lines += [f"VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


class LedgerProcess:
    """`python -m ledger_service.server` with the top-up sagas' worker on, killable and restartable."""

    def __init__(self, dsn: str, work: Path, payment_url: str, temporal_addr: str) -> None:
        self.addr = f"127.0.0.1:{reserve_port()}"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
                    "CREDITS_LEDGER_DSN": dsn, "CREDITS_INVOICE_DSN": dsn, "CREDITS_LEDGER_ADDR": self.addr,
                    "CREDITS_DATA_DIR": str(work), "CREDITS_PAYMENT_PROVIDER_URL": payment_url,
                    "CREDITS_PAYMENT_TIMEOUT_S": "1", "CREDITS_TOPUP_RETRY_BASE_S": "0.2",
                    "CREDITS_TOPUP_LEASE_S": "3", "CREDITS_TOPUP_RETRY_CAP_S": "2", "CREDITS_LOG_LEVEL": "WARNING",
                    "CREDITS_TEMPORAL_ADDR": temporal_addr}
        self.log = work / "ledger.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ledger_service.server",
                                                             env=self.env, stdout=log, stderr=log)
        async with grpc.aio.insecure_channel(self.addr) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)

    async def kill(self) -> bool:
        """SIGKILL; True when a live process died."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        return True

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
            if self.proc.returncode is None:
                await self.kill()


async def _retrying(call: Callable[[], Any], deadline_s: float = 120) -> Any:
    """A client that retries with the same request (same idempotency key) through restarts."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


class Workload:
    def __init__(self, channel: grpc.aio.Channel, key: str, owner: asyncpg.Pool) -> None:
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        self.alerts = alerts_pb2_grpc.AlertsServiceStub(channel)
        self.md = [("x-api-key", key)]
        self.owner = owner

    async def setup(self, account: str, method: str) -> None:
        await _retrying(lambda: self.ledger.CreateAccount(pb.CreateAccountRequest(
            idempotency_key=f"acct-{account}", account_id=account), metadata=self.md, timeout=10))
        policy = apb.TopUpPolicy(account_id=account, unit="USD", threshold="10.00", amount="50.00",
                                 payment_method=method, enabled=True, failure_limit=100)
        await _retrying(lambda: self.alerts.SetTopUpPolicy(apb.SetTopUpPolicyRequest(
            idempotency_key=f"pol-{account}", policy=policy), metadata=self.md, timeout=10))

    async def available(self, account: str) -> int:
        row = await self.owner.fetchval(
            "SELECT coalesce(sum(available), 0) FROM lot_balances WHERE account_id = $1", account)
        return int(row)

    async def round(self, account: str, n: int) -> None:
        """Raise the balance to 100.00 if needed (re-arms), then debit it to 9.00: one crossing."""
        have = await self.available(account)
        if have < 10000:
            amount = f"{(10000 - have) // 100}.{(10000 - have) % 100:02d}"
            await _retrying(lambda: self.ledger.GrantCredits(pb.GrantCreditsRequest(
                idempotency_key=f"fill-{account}-{n}", account_id=account, unit="USD", amount=amount,
                type=pb.PROMOTIONAL), metadata=self.md, timeout=10))
            have = 10000
        cut = have - 900
        await _retrying(lambda: self.ledger.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key=f"cut-{account}-{n}", account_id=account, unit="USD",
            charges=[pb.Charge(amount=f"{cut // 100}.{cut % 100:02d}", kind=pb.USAGE)]), metadata=self.md,
            timeout=10))

    async def settled(self, account: str, timeout_s: float = 120) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            open_ = await self.owner.fetchval(
                "SELECT count(*) FROM topups WHERE account_id = $1 AND status <> ALL($2::text[])", account,
                list(TERMINAL))
            if not open_:
                return
            await asyncio.sleep(0.2)


async def _faults(ledger: LedgerProcess, rng: random.Random, stop: asyncio.Event, counts: Counter[str],
                  kills: int, mean_gap_s: float) -> None:
    """`kills` SIGKILLs of the ledger process (each restarted at once) at seeded intervals, until `stop`."""
    for _ in range(kills):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5) * mean_gap_s)
        if stop.is_set():
            return
        if await ledger.kill():
            counts["ledger_kill"] += 1
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        await ledger.start()


def _behaviours(accounts: int) -> dict[str, Behaviour]:
    return {"pm_ok": Behaviour(), "pm_late": Behaviour(late_s=1.5),
            "pm_lost": Behaviour(lose_responses=accounts * 4), "pm_flaky": Behaviour(fail_requests=accounts * 2),
            "pm_pending": Behaviour(outcome="pending", pending_lookups=3),
            "pm_declined": Behaviour(outcome="declined")}


async def run(topups: int = 100, seed: int = 7, rounds: int = 2, concurrency: int = 16,
              progress: Callable[[str], None] | None = None) -> TopUpChaosResult:
    say = progress or (lambda _m: None)
    rng = random.Random(seed)
    accounts = max(1, -(-topups // rounds))
    names = [f"acct-{i:05d}" for i in range(accounts)]
    methods = {a: rng.choice(METHODS) for a in names}
    work = Path(tempfile.mkdtemp(prefix="credits-chaos-topups-"))
    pg = EmbeddedPostgres(work / "postgres", fsync=False)
    payments = PaymentServer(behaviours=_behaviours(accounts))
    started = time.monotonic()
    faults: Counter[str] = Counter()
    temporal = TemporalDevServer(headless=True, log_path=work / "temporal.log")
    try:
        await asyncio.to_thread(temporal.start)
        await asyncio.to_thread(pg.start)
        dsn = await asyncio.to_thread(pg.create_database, "credits_ledger")
        key = await prepare_ledger(dsn)
        url = await payments.start()
        ledger = LedgerProcess(dsn, work, url, temporal.address)
        await ledger.start()
        owner = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        channel = grpc.aio.insecure_channel(ledger.addr)
        stop = asyncio.Event()
        try:
            load = Workload(channel, key, owner)
            say(f"{accounts} accounts x {rounds} crossings; methods {dict(Counter(methods.values()))}")
            chaos = asyncio.create_task(_faults(ledger, rng, stop, faults, kills=max(2, topups // 25),
                                                mean_gap_s=8.0))
            gate = asyncio.Semaphore(concurrency)

            async def drive(account: str) -> None:
                async with gate:
                    await load.setup(account, methods[account])
                    for n in range(rounds):
                        await load.round(account, n)
                        await load.settled(account)

            await asyncio.gather(*(drive(a) for a in names))
            stop.set()
            await chaos
            say("workload done; waiting for every top-up to settle")
            for a in names:
                await load.settled(a, timeout_s=60)
            result = await _audit(owner, payments, seed, accounts, faults)
        finally:
            stop.set()
            await channel.close()
            await owner.close()
            await ledger.stop()
            await payments.stop()
    finally:
        await asyncio.to_thread(pg.stop, "fast")
        await asyncio.to_thread(temporal.stop)
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = round(time.monotonic() - started, 1)
    return result


async def _audit(owner: asyncpg.Pool, payments: PaymentServer, seed: int, accounts: int,
                 faults: Counter[str]) -> TopUpChaosResult:
    rows = await owner.fetch("SELECT topup_id, status, charge_id, lot_id FROM topups")
    lots = await owner.fetch("SELECT campaign_id, count(*) AS n FROM lots WHERE source = 'auto_topup' "
                             "GROUP BY campaign_id")
    credited = {r["campaign_id"]: r["n"] for r in lots}
    charges_by_crossing = Counter(c.key for c in payments.charges.values())
    succeeded = {c.key for c in payments.charges.values() if c.status == "succeeded"}
    status = Counter(r["status"] for r in rows)
    all_faults = {**faults, **payments.faults}
    result = TopUpChaosResult(
        seed=seed, accounts=accounts, crossings=len(rows), topups_granted=status["GRANTED"],
        topups_declined=status["DECLINED"], charges=len(payments.charges),
        duplicate_charges=sum(n - 1 for n in charges_by_crossing.values() if n > 1),
        duplicate_credits=sum(n - 1 for n in credited.values() if n > 1),
        unpaid_credits=sum(1 for topup in credited if topup not in succeeded),
        paid_without_credit=sum(1 for topup in succeeded if topup not in credited),
        unsettled=sum(n for s, n in status.items() if s not in TERMINAL),
        faults_injected=dict(sorted(all_faults.items())), faults_total=sum(all_faults.values()),
    )
    for name in ("duplicate_charges", "duplicate_credits", "unpaid_credits", "paid_without_credit", "unsettled"):
        if getattr(result, name):
            result.violations.append(f"{name} = {getattr(result, name)}")
    return result
