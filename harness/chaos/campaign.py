"""`creditctl chaos --sagas N --seed S`: a seeded, replayable fault campaign on the real stack.

1. Builds a workload from the seed: tenants, pooled ledger accounts shared by several customers,
   lots of every type (promotional scoped to usage and expiring mid-period, compensatory with an
   incident, purchased with a cost basis), August usage and one draft invoice per customer.
2. Runs the sagas in batches (finalizations, voids of earlier finalized invoices, duplicate starts
   through the front door and the Temporal client) while injecting the batch's faults from the
   seed's schedule: kill -9 + restart of ledger / invoice / front door / worker, proxy delay / drop /
   reset / lost response between the worker and each service, Postgres immediate restart, a saga
   terminated (lost) anywhere, and sagas lost inside their in-doubt window on purpose: right after the
   decision was recorded (CreditsOutcome=committed, invoice still PREPARED) and right before it (invoice
   PREPARED, hold PENDING) — every plan has at least one of each.
   Meanwhile real-time Reserve/Commit/Release traffic hits the same accounts, and a bank-style
   reader checks every balance it sees (conservation per lot, nothing negative, consumed and
   reinstated never go down).
3. Stops the faults, restarts anything down, lets the sagas finish, runs the in-doubt resolver
   until quiet (recoveries resolved_commit / resolved_abort), then the reconciler. Same seed -> same
   workload and same fault schedule (the interleaving with the processes' own timing is, of course, not
   replayed).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.messages import (
    FinalizeInvoiceInput,
    FinalizeInvoiceResult,
    SagaTimeouts,
    SweepInput,
    VoidInvoiceInput,
    VoidInvoiceResult,
)
from coordinator.search_attributes import DECIDED_OUTCOMES, OUTCOME
from coordinator.starter import start_or_attach
from coordinator.workflows import FinalizeInvoiceWorkflow, ResolveInDoubtWorkflow, VoidInvoiceWorkflow
from harness.chaos.fault_book import FaultBook, FaultRecord
from harness.chaos.proxy import Effect
from harness.chaos.stack import ChaosStack
from reconciler.report import Violation
from reconciler.run import reconcile
from reconciler.temporal_checks import running_sagas
from service_runtime.temporal_client import connect_temporal
from stack.scenario import PERIOD_START, Services, seed_catalog, seed_customer, ts

TENANTS = ("chaos-a", "chaos-b")
BATCH = 10
TIMEOUTS = SagaTimeouts(step_start_to_close_s=6, prepare_phase_step_limit_s=45, retry_initial_s=0.2, retry_max_s=2)


def local_steps(ref: str) -> bool:
    """Half the finalizations (fixed per invoice) run their prepare writes as local activities, as
    billing cycles do, the other half as regular activities, as the front door does: the faults hit both."""
    return zlib.crc32(ref.encode()) % 2 == 0
FAULT_KINDS = (  # (kind, weight)
    ("kill_ledger", 3), ("kill_invoice", 3), ("kill_worker", 3), ("kill_front_door", 1),
    ("proxy_delay", 2), ("proxy_drop", 2), ("proxy_reset", 2), ("lose_response", 4), ("postgres_restart", 1),
    ("terminate_saga", 2), ("in_doubt_commit", 2), ("in_doubt_abort", 2),
)
# In-doubt faults (Campaign._in_doubt): a saga of their own is slowed down at the participant whose reply
# it waits for (commit: the ledger's CommitHold; abort: the invoice's PrepareFinalize) and terminated
# inside the window; each gets a customer of its own, outside the batches.
DOUBT_DELAY_S, DOUBT_WINDOW_S, DOUBT_SEARCH_S = 0.3, 12.0, 15.0
PROXY_DELAY_WINDOW_S = 3.0  # a proxy_delay slows every chunk for this long
# A proxy_reset waits this long for a connection to cut, a delay or drop for its first chunk (the worker may be
# restarting, or between calls): the fault then acts on the next traffic instead of an idle link.
TRAFFIC_WAIT_S = 15.0
# Proxy faults that act on the next traffic: when their batch's sagas are all done and one still waits (the
# last batch's sagas may be past the proxied steps), the fault's spare customer is finalized to bring it some.
WAITS_FOR_TRAFFIC = ("proxy_delay", "proxy_drop", "lose_response")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class CampaignConfig:
    sagas: int = 30
    seed: int = 1
    keep_dir: str = ""
    quiet_deadline_s: float = 300


@dataclass
class PlannedFault:
    at_s: float  # offset from the batch's start
    kind: str
    target: str = ""
    param: float = 0.0
    spare: str = ""  # "tenant/index": a customer of its own, finalized if the fault still waits for traffic


@dataclass
class CampaignResult:
    seed: int
    sagas: int
    faults_planned: dict[str, int]  # per kind, from the seed's plan
    faults_applied: dict[str, int]  # per kind, counted by effect (fault_book)
    faults_not_applied: list[FaultRecord]  # missed their window, found nothing to act on, or raised
    recoveries: dict[str, int]
    violations: list[Violation]
    duration_s: float
    outcomes: dict[str, int] = field(default_factory=dict)
    bank_reads: int = 0
    traffic: dict[str, int] = field(default_factory=dict)
    duplicate_deliveries: int = 0  # the same start through two doors: load, not a fault
    in_doubt_lost: dict[str, int] = field(default_factory=dict)  # sagas terminated in doubt, by direction
    in_doubt_settled: dict[str, int] = field(default_factory=dict)  # of those, found settled that way at the end
    schedule_digest: str = ""
    data_dir: str = ""
    fault_log: list[FaultRecord] = field(default_factory=list)  # every planned fault and what it did

    @property
    def faults_total(self) -> int:
        return sum(self.faults_applied.values())

    @property
    def all_faults_applied(self) -> bool:
        return not self.faults_not_applied and self.faults_planned == self.faults_applied

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "sagas": self.sagas, "faults_planned": self.faults_planned,
                "faults_applied": self.faults_applied, "faults_total": self.faults_total,
                "faults_planned_total": sum(self.faults_planned.values()),
                "faults_not_applied": [r.as_dict() for r in self.faults_not_applied],
                "duplicate_deliveries": self.duplicate_deliveries, "recoveries": self.recoveries,
                "in_doubt_lost": self.in_doubt_lost, "in_doubt_settled": self.in_doubt_settled,
                "violations": len(self.violations),
                "violation_details": [v.line() for v in self.violations], "duration_s": round(self.duration_s, 1),
                "outcomes": self.outcomes, "bank_reads": self.bank_reads, "traffic": self.traffic,
                "schedule_digest": self.schedule_digest, "data_dir": self.data_dir,
                "fault_log": [r.line() for r in self.fault_log]}

    def render(self) -> str:
        def kv(d: dict[str, int]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))

        lines = [f"seed            {self.seed}", f"sagas run       {self.sagas}",
                 f"faults planned  {sum(self.faults_planned.values())}: {kv(self.faults_planned)}",
                 f"faults applied  {self.faults_total}: {kv(self.faults_applied)}"]
        lines += [f"  not applied: {r.line()}" for r in self.faults_not_applied]
        lines += [f"duplicates      {self.duplicate_deliveries} starts delivered twice",
                  f"lost in doubt   {kv(self.in_doubt_lost)}; settled as decided: {kv(self.in_doubt_settled)}",
                  "recoveries      " + kv(self.recoveries), "saga outcomes   " + kv(self.outcomes),
                  f"bank reads      {self.bank_reads}", "rt traffic      " + kv(self.traffic),
                  f"violations      {len(self.violations)}"]
        lines += [f"  {v.line()}" for v in self.violations]
        lines.append(f"duration        {self.duration_s:.1f}s")
        return "\n".join(lines)


# --- the seed's plan ----------------------------------------------------------------------------


@dataclass
class Plan:
    customers: dict[str, list[tuple[str, str]]]  # tenant -> [(customer id, account id)]
    grants: dict[str, list[dict[str, Any]]]  # tenant -> GrantCreditsRequest kwargs
    batches: list[list[tuple[str, str]]]  # [(op, tenant/customer-index)] op: finalize | void
    duplicates: set[int]  # global saga index started twice (front door + client)
    faults: list[list[PlannedFault]]


def make_plan(sagas: int, seed: int) -> Plan:
    rng = random.Random(seed)
    voids = max(1, sagas // 7) if sagas >= 5 else 0
    finals = sagas - voids
    per_tenant = [finals // len(TENANTS) + (1 if i < finals % len(TENANTS) else 0) for i in range(len(TENANTS))]
    customers: dict[str, list[tuple[str, str]]] = {}
    grants: dict[str, list[dict[str, Any]]] = {}
    mid = PERIOD_START + timedelta(days=rng.randint(10, 20))
    for tenant, n in zip(TENANTS, per_tenant, strict=True):
        accounts = [f"pool-{i}" for i in range(max(2, n // 4))]
        customers[tenant] = [(f"cust-{i}", rng.choice(accounts)) for i in range(n)]
        grants[tenant] = []
        for acct in accounts:
            users = sum(1 for _c, a in customers[tenant] if a == acct) or 1
            grants[tenant] += [
                {"account_id": acct, "type": lpb.PROMOTIONAL, "amount": f"{rng.randint(10, 40) * users}.00",
                 "expires_at": mid, "scope": lpb.Scope(kinds=[lpb.USAGE], names=["input_tokens", "output_tokens"]),
                 "source": "marketing", "reason_code": "launch", "campaign_id": f"launch-{seed}", "priority": 40},
                {"account_id": acct, "type": lpb.COMPENSATORY, "amount": f"{rng.randint(5, 25) * users}.00",
                 "expires_at": datetime(2027, 6, 1, tzinfo=UTC), "source": "support", "reason_code": "outage",
                 "incident_id": f"inc-{seed}"},
                {"account_id": acct, "type": lpb.PURCHASED, "amount": f"{rng.randint(20, 60) * users}.00",
                 "cost_basis": "0.9", "source": "purchase", "reason_code": "prepaid"},
            ]
    ops: list[tuple[str, str]] = [("finalize", f"{t}/{i}") for t, n in zip(TENANTS, per_tenant, strict=True)
                                  for i in range(n)]
    rng.shuffle(ops)
    batches = [ops[i:i + BATCH] for i in range(0, len(ops), BATCH)]
    # Voids go into batches after the first, aimed at invoices finalized in an earlier batch.
    for _v in range(voids):
        b = rng.randint(1, len(batches) - 1) if len(batches) > 1 else 0
        earlier = [k for batch in batches[:b] for op, k in batch if op == "finalize"] or [batches[0][0][1]]
        batches[b].append(("void", rng.choice(earlier)))
    duplicates = {i for i in range(sagas) if rng.random() < 0.2}
    kinds = [k for k, w in FAULT_KINDS for _ in range(w)]
    faults: list[list[PlannedFault]] = []
    for _ in batches:
        batch_faults = []
        for _f in range(rng.randint(3, 4)):
            kind = rng.choice(kinds)
            target = rng.choice(["ledger", "invoice"]) if kind.startswith(("proxy", "lose")) else ""
            param = {"proxy_delay": rng.uniform(0.2, 1.0), "proxy_drop": rng.uniform(1.0, 3.0),
                     "lose_response": rng.randint(1, 3)}.get(kind, rng.uniform(0.3, 2.0))
            batch_faults.append(PlannedFault(round(rng.uniform(0.0, 4.0), 2), kind, target, round(param, 2)))
        faults.append(sorted(batch_faults, key=lambda f: f.at_s))
    # Every campaign leaves work in doubt both ways at least once (first batches), whatever the draw.
    for b, kind in ((0, "in_doubt_commit"), (min(1, len(faults) - 1), "in_doubt_abort")):
        if faults and not any(f.kind == kind for f in faults[b]):
            faults[b].append(PlannedFault(round(rng.uniform(0.5, 2.0), 2), kind))
            faults[b].sort(key=lambda f: f.at_s)
    # Each in-doubt fault finalizes a customer of its own (on a pooled account), outside the batches.
    for f in (f for batch in faults for f in batch if f.kind.startswith("in_doubt_")):
        tenant = rng.choice(TENANTS)
        accounts = sorted({a for _c, a in customers[tenant]})
        f.target = f"{tenant}/{len(customers[tenant])}"
        customers[tenant].append((f"doubt-{len(customers[tenant])}", rng.choice(accounts)))
    # Each terminate_saga fault has a spare customer, finalized and lost if no saga of its batch is running.
    for f in (f for batch in faults for f in batch if f.kind == "terminate_saga"):
        tenant = rng.choice(TENANTS)
        accounts = sorted({a for _c, a in customers[tenant]})
        f.target = f"{tenant}/{len(customers[tenant])}"
        customers[tenant].append((f"spare-{len(customers[tenant])}", rng.choice(accounts)))
    # Each proxy fault that waits for traffic has a spare customer too (no random draw: the schedule above is
    # the same as without them), finalized only if its batch ends with the fault still waiting.
    for k, f in enumerate(f for batch in faults for f in batch if f.kind in WAITS_FOR_TRAFFIC):
        tenant = TENANTS[k % len(TENANTS)]
        accounts = sorted({a for _c, a in customers[tenant]})
        f.spare = f"{tenant}/{len(customers[tenant])}"
        customers[tenant].append((f"traffic-{len(customers[tenant])}", accounts[k % len(accounts)]))
    return Plan(customers, grants, batches, duplicates, faults)


def plan_digest(plan: Plan) -> str:
    import hashlib

    text = repr((plan.customers, plan.batches, sorted(plan.duplicates),
                 [[(f.at_s, f.kind, f.target, f.param, f.spare) for f in b] for b in plan.faults]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- retries against a service that may be down -----------------------------------------------


async def retry(call: Callable[[], Any], deadline_s: float = 120) -> Any:
    """Calls until it succeeds or fails with a rejection; the same request (same key) every time."""
    deadline = time.monotonic() + deadline_s
    delay = 0.1
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


class Campaign:
    def __init__(self, config: CampaignConfig, root: Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.say = say
        self.plan = make_plan(config.sagas, config.seed)
        self.stack = ChaosStack(root)
        self.book = FaultBook([[(f.at_s, f.kind, f.target) for f in batch] for batch in self.plan.faults])
        self._judge_at_end: list[tuple[FaultRecord, Callable[[], tuple[bool, str]]]] = []
        self._waiting: list[tuple[PlannedFault, Effect]] = []  # proxy faults of the running batch
        self.duplicate_deliveries = 0
        self.lost_in_doubt: list[tuple[str, str, str, str]] = []  # (direction, tenant, invoice id, run id)
        self.in_doubt_settled: Counter[str] = Counter()
        self.recoveries: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.traffic: Counter[str] = Counter()
        self.bank_violations: list[Violation] = []
        self.bank_reads = 0
        self.invoices: dict[str, str] = {}  # "tenant/index" -> invoice id
        self.finalized: set[str] = set()
        self._stop = asyncio.Event()
        self._channels: list[grpc.aio.Channel] = []
        self.client: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._current: list[tuple[str, str, WorkflowHandle[Any, Any]]] = []

    def services(self, tenant: str) -> Services:
        lch = grpc.aio.insecure_channel(self.stack.ledger_addr, options=CHANNEL_OPTIONS)
        ich = grpc.aio.insecure_channel(self.stack.invoice_addr, options=CHANNEL_OPTIONS)
        self._channels += [lch, ich]
        return Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich),
                        self.stack.tenants[tenant].admin)

    async def seed(self) -> None:
        sem = asyncio.Semaphore(8)
        for tenant in TENANTS:
            s = self.services(tenant)
            await seed_catalog(s)
            for i, g in enumerate(self.plan.grants[tenant]):
                kw = dict(g)
                expires = kw.pop("expires_at", None)
                req = lpb.GrantCreditsRequest(idempotency_key=f"chaos-grant-{i}", unit="USD",
                                              effective_at=ts(PERIOD_START), **kw)
                if expires is not None:
                    req.expires_at.CopyFrom(ts(expires))
                if i % 3 == 0:  # three grants per account, the account first
                    await s.ledger.CreateAccount(lpb.CreateAccountRequest(
                        idempotency_key=f"seed-acct-{kw['account_id']}", account_id=kw["account_id"],
                        name=kw["account_id"]), metadata=s.md)
                await s.ledger.GrantCredits(req, metadata=s.md)

            async def one(i: int, customer: str, account: str, s: Services = s, tenant: str = tenant) -> None:
                async with sem:
                    self.invoices[f"{tenant}/{i}"] = await seed_customer(s, customer, account, account, credit="")

            await asyncio.gather(*(one(i, c, a) for i, (c, a) in enumerate(self.plan.customers[tenant])))

    # --- sagas ----------------------------------------------------------------------------------

    async def _front_door(self, tenant: str, op: str, invoice_id: str) -> None:
        channel = grpc.aio.insecure_channel(self.stack.billing_addr, options=CHANNEL_OPTIONS)
        try:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            md = [("x-api-key", self.stack.tenants[tenant].admin)]
            if op == "finalize":
                await retry(lambda: stub.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id),
                                                         metadata=md, timeout=10), 30)
            else:
                await retry(lambda: stub.VoidInvoice(bpb.VoidInvoiceRequest(invoice_id=invoice_id,
                                                                            reason="chaos: customer disputed"),
                                                     metadata=md, timeout=10), 30)
        except grpc.aio.AioRpcError as err:
            self.recoveries[f"front_door_gave_up_{err.code().name}"] += 1
        finally:
            await channel.close()

    async def _start(self, op: str, ref: str, duplicate: bool) -> WorkflowHandle[Any, Any]:
        assert self.client is not None
        tenant = ref.partition("/")[0]
        invoice_id = self.invoices[ref]
        if duplicate:  # the same request delivered twice, through two doors, at the same time
            self.duplicate_deliveries += 1
            self._tasks.append(asyncio.create_task(self._front_door(tenant, op, invoice_id)))
        if op == "finalize":
            return await start_or_attach(self.client, FinalizeInvoiceWorkflow.run,
                                         FinalizeInvoiceInput(tenant, invoice_id, TIMEOUTS, local_reads=True,
                                                              local_steps=local_steps(ref)),
                                         id=naming.finalize_workflow_id(tenant, invoice_id),
                                         task_queue=self.stack.task_queue, result_type=FinalizeInvoiceResult,
                                         search_attributes=sa.at_start(tenant, invoice_id))
        return await start_or_attach(self.client, VoidInvoiceWorkflow.run,
                                     VoidInvoiceInput(tenant, invoice_id, "chaos: customer disputed", TIMEOUTS),
                                     id=naming.void_workflow_id(tenant, invoice_id), task_queue=self.stack.task_queue,
                                     result_type=VoidInvoiceResult, search_attributes=sa.at_start(tenant, invoice_id))

    async def _await(self, op: str, ref: str, handle: WorkflowHandle[Any, Any], timeout_s: float) -> None:
        try:
            result = await asyncio.wait_for(handle.result(), timeout_s)
            self.outcomes[f"{op}:{result.outcome}"] += 1
            if op == "finalize":
                self.finalized.add(ref)
        except TimeoutError:
            self.outcomes[f"{op}:still_running"] += 1
        except Exception as err:  # compensated / rejected: both leave a consistent state
            cause = getattr(err, "cause", None)
            self.outcomes[f"{op}:{type(cause).__name__ if cause else type(err).__name__}"] += 1

    async def run_batch(self, index: int, batch: list[tuple[str, str]], first_saga: int) -> None:
        revived = await self.stack.revive()  # a restart that failed in the previous batch
        if revived:
            self.recoveries["revived_between_batches"] += revived
        injector = asyncio.create_task(self.inject(index, self.plan.faults[index]))
        handles = self._current = []
        for k, (op, ref) in enumerate(batch):
            handles.append((op, ref, await self._start(op, ref, first_saga + k in self.plan.duplicates)))
        await injector
        await asyncio.gather(*(self._await(op, ref, h, 150) for op, ref, h in handles))
        await self._feed_waiting_proxy_faults()

    async def _feed_waiting_proxy_faults(self) -> None:
        """The batch is done: a delay, drop or lost response of it that saw no traffic yet gets its spare's
        finalization through the proxy (instead of being judged missed on an idle link after the last batch)."""
        waiting, self._waiting = self._waiting, []
        for f, effect in waiting:
            still = effect.responses_lost < effect.wanted if f.kind == "lose_response" else effect.chunks == 0
            if still and f.spare:
                self.outcomes["finalize:traffic_spare"] += 1
                await self._await("finalize", f.spare, await self._start("finalize", f.spare, duplicate=False), 150)

    # --- faults ---------------------------------------------------------------------------------

    async def inject(self, index: int, faults: list[PlannedFault]) -> None:
        t0 = time.monotonic()
        for f, record in zip(faults, self.book.batches[index], strict=True):
            await asyncio.sleep(max(0.0, t0 + f.at_s - time.monotonic()))
            try:
                await self._inject(f, record)
            except Exception as err:  # it raised: not applied, and not a recovery either
                self.book.error(record, repr(err)[:300])
                self.say(f"fault {f.kind} failed: {err!r}")

    async def _inject(self, f: PlannedFault, record: FaultRecord) -> None:
        if f.kind.startswith("kill_"):
            await self._kill(f.kind.removeprefix("kill_"), f.param, record)
        elif f.kind == "postgres_restart":
            await self._restart_postgres(record)
        elif f.kind.startswith(("proxy_", "lose_response")):
            await self._proxy_fault(f, record)
        elif f.kind == "terminate_saga":
            await self._terminate_saga(f.param, f.target, record)
        elif f.kind in ("in_doubt_commit", "in_doubt_abort"):
            await self._in_doubt(f.kind.removeprefix("in_doubt_"), f.target, record)
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")

    async def _kill(self, name: str, down_s: float, record: FaultRecord) -> None:
        """kill -9, down for `down_s`, started again. Applied when a running process was killed."""
        st = self.stack
        if not st.processes[name].running:  # an earlier restart failed: start it, so there is something to kill
            await st.restart(name)
            self.recoveries[f"started_to_kill_{name}"] += 1
        pid = st.processes[name].pid
        if not await st.kill(name):
            self.book.missed(record, f"{name} was not running")
            return
        self.book.applied(record, f"{name} pid {pid} killed")
        await asyncio.sleep(down_s)
        try:
            await st.restart(name)
        except Exception as err:  # the kill happened; revive() starts it before the next batch
            record.detail += f"; restart failed: {err!r}"[:200]
        else:
            self.recoveries[f"restart_{name}"] += 1

    async def _restart_postgres(self, record: FaultRecord) -> None:
        pg = self.stack.pg
        old = pg.pid() if pg is not None and pg.is_running() else None
        if pg is None or old is None:
            self.book.missed(record, "postgres was not running")
        elif await self.stack.restart_postgres():
            self.book.applied(record, f"postmaster {old} -> {pg.pid()}")
            self.recoveries["postgres_restart"] += 1
        else:
            self.book.missed(record, "no new postmaster after the immediate stop")

    async def _proxy_fault(self, f: PlannedFault, record: FaultRecord) -> None:
        """Proxy faults are judged by what the proxy did (its `Effect`), once the faults stop."""
        proxy = self.stack.proxies[f.target]
        effect: Effect
        if f.kind == "proxy_delay":
            effect = proxy.delay(f.param, PROXY_DELAY_WINDOW_S, arm_s=TRAFFIC_WAIT_S)
            self._waiting.append((f, effect))
            self._judge_at_end.append((record, lambda: (effect.chunks > 0, f"{effect.chunks} chunks delayed "
                                                        f"{f.param}s")))
        elif f.kind == "proxy_drop":
            effect = proxy.drop(f.param, arm_s=TRAFFIC_WAIT_S)
            self._waiting.append((f, effect))
            self._judge_at_end.append((record, lambda: (effect.chunks > 0, f"{effect.chunks} chunks swallowed, "
                                                        f"{effect.connections_cut} connections cut")))
        elif f.kind == "proxy_reset":
            deadline = time.monotonic() + TRAFFIC_WAIT_S
            while not proxy.open_connections and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the proxy
                await asyncio.sleep(0.05)
            cut = proxy.reset()
            (self.book.applied if cut else self.book.missed)(record, f"{cut} connections cut")
        else:
            effect = proxy.lose_response(int(f.param))
            self._waiting.append((f, effect))
            self._judge_at_end.append((record, lambda: (effect.responses_lost == effect.wanted,
                                                        f"{effect.responses_lost} of {effect.wanted} responses lost")))

    def _judge_proxy_faults(self) -> None:
        for record, judge in self._judge_at_end:
            ok, detail = judge()
            (self.book.applied if ok else self.book.missed)(record, detail)

    async def _terminate_saga(self, param: float, spare: str, record: FaultRecord) -> None:
        """The coordinator loses a saga (an operator terminates a stuck run): whatever it left in doubt — a
        PENDING hold, a PREPARED / VOID_PENDING invoice — is the resolver's to settle. The first saga of the
        batch still running from a seeded position; if the batch is done already, the fault's spare customer
        is finalized and its saga terminated `param / 4` s into its run. Missed when nothing was running."""
        current = list(self._current)
        start = int(param * 1000) % len(current) if current else 0
        for k in range(len(current)):
            _op, _ref, handle = current[(start + k) % len(current)]
            if await self._terminate_if_running(handle):
                self.book.applied(record, f"terminated {handle.id}")
                return
        handle = await self._start("finalize", spare, duplicate=False)
        await asyncio.sleep(param / 4)
        if await self._terminate_if_running(handle):
            self.book.applied(record, f"no saga of the batch running; terminated the spare's {handle.id}")
            self.outcomes["finalize:terminated_spare"] += 1
            return
        self.book.missed(record, "no saga of the batch was running and the spare's finished first")

    @staticmethod
    async def _terminate_if_running(handle: WorkflowHandle[Any, Any]) -> bool:
        desc = await handle.describe()
        if desc.status is None or desc.status.name != "RUNNING":
            return False
        try:
            await handle.terminate(reason="chaos: saga lost")
        except RPCError:  # it finished between the two calls
            return False
        return True

    async def _in_doubt(self, direction: str, ref: str, record: FaultRecord) -> None:
        """Loses a finalization inside its in-doubt window, for the resolver to settle after the faults.

        The fault runs a saga of its own (a customer the plan set aside, `ref`), so the window is hit on
        purpose rather than by luck: the proxy in front of the participant whose reply the saga waits for
        is slowed down, the run is polled, and terminated once inside the window:
        commit: decision recorded (CreditsOutcome=committed), invoice still PREPARED (hold PENDING, or
        committed with the reply still on its way) -> the resolver must commit both sides;
        abort: invoice PREPARED by this run (so its hold is PENDING), no decision (outcome preparing) ->
        the resolver must release the hold and return the invoice to DRAFT.
        Judged by the outcome the run shows once terminated: a decision landing between the probe and the
        termination makes it a commit case, and a planned abort then missed its window (the resolver must
        still settle it, as a commit)."""
        assert self.client is not None
        tenant, invoice_id = ref.partition("/")[0], self.invoices[ref]
        want = sa.COMMITTED if direction == "commit" else sa.PREPARING
        self.stack.proxies["ledger" if direction == "commit" else "invoice"].delay(DOUBT_DELAY_S, DOUBT_WINDOW_S)
        handle = await start_or_attach(self.client, FinalizeInvoiceWorkflow.run,
                                       FinalizeInvoiceInput(tenant, invoice_id, TIMEOUTS, local_reads=True,
                                                            local_steps=local_steps(ref)),
                                       id=naming.finalize_workflow_id(tenant, invoice_id),
                                       task_queue=self.stack.task_queue, result_type=FinalizeInvoiceResult,
                                         search_attributes=sa.at_start(tenant, invoice_id))
        deadline = time.monotonic() + DOUBT_SEARCH_S
        while time.monotonic() < deadline:
            try:
                desc = await handle.describe()
            except Exception:
                desc = None
            if desc is not None and (desc.status is None or desc.status.name != "RUNNING"):
                break  # finished (or compensated) before the window was hit
            if desc is not None and desc.typed_search_attributes.get(OUTCOME) == want \
                    and await self._invoice_status(invoice_id) == "PREPARED":
                await handle.terminate(reason=f"chaos: saga lost in doubt ({direction})")
                after_desc = await handle.describe()
                after = after_desc.typed_search_attributes.get(OUTCOME)
                actual = "commit" if after in DECIDED_OUTCOMES else "abort"
                self.lost_in_doubt.append((actual, tenant, invoice_id, after_desc.run_id))
                self.outcomes[f"finalize:lost_in_doubt_{actual}"] += 1
                detail = f"terminated {handle.id} at outcome={after}, invoice PREPARED"
                (self.book.applied if actual == direction else self.book.missed)(
                    record, detail if actual == direction else f"landed as in_doubt_{actual}: {detail}")
                self.say(f"in doubt ({direction}): {detail}")
                return
            await asyncio.sleep(0.03)
        self.book.missed(record, f"window not hit in {DOUBT_SEARCH_S}s (the saga ran on)")
        self._tasks.append(asyncio.create_task(self._await("finalize", ref, handle, 150)))

    async def _invoice_status(self, invoice_id: str) -> str:
        """Read from the database (the in-doubt probe must not go through a proxy it slows down)."""
        import asyncpg

        try:
            conn = await asyncpg.connect(self.stack.invoice_dsn, timeout=2)
        except Exception:  # Postgres restarting: the next poll tries again
            return ""
        try:
            return str(await conn.fetchval("SELECT status FROM invoices WHERE invoice_id = $1", invoice_id) or "")
        except Exception:
            return ""
        finally:
            await conn.close()

    # --- real-time traffic and the bank check ---------------------------------------------------

    async def realtime_traffic(self) -> None:
        """Reserve then Commit (or Release) small usage charges on the pooled accounts, like a gateway."""
        rng = random.Random(self.config.seed * 7919 + 1)
        stubs = {t: self.services(t) for t in TENANTS}
        i = 0
        while not self._stop.is_set():
            i += 1
            tenant = rng.choice(TENANTS)
            account = rng.choice(sorted({a for _c, a in self.plan.customers[tenant]}))
            await self._rt_one(stubs[tenant], tenant, account, i, rng)
            await asyncio.sleep(rng.uniform(0.02, 0.15))

    async def _rt_one(self, s: Services, tenant: str, account: str, i: int, rng: random.Random) -> None:
        hold_key = f"rt/{tenant}/{i}"
        now = datetime.now(UTC)
        charge = lpb.Charge(charge_id="req", kind=lpb.USAGE, name="input_tokens",
                            amount=f"{rng.randint(1, 90) / 100:.2f}", service_start=ts(now - timedelta(seconds=1)),
                            service_end=ts(now))
        commit = rng.random() < 0.7
        reserve = lpb.ReserveCreditsRequest(idempotency_key=f"{hold_key}/reserve", hold_key=hold_key,
                                            account_id=account, unit="USD", charges=[charge], up_to=True,
                                            reference=f"usage-{i}")
        release = lpb.ReleaseHoldRequest(idempotency_key=f"{hold_key}/release", hold_key=hold_key,
                                         account_id=account, reason="request cancelled")
        try:
            await retry(lambda: s.ledger.ReserveCredits(reserve, metadata=s.md, timeout=5))
            self.traffic["reserve"] += 1
        except grpc.aio.AioRpcError as err:
            self.traffic[f"reserve_{err.code().name}"] += 1
            if err.code() in RETRYABLE:  # gave up: a tombstone makes sure a late reserve cannot hang
                await retry(lambda: s.ledger.ReleaseHold(release, metadata=s.md, timeout=5), 600)
            return
        if commit:
            req = lpb.CommitHoldRequest(idempotency_key=f"{hold_key}/commit", hold_key=hold_key)
            await retry(lambda: s.ledger.CommitHold(req, metadata=s.md, timeout=5), 600)
            self.traffic["commit"] += 1
        else:
            await retry(lambda: s.ledger.ReleaseHold(release, metadata=s.md, timeout=5), 600)
            self.traffic["release"] += 1

    async def bank_reader(self) -> None:
        """Jepsen-style reads: every lot balance seen must conserve credits and never go backwards."""
        stubs = {t: self.services(t) for t in TENANTS}
        seen: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal]] = {}  # lot -> (granted, consumed, reinst.)
        while not self._stop.is_set():
            for tenant in TENANTS:
                s = stubs[tenant]
                for account in sorted({a for _c, a in self.plan.customers[tenant]}):
                    try:
                        resp = await s.ledger.ListLots(lpb.ListLotsRequest(account_id=account, include_empty=True,
                                                                           page_size=100), metadata=s.md, timeout=5)
                        bal = await s.ledger.GetBalance(lpb.GetBalanceRequest(account_id=account), metadata=s.md,
                                                        timeout=5)
                    except grpc.aio.AioRpcError:
                        continue
                    self.bank_reads += 1
                    for lot in resp.lots:
                        self._check_lot(tenant, account, lot, seen)
                    for b in bal.totals:
                        self._check_bucket(tenant, account, b)
            await asyncio.sleep(0.1)

    def _bank(self, tenant: str, message: str, **ids: str) -> None:
        if len(self.bank_violations) < 50:
            self.bank_violations.append(Violation("bank", tenant, message, ids))

    def _check_lot(self, tenant: str, account: str, lot: lpb.Lot,
                   seen: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal]]) -> None:
        b = lot.balance
        v = {k: Decimal(getattr(b, k) or "0") for k in ("granted", "reinstated", "available", "held", "consumed",
                                                         "expired", "voided", "transferred_out", "pending_expiry")}
        for k, amount in v.items():
            if amount < 0:
                self._bank(tenant, f"read a negative {k} ({amount})", lot_id=lot.lot_id, account_id=account)
        inflow = v["granted"] + v["reinstated"]
        outflow = sum(v[k] for k in ("available", "held", "consumed", "expired", "voided", "transferred_out",
                                     "pending_expiry"))
        if inflow != outflow:
            self._bank(tenant, f"read broke conservation: granted+reinstated={inflow} != {outflow}",
                       lot_id=lot.lot_id, account_id=account)
        key = (tenant, lot.lot_id)
        prev = seen.get(key)
        now = (v["granted"], v["consumed"], v["reinstated"])
        if prev is not None:
            if now[0] != prev[0]:
                self._bank(tenant, f"granted changed {prev[0]} -> {now[0]}", lot_id=lot.lot_id)
            if now[1] < prev[1]:
                self._bank(tenant, f"consumed went down {prev[1]} -> {now[1]}", lot_id=lot.lot_id)
            if now[2] < prev[2]:
                self._bank(tenant, f"reinstated went down {prev[2]} -> {now[2]}", lot_id=lot.lot_id)
        seen[key] = now

    def _check_bucket(self, tenant: str, account: str, b: lpb.BalanceBucket) -> None:
        v = {k: Decimal(getattr(b, k) or "0") for k in ("granted", "reinstated", "available", "held", "consumed",
                                                         "expired", "voided", "transferred_out", "upcoming",
                                                         "pending_expiry")}
        # Account totals: `available` counts only lots usable now; `upcoming` is granted-not-yet-effective.
        inflow = v["granted"] + v["reinstated"]
        outflow = sum(v[k] for k in ("available", "held", "consumed", "expired", "voided", "transferred_out",
                                     "upcoming", "pending_expiry"))
        if inflow != outflow:
            self._bank(tenant, f"account totals broke conservation: granted+reinstated={inflow} != {outflow} "
                       f"({b})".replace("\n", " "), account_id=account)

    # --- recovery -------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Faults off, everything up, sagas finished, then the resolver until nothing is in doubt."""
        assert self.client is not None
        await self.stack.ensure_up()
        deadline = time.monotonic() + self.config.quiet_deadline_s
        while await running_sagas(self.client) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls Temporal
            await asyncio.sleep(0.5)
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            try:
                result = await self.client.execute_workflow(
                    ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0), id=f"chaos-resolve-{rounds}",
                    task_queue=self.stack.task_queue)
            except Exception as err:
                self.say(f"resolver round {rounds} failed: {err}")
                self.recoveries["resolver_failed_rounds"] += 1
            else:
                self.recoveries["resolved_commit"] += len(result.committed)
                self.recoveries["resolved_abort"] += len(result.aborted)
                self.recoveries["resolver_left_unknown"] += len(result.unknown)
            if await self._quiet():
                break
            await asyncio.sleep(1)
        self.recoveries["resolver_rounds"] += rounds

    async def _quiet(self) -> bool:
        import asyncpg

        assert self.client is not None
        if await running_sagas(self.client):
            return False
        lconn = await asyncpg.connect(self.stack.ledger_dsn)
        iconn = await asyncpg.connect(self.stack.invoice_dsn)
        try:
            pending = await lconn.fetchval(
                "SELECT count(*) FROM holds h WHERE NOT EXISTS (SELECT 1 FROM hold_resolutions r "
                "WHERE r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key)")
            doubt = await iconn.fetchval("SELECT count(*) FROM invoices WHERE status IN ('PREPARED', 'VOID_PENDING')")
        finally:
            await lconn.close()
            await iconn.close()
        return not pending and not doubt

    async def run(self) -> CampaignResult:
        t0 = time.monotonic()
        self.say(f"plan {plan_digest(self.plan)}: {self.config.sagas} sagas in {len(self.plan.batches)} batches, "
                 f"{sum(len(b) for b in self.plan.faults)} scheduled faults")
        self.say(f"starting the stack in {self.stack.root}")
        await self.stack.start(list(TENANTS))
        try:
            self.client = await connect_temporal(self.stack.temporal_addr, tls=False)
            self.say("seeding the workload")
            await self.seed()
            background = {"real-time traffic": asyncio.create_task(self.realtime_traffic()),
                          "bank reader": asyncio.create_task(self.bank_reader())}
            n = 0
            for index, batch in enumerate(self.plan.batches):
                self.say(f"batch {index + 1}/{len(self.plan.batches)}: {len(batch)} sagas, faults "
                         + ", ".join(f"{f.kind}{'@' + f.target if f.target else ''}" for f in self.plan.faults[index]))
                await self.run_batch(index, batch, n)
                n += len(batch)
            self.say("faults off; waiting for quiet")
            self._judge_proxy_faults()
            for proxy in self.stack.proxies.values():
                proxy.clear()
            self.book.close_pending("never injected")
            self._stop.set()
            await self.stack.ensure_up()  # a part whose restart failed would hold the checkers' retries
            violations = await self._join(background)
            await self.settle()
            violations += await self._check_lost_in_doubt()
            self.say("reconciling")
            report = await reconcile(self.stack.ledger_dsn, self.stack.invoice_dsn, self.client, list(TENANTS))
            return self._result(n, violations + self.bank_violations + report.violations, time.monotonic() - t0)
        finally:
            self._stop.set()
            for ch in self._channels:
                await ch.close()
            await self.stack.stop()


    async def _join(self, background: dict[str, asyncio.Task[None]]) -> list[Violation]:
        """Waits for the background checkers and the side tasks (duplicate deliveries through the front door,
        sagas whose in-doubt window was missed): a checker that died, or one that never did its work, is a
        violation — a campaign whose bank reader stopped proves nothing about balances."""
        out = []
        named = [*background.items(), *((f"side task {i}", t) for i, t in enumerate(self._tasks))]
        results = await asyncio.gather(*(t for _n, t in named), return_exceptions=True)
        for (name, _task), res in zip(named, results, strict=True):
            if isinstance(res, BaseException):
                out.append(Violation("harness", "", f"{name} died: {res!r}"[:500]))
        if self.bank_reads == 0:
            out.append(Violation("harness", "", "the bank reader never read a balance"))
        if self.traffic.get("reserve", 0) == 0:
            out.append(Violation("harness", "", f"no real-time reserve succeeded ({dict(self.traffic)})"))
        return out

    async def _check_lost_in_doubt(self) -> list[Violation]:
        """Every saga terminated in doubt ends settled in the direction of its decision, as the databases show
        it: commit -> invoice FINALIZED and every hold of the lost run COMMITTED; abort -> invoice DRAFT again
        and every hold of the run RELEASED (or tombstoned). Counted in `in_doubt_settled`."""
        import asyncpg

        out = []
        lconn = await asyncpg.connect(self.stack.ledger_dsn)
        iconn = await asyncpg.connect(self.stack.invoice_dsn)
        try:
            for direction, tenant, invoice_id, run_id in self.lost_in_doubt:
                status = await iconn.fetchval("SELECT status FROM invoices WHERE tenant_id = $1 AND invoice_id = $2",
                                              tenant, invoice_id)
                prefix = naming.hold_key(invoice_id, run_id)
                holds = await lconn.fetch(
                    "SELECT h.hold_key, coalesce(r.status, 'PENDING') AS status FROM holds h LEFT JOIN "
                    "hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key "
                    "WHERE h.tenant_id = $1 AND left(h.hold_key, length($2)) = $2", tenant, prefix)
                want, ok_holds = (("FINALIZED", {"COMMITTED"}) if direction == "commit"
                                  else ("DRAFT", {"RELEASED", "TOMBSTONE"}))
                wrong = {h["hold_key"]: h["status"] for h in holds if h["status"] not in ok_holds}
                if status != want or wrong:
                    out.append(Violation("in_doubt", tenant, f"lost in doubt ({direction}) but ended with invoice "
                                         f"{status}, holds {wrong or 'as decided'}", {"invoice_id": invoice_id}))
                else:
                    self.in_doubt_settled[direction] += 1
        finally:
            await lconn.close()
            await iconn.close()
        return out

    def _result(self, sagas: int, violations: list[Violation], duration_s: float) -> CampaignResult:
        for name, proc in self.stack.processes.items():
            self.recoveries[f"{name}_starts"] = proc.starts
        return CampaignResult(
            self.config.seed, sagas, self.book.planned(), self.book.applied_by_kind(), self.book.not_applied(),
            dict(self.recoveries), violations, duration_s, dict(self.outcomes), self.bank_reads, dict(self.traffic),
            self.duplicate_deliveries, dict(Counter(d for d, *_ in self.lost_in_doubt)),
            dict(self.in_doubt_settled), plan_digest(self.plan), str(self.stack.root), list(self.book.records))


async def run_campaign(config: CampaignConfig, progress: Callable[[str], None] | None = None) -> CampaignResult:
    say = progress or (lambda _m: None)
    if config.keep_dir:
        root = Path(config.keep_dir)
        return await Campaign(config, root, say).run()
    tmp = Path(tempfile.mkdtemp(prefix="credits-chaos-"))
    try:
        result = await Campaign(config, tmp, say).run()
        if result.violations:  # keep the evidence
            say(f"violations: logs and data kept in {tmp}")
            return result
    except BaseException:
        say(f"campaign failed: logs kept in {tmp}")
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    result.data_dir = ""
    return result
