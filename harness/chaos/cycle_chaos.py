"""`creditctl chaos --cycle N --seed S`: a month-end billing cycle whose sagas run inline, under crashes and
races with the front door, then an audit of every invoice.

What runs (each its own OS process, `harness.processes.ProcessStack`): an embedded PostgreSQL, the Temporal
dev server on its database file (as `creditctl up` runs it), the ledger and invoice servers, the harness
worker and the billing front door. The workload, from the seed: one tenant with N customers, each on an
account of its own with a $50 promotional lot and $100 of August usage; about half have a draft already, the
others are drafted by the cycle. One `BillingCycle` (as of a day past the period's grace, `concurrency` sagas
in flight, `max_per_run` per run so it continues as new several times) finalizes them inline.

Faults, each fired once the tenant counts a seeded number of FINALIZED invoices (so every one lands while the
cycle runs, whatever the machine's speed): kill -9 + restart of the worker (twice), of the ledger and of the
invoice service, a Postgres immediate restart; and races: a few drafted invoices are finalized through the
front door (`credits.billing.v1 FinalizeInvoice`) at the same time as the cycle — either just before the cycle
reaches them ("ahead") or once the cycle's run holds credits for them ("during"); and lost runs: a drafted
invoice's FinalizeInvoice run, well ahead of the cycle, terminated while it holds credits (its ReserveCredits
reply held back by a worker of this process with a fault plan), so the cycle meets its PENDING hold. One run
per invoice holds credits (`LedgerActivities._one_run_at_a_time`): of two runs of one invoice, exactly one may
finalize it. (A round of kills and a lost run per 40 customers.)

Then: the cycle's result (runs that gave way or were compensated count as its failures), the in-doubt resolver
(`ResolveInDoubt`, older_than_s=0) until nothing is in doubt, a second cycle (another as_of) for anything still
DRAFT, and the audit: every invoice FINALIZED, by exactly one committed saga hold and no pending one, numbers
gapless, each with credits_applied == 50.00 (no invoice finalized at full price because another run held the
credits), the reconciler (ledger, invoices, Temporal) and the ledger's journal verification clean. Same seed,
same workload and schedule (the interleaving with the processes' timing is not replayed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.keys import StaticKeyStore
from coordinator.messages import (
    BillingCycleInput,
    BillingCycleResult,
    FinalizeInvoiceInput,
    FinalizeInvoiceResult,
    SweepInput,
)
from coordinator.worker import WorkerConfig
from coordinator.workflows import BillingCycleWorkflow, FinalizeInvoiceWorkflow, ResolveInDoubtWorkflow
from harness.chaos.campaign import CHANNEL_OPTIONS, retry
from harness.faults import FaultPlan
from harness.processes import ProcessStack
from harness.worker import running_harness_worker
from reconciler.report import Violation
from reconciler.run import reconcile
from reconciler.temporal_checks import running_sagas
from service_runtime.temporal_client import connect_temporal
from stack.scenario import Services, seed_catalog, seed_customer

TENANT = "cycle-chaos"
QUEUE = "credits-cycle-chaos"
LOST_QUEUE = "credits-cycle-chaos-lost"  # the lost runs' worker (in this process, with a fault plan)
AS_OF = "2027-10-10T00:00:00+00:00"  # August 2026 periods are due (period end + the harness's 400-day grace)
AS_OF_AGAIN = "2027-10-11T00:00:00+00:00"  # the second cycle, for whatever the first left DRAFT
CREDIT = "50.00"  # each customer's promotional lot; its usage is $100, so the whole lot applies
KILLS = ("kill_worker", "kill_worker", "kill_ledger", "kill_invoice")
RACE_MODES = ("ahead", "during")
# The ledger's rejection when a run gives way (coordinator/activities.py, LedgerActivities._one_run_at_a_time).
GAVE_WAY = re.compile(r"invoice (\S+) is being finalized by another run")
# The saga's rejection when it reads the invoice another run has prepared or finalized (coordinator/workflows.py).
NOT_DRAFT = re.compile(r"invoice \S+ is (PREPARED|FINALIZED), not DRAFT")
SAGA_HOLDS = """
SELECT h.hold_key, coalesce(r.status, 'PENDING') AS status
FROM holds h LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
WHERE h.tenant_id = $1 AND left(h.hold_key, length($2)) = $2"""


@dataclass
class CycleChaosConfig:
    customers: int = 40
    seed: int = 1
    concurrency: int = 8
    max_per_run: int = 10
    races: int = 4
    lost_runs: int = 1  # finalization runs lost (terminated) while they hold credits, before the cycle comes
    postgres_restart: bool = True
    keep_dir: str = ""
    deadline_s: float = 240  # for the cycles to end and the resolver to find nothing in doubt


@dataclass(frozen=True)
class CycleFault:
    after_finalized: int  # fired once the tenant has this many FINALIZED invoices
    kind: str  # kill_worker | kill_ledger | kill_invoice | postgres_restart | race
    customer: int = -1  # race: the customer (index) whose invoice the front door finalizes too
    mode: str = ""  # race: "ahead" (before the cycle reaches it) or "during" (once the cycle's run holds credits)


@dataclass
class CyclePlan:
    customers: list[str]
    drafted: list[int]  # customers seeded with a draft invoice (the cycle drafts the others)
    faults: list[CycleFault]

    def digest(self) -> str:
        text = repr((self.customers, self.drafted, self.faults))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_plan(config: CycleChaosConfig) -> CyclePlan:
    """The seed's workload and schedule. Races and lost runs are on drafted invoices (the front door needs
    the id) past the cycle's first quarter; kills fire between the 2nd finalized invoice and 70% of them, so
    each lands while the cycle is running (a round of them per 40 customers)."""
    rng = random.Random(config.seed)
    n, window = config.customers, max(1, config.concurrency)
    customers = [f"c-{i:04d}" for i in range(n)]  # the cycle lists due periods by customer id: this order
    eligible = range(max(1, n // 4), max(2, n - 2))
    picked = rng.sample(eligible, min(config.races + config.lost_runs, len(eligible)))
    races, lost = sorted(picked[:config.races]), sorted(picked[config.races:])
    drafted = sorted({*picked, *(i for i in range(n) if rng.random() < 0.5)})
    faults = []
    modes = [RACE_MODES[k % len(RACE_MODES)] for k in range(len(races))]  # both kinds in every plan of 2+
    rng.shuffle(modes)
    for c, mode in zip(races, modes, strict=True):
        # "ahead": the front door starts while the cycle's window is still a few invoices short of c
        lead = window + rng.randint(0, 2) if mode == "ahead" else window
        faults.append(CycleFault(max(0, c - lead), "race", c, mode))
    for c in lost:  # the lost run starts well before the cycle reaches c, and is lost once it holds credits
        faults.append(CycleFault(max(0, c - 3 * window), "lost_run", c, "lost"))
    top = max(3, int(n * 0.7))
    rounds = max(1, n // 40)  # a round of kills per 40 customers
    for kind in (*KILLS, *(("postgres_restart",) if config.postgres_restart else ())) * rounds:
        faults.append(CycleFault(rng.randint(2, top), kind))
    faults.sort(key=lambda f: (f.after_finalized, f.kind, f.customer))
    return CyclePlan(customers, drafted, faults)


@dataclass
class RaceRecord:
    customer: str
    invoice_id: str
    mode: str
    front_door: str = ""  # the front door's run: finalized, already_finalized, gave_way, rejected, failed: ...
    runs_holding: int = 0  # finalization runs that reserved credits for the invoice (2: a real race)
    winner: str = ""  # "cycle" or "front_door": whose run's hold was committed


@dataclass
class CycleChaosResult:
    seed: int
    customers: int
    plan_digest: str
    faults_applied: dict[str, int]
    faults_not_applied: list[str]
    cycle: dict[str, Any]  # the first cycle's result: finalized, failed, runs, pages
    second_cycle: dict[str, Any]  # the cycle (another as_of) for what the first left DRAFT
    gave_way: int  # finalization runs that gave way to an older run of the same invoice
    compensated: int  # saga holds released: runs that compensated (gave way included) or the resolver aborted
    resolver: dict[str, int]
    races: list[RaceRecord]
    finalized: int
    violations: list[Violation]
    duration_s: float
    starts: dict[str, int] = field(default_factory=dict)
    data_dir: str = ""
    refused_at_prepare: int = 0  # runs that went on and found the invoice no longer a draft at prepare

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "customers": self.customers, "plan_digest": self.plan_digest,
                "faults_applied": self.faults_applied, "faults_not_applied": self.faults_not_applied,
                "cycle": self.cycle, "second_cycle": self.second_cycle, "gave_way": self.gave_way,
                "compensated": self.compensated, "refused_at_prepare": self.refused_at_prepare,
                "resolver": self.resolver,
                "races": [vars(r) for r in self.races], "finalized": self.finalized,
                "violations": len(self.violations), "violation_details": [v.line() for v in self.violations],
                "duration_s": round(self.duration_s, 1), "starts": self.starts, "data_dir": self.data_dir}

    def render(self) -> str:
        def kv(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))

        lines = [f"seed            {self.seed} (plan {self.plan_digest})", f"customers       {self.customers}",
                 f"faults applied  {sum(self.faults_applied.values())}: {kv(self.faults_applied)}"]
        lines += [f"  not applied: {m}" for m in self.faults_not_applied]
        lines += [f"cycle           {kv(self.cycle)}", f"second cycle    {kv(self.second_cycle)}",
                  f"gave way        {self.gave_way} runs", f"compensated     {self.compensated} runs",
                  f"refused at prep {self.refused_at_prepare} runs (another run finalized the invoice first)",
                  f"resolver        {kv(self.resolver)}"]
        lines += [f"race            {r.customer} {r.invoice_id} ({r.mode}): front door {r.front_door}, "
                  f"{r.runs_holding} runs held credits, won by {r.winner or 'nobody'}" for r in self.races]
        lines += [f"finalized       {self.finalized} of {self.customers}", f"violations      {len(self.violations)}"]
        lines += [f"  {v.line()}" for v in self.violations]
        lines.append(f"duration        {self.duration_s:.1f}s")
        return "\n".join(lines)


class _Stack(ProcessStack):
    def base_env(self) -> dict[str, str]:
        return {**super().base_env(), "CREDITS_METRICS_ADDR": "", "CREDITS_POOL_MAX_SIZE": "8"}


class CycleChaos:
    def __init__(self, config: CycleChaosConfig, root: Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.plan = make_plan(config)
        self.say = say
        self.stack = _Stack(root, QUEUE, temporal_db_file=True)
        self.client: Client | None = None
        self.invoices: dict[int, str] = {}  # customer index -> invoice id (drafted ones)
        self.applied: Counter[str] = Counter()
        self.not_applied: list[str] = []
        self.races: list[RaceRecord] = []
        self.resolver: Counter[str] = Counter()
        self._race_tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []

    # --- helpers --------------------------------------------------------------------------------

    def _client(self) -> Client:
        assert self.client is not None
        return self.client

    def _channel(self, addr: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
        self._channels.append(channel)
        return channel

    @property
    def _md(self) -> list[tuple[str, str]]:
        return [("x-api-key", self.stack.tenants[TENANT].admin)]

    async def _fetch(self, dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def _finalized(self) -> int:
        rows = await self._fetch(self.stack.invoice_dsn, "SELECT count(*) AS n FROM invoices WHERE tenant_id = $1 "
                                 "AND status = 'FINALIZED'", TENANT)
        return int(rows[0]["n"])

    async def _poll(self, check: Callable[[], Awaitable[bool]], until: asyncio.Future[Any] | None = None) -> bool:
        """Polls `check` (every 20 ms; a database that is restarting answers later) until it holds: True;
        False when `until` is done first."""
        while until is None or not until.done():
            try:
                if await check():
                    return True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
        return False

    # --- seeding --------------------------------------------------------------------------------

    async def seed(self) -> None:
        s = Services(ledger_pb2_grpc.LedgerServiceStub(self._channel(self.stack.ledger_addr)),
                     invoice_pb2_grpc.InvoiceServiceStub(self._channel(self.stack.invoice_addr)),
                     self.stack.tenants[TENANT].admin)
        await seed_catalog(s)
        sem = asyncio.Semaphore(8)
        drafted = set(self.plan.drafted)

        async def one(i: int, customer: str) -> None:
            async with sem:
                invoice_id = await seed_customer(s, customer, customer.upper(), credit=CREDIT, draft=i in drafted)
                if invoice_id:
                    self.invoices[i] = invoice_id

        await asyncio.gather(*(one(i, c) for i, c in enumerate(self.plan.customers)))

    # --- faults ---------------------------------------------------------------------------------

    async def inject(self, cycle: asyncio.Future[Any]) -> None:
        """Each planned fault once the tenant counts its number of FINALIZED invoices; a fault whose
        threshold the cycle never reached is not applied (listed in the report)."""
        for f in self.plan.faults:
            async def reached(f: CycleFault = f) -> bool:
                return await self._finalized() >= f.after_finalized

            if not await self._poll(reached, cycle):
                self.not_applied.append(f"{f.kind} after {f.after_finalized} finalized: the cycle ended first")
                continue
            if f.kind in ("race", "lost_run"):
                self._race_tasks.append(asyncio.create_task(self._race(f, cycle)))
                continue
            self.say(f"{f.kind} after {f.after_finalized} finalized")
            if f.kind == "postgres_restart":
                done = await self.stack.restart_postgres()
            else:
                name = f.kind.removeprefix("kill_")
                done = await self.stack.kill(name)
                await self.stack.restart(name)
            if done:
                self.applied[f.kind] += 1
            else:
                self.not_applied.append(f"{f.kind} after {f.after_finalized} finalized: nothing running to kill")

    async def _race(self, f: CycleFault, cycle: asyncio.Future[Any]) -> None:
        """The front door finalizes a drafted invoice the cycle is about to finalize too ("ahead"), or is
        finalizing ("during": once a run of the cycle holds credits for it); waits for its run's end."""
        invoice_id = self.invoices[f.customer]
        record = RaceRecord(self.plan.customers[f.customer], invoice_id, f.mode)
        self.races.append(record)
        if f.kind == "lost_run":
            await self._lose_a_run(invoice_id, record)
            return
        prefix = naming.invoice_holds_prefix(invoice_id)

        async def held() -> bool:
            return bool(await self._fetch(self.stack.ledger_dsn, SAGA_HOLDS, TENANT, prefix))

        if f.mode == "during" and not await self._poll(held, cycle):
            self.not_applied.append(f"race on {invoice_id}: the cycle ended before it held credits for it")
            record.front_door = "not started"
            return
        self.say(f"{f.kind}: the front door finalizes {invoice_id} ({f.mode})")
        stub = billing_pb2_grpc.BillingServiceStub(self._channel(self.stack.billing_addr))
        try:
            await retry(lambda: stub.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id),
                                                     metadata=self._md, timeout=10), 60)
        except grpc.aio.AioRpcError as err:
            self.not_applied.append(f"{f.kind} on {invoice_id}: the front door refused: {err.code().name}")
            record.front_door = f"refused: {err.code().name} {err.details()}"
            return
        handle: WorkflowHandle[Any, FinalizeInvoiceResult] = self._client().get_workflow_handle(
            naming.finalize_workflow_id(TENANT, invoice_id), result_type=FinalizeInvoiceResult)
        self.applied["race"] += 1
        try:
            result = await asyncio.wait_for(handle.result(), self.config.deadline_s)
            record.front_door = str(result.outcome)
        except TimeoutError:  # settle() waits for it; the audit judges what it did
            record.front_door = f"still running after {self.config.deadline_s:.0f}s"
        except WorkflowFailureError as err:
            text = _failure_text(err)
            record.front_door = ("gave_way" if GAVE_WAY.search(text) else "rejected: not a draft any more"
                                 if NOT_DRAFT.search(text) else "refused at prepare, compensated"
                                 if "PrepareFinalize refused" in text else f"failed: {text[:160]}")

    async def _lose_a_run(self, invoice_id: str, record: RaceRecord) -> None:
        """A FinalizeInvoice run (its workflow id, as the front door starts it) lost in doubt while it holds
        credits: run by a worker of this process on a task queue of its own, whose ReserveCredits reply is
        held (the hold exists, PENDING) until the run is terminated — so the cycle meets its PENDING hold
        (or gives way to it) and the in-doubt resolver aborts it after the cycle."""
        faults = FaultPlan().add("reserve_credits", "after", "block")
        config = WorkerConfig(self.stack.ledger_addr, self.stack.invoice_addr, LOST_QUEUE)
        keys = StaticKeyStore({TENANT: self.stack.tenants[TENANT].operator})
        self.say(f"lost_run: a run of {invoice_id} lost once it holds credits")
        # Its steps' retries while a part is down are expected: not this process's stderr's business.
        logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
        async with running_harness_worker(self._client(), config, keys, faults):
            handle = await self._client().start_workflow(  # regular activities only: nothing local in flight
                FinalizeInvoiceWorkflow.run, FinalizeInvoiceInput(TENANT, invoice_id),
                id=naming.finalize_workflow_id(TENANT, invoice_id), task_queue=LOST_QUEUE,
                search_attributes=sa.at_start(TENANT, invoice_id))
            reached = asyncio.ensure_future(faults.reached.wait())
            ended = asyncio.ensure_future(handle.result())
            try:
                await asyncio.wait([reached, ended], timeout=120, return_when=asyncio.FIRST_COMPLETED)
                if not reached.done():  # it ended first (the cycle got there before it reserved), or hung
                    why = "it ended first" if ended.done() else "no reserve within 120 s"
                    raise TimeoutError(why)
                await handle.terminate("cycle chaos: the run is lost while it holds credits")
            except (RPCError, TimeoutError) as err:
                self.not_applied.append(f"lost_run on {invoice_id}: not lost while holding credits ({err})")
                record.front_door = "not lost"
            else:
                self.applied["lost_run"] += 1
                record.front_door = "lost while holding credits"
            finally:
                faults.release_blocked()  # the reply goes to a terminated run: nothing more happens
                for task in (reached, ended):
                    task.cancel()
                await asyncio.gather(reached, ended, return_exceptions=True)

    # --- the cycle and recovery -----------------------------------------------------------------

    async def _cycle(self, as_of: str) -> BillingCycleResult:
        handle = await self._client().start_workflow(
            BillingCycleWorkflow.run, BillingCycleInput(TENANT, as_of, self.config.concurrency,
                                                        self.config.max_per_run),
            id=naming.cycle_workflow_id(TENANT, as_of), task_queue=QUEUE)
        try:
            return await asyncio.wait_for(handle.result(), self.config.deadline_s)
        except TimeoutError:
            raise TimeoutError(f"the billing cycle as of {as_of} did not end within {self.config.deadline_s:.0f}s "
                               f"(a saga stuck? see {self.stack.root}/worker.log)") from None

    async def settle(self) -> None:
        """Everything up, no saga running, then the in-doubt resolver until nothing is in doubt."""
        await self.stack.revive()
        deadline = time.monotonic() + self.config.deadline_s
        while await running_sagas(self._client()) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls Temporal
            await asyncio.sleep(0.2)
        while time.monotonic() < deadline:
            self.resolver["rounds"] += 1
            result = await self._client().execute_workflow(
                ResolveInDoubtWorkflow.run, SweepInput(older_than_s=0),
                id=f"cycle-chaos-resolve-{self.resolver['rounds']}", task_queue=QUEUE)
            self.resolver["committed"] += len(result.committed)
            self.resolver["aborted"] += len(result.aborted)
            self.resolver["left_unknown"] += len(result.unknown)
            if await self._nothing_in_doubt():
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"still in doubt after {self.config.deadline_s}s")

    async def _nothing_in_doubt(self) -> bool:
        pending = await self._fetch(self.stack.ledger_dsn, "SELECT 1 FROM holds h WHERE tenant_id = $1 AND NOT EXISTS "
                                    "(SELECT 1 FROM hold_resolutions r WHERE r.tenant_id = h.tenant_id AND "
                                    "r.hold_key = h.hold_key) LIMIT 1", TENANT)
        doubt = await self._fetch(self.stack.invoice_dsn, "SELECT 1 FROM invoices WHERE tenant_id = $1 AND status IN "
                                  "('PREPARED', 'VOID_PENDING') LIMIT 1", TENANT)
        return not pending and not doubt and not await running_sagas(self._client())

    # --- the audit ------------------------------------------------------------------------------

    async def audit(self) -> tuple[int, int, list[Violation]]:
        """Every invoice FINALIZED by exactly one committed saga hold (none pending), numbers gapless, the
        whole credit applied; then the reconciler and the journal's verification. Returns (finalized,
        runs compensated, violations)."""
        out: list[Violation] = []

        def bad(message: str, **ids: str) -> None:
            out.append(Violation("cycle_chaos", TENANT, message, ids))

        invoices: list[ipb.Invoice] = []
        stub = invoice_pb2_grpc.InvoiceServiceStub(self._channel(self.stack.invoice_addr))
        token = ""
        while True:
            page = await stub.ListInvoices(ipb.ListInvoicesRequest(page_size=100, page_token=token), metadata=self._md)
            invoices += page.invoices
            token = page.next_page_token
            if not token:
                break
        holds = await self._fetch(self.stack.ledger_dsn, SAGA_HOLDS, TENANT, naming.HOLD_PREFIX)
        by_invoice: dict[str, Counter[str]] = {}
        runs: dict[str, dict[str, str]] = {}  # invoice -> run id -> status of its currency hold
        for h in holds:
            parsed = naming.parse_hold_key(h["hold_key"])
            if parsed is None:
                continue
            invoice_id, run_id = parsed
            by_invoice.setdefault(invoice_id, Counter())[h["status"]] += 1
            runs.setdefault(invoice_id, {})[run_id] = h["status"]
        finalized = 0
        for inv in invoices:
            ids = {"invoice_id": inv.invoice_id, "customer_id": inv.customer_id}
            status = ipb.InvoiceStatus.Name(inv.status)
            if status != "FINALIZED":
                bad(f"invoice ended {status}, not FINALIZED", **ids)
                continue
            finalized += 1
            if inv.credits_applied != CREDIT:
                bad(f"credits_applied {inv.credits_applied} != {CREDIT} (finalized short of the customer's credit)",
                    **ids)
            counts = by_invoice.get(inv.invoice_id, Counter())
            if counts["COMMITTED"] != 1 or counts["PENDING"]:
                bad(f"saga holds {dict(counts)}: want exactly one COMMITTED and none PENDING", **ids)
        if len(invoices) != self.config.customers:
            bad(f"{len(invoices)} invoices for {self.config.customers} customers")
        numbers = sorted(int(inv.number.removeprefix("INV-")) for inv in invoices if inv.number)
        if numbers != list(range(1, len(numbers) + 1)):
            bad(f"invoice numbers not gapless from 1: {numbers}")
        for race in self.races:
            statuses = runs.get(race.invoice_id, {})
            race.runs_holding = len(statuses)
            won = [run for run, st in statuses.items() if st == "COMMITTED"]
            if won:
                fd = await self._front_door_run_id(race.invoice_id)
                race.winner = "front_door" if won[0] == fd else "cycle"
        compensated = sum(c["RELEASED"] + c["TOMBSTONE"] for c in by_invoice.values())
        report = await reconcile(self.stack.ledger_dsn, self.stack.invoice_dsn, self._client(), [TENANT])
        out += report.violations
        out += await self._verify_journal()
        return finalized, compensated, out

    async def _front_door_run_id(self, invoice_id: str) -> str:
        try:
            desc = await self._client().get_workflow_handle(naming.finalize_workflow_id(TENANT, invoice_id)).describe()
        except RPCError:
            return ""
        return desc.run_id

    async def _verify_journal(self) -> list[Violation]:
        from ledger_service.storage.reads import verify_journal
        from service_runtime.postgres import create_pool

        pool = await create_pool(self.stack.ledger_dsn, min_size=1, max_size=2)
        try:
            v = await verify_journal(pool, TENANT)
        finally:
            await pool.close()
        return [Violation("journal", TENANT, m) for m in v.violations]

    async def endings(self) -> tuple[int, int]:
        """From the histories — the cycles' (every run of each continue-as-new chain: local-activity markers)
        and the front door's sagas (failed activities): the finalization runs that gave way to an older run
        of their invoice, and those refused at PrepareFinalize (they went on, the other run's hold being
        committed already, and found the invoice no longer a draft: a null abort compensates them)."""
        seen: set[tuple[str, str]] = set()
        refused = 0
        ids = [naming.cycle_workflow_id(TENANT, AS_OF), naming.cycle_workflow_id(TENANT, AS_OF_AGAIN)]
        ids += [naming.finalize_workflow_id(TENANT, r.invoice_id) for r in self.races]
        for workflow_id in ids:
            run_id = ""
            while True:
                handle = self._client().get_workflow_handle(workflow_id, run_id=run_id or None)
                try:
                    events = [e async for e in handle.fetch_history_events()]
                except RPCError:
                    break
                for e in events:
                    for attr in (e.marker_recorded_event_attributes, e.activity_task_failed_event_attributes):
                        if attr.HasField("failure"):
                            text = str(attr.failure)
                            for m in GAVE_WAY.finditer(text):
                                seen.add((workflow_id, m.group(1)))  # a cycle tries an invoice once
                            refused += "PrepareFinalize refused" in text
                nxt = events[0].workflow_execution_started_event_attributes if events else None
                run_id = nxt.continued_execution_run_id if nxt is not None else ""
                if not run_id:
                    break
        return len(seen), refused

    # --- the whole run --------------------------------------------------------------------------

    async def run(self) -> CycleChaosResult:
        t0 = time.monotonic()
        self.say(f"plan {self.plan.digest()}: {self.config.customers} customers, "
                 + ", ".join(f"{f.kind}@{f.after_finalized}" for f in self.plan.faults))
        self.say(f"starting postgres, temporal (database file), ledger, invoice, worker, front door in "
                 f"{self.stack.root}")
        await self.stack.start_infrastructure([TENANT])
        try:
            self.stack.add_services()
            self.stack.add_worker()
            self.stack.add_front_door()
            await self.stack.start_processes()
            self.client = await connect_temporal(self.stack.temporal_addr, tls=False)
            self.say(f"seeding {self.config.customers} customers ({len(self.plan.drafted)} with a draft)")
            await self.seed()
            self.say(f"billing cycle: {self.config.concurrency} in flight, {self.config.max_per_run} per run")
            cycle = asyncio.ensure_future(self._cycle(AS_OF))
            injector = asyncio.create_task(self.inject(cycle))
            try:
                first = await cycle
            finally:
                await injector
            self.say(f"cycle ended: {first.finalized} finalized, {first.failed} failed, {first.runs} runs")
            await asyncio.gather(*self._race_tasks)
            await self.settle()
            drafts = await self._fetch(self.stack.invoice_dsn, "SELECT 1 FROM invoices WHERE tenant_id = $1 "
                                       "AND status = 'DRAFT'", TENANT)
            self.say(f"second cycle, for the {len(drafts)} invoices left DRAFT")
            second = _cycle_dict(await self._cycle(AS_OF_AGAIN))
            await self.settle()
            self.say("auditing: invoices, holds, reconciler, journal")
            finalized, compensated, violations = await self.audit()
            gave_way, refused = await self.endings()
            return CycleChaosResult(
                self.config.seed, self.config.customers, self.plan.digest(), dict(self.applied),
                self.not_applied, _cycle_dict(first), second, gave_way, compensated, dict(self.resolver),
                self.races, finalized, violations, time.monotonic() - t0,
                {name: p.starts for name, p in self.stack.processes.items()}, str(self.stack.root), refused)
        finally:
            for channel in self._channels:
                await channel.close()
            await self.stack.stop()


def _cycle_dict(result: BillingCycleResult) -> dict[str, Any]:
    return {"finalized": result.finalized, "failed": result.failed, "runs": result.runs, "pages": result.pages}


def _failure_text(err: BaseException) -> str:
    """The messages of an error and its causes, one line."""
    parts = []
    seen: BaseException | None = err
    while seen is not None:
        parts.append(str(seen))
        seen = getattr(seen, "cause", None) or seen.__cause__
    return " <- ".join(parts)


async def run_cycle_chaos(config: CycleChaosConfig,
                          progress: Callable[[str], None] | None = None) -> CycleChaosResult:
    say = progress or (lambda _m: None)
    if config.keep_dir:
        return await CycleChaos(config, Path(config.keep_dir), say).run()
    tmp = Path(tempfile.mkdtemp(prefix="credits-cycle-chaos-"))
    try:
        result = await CycleChaos(config, tmp, say).run()
    except BaseException:
        say(f"cycle chaos failed: logs kept in {tmp}")
        raise
    if result.violations or result.faults_not_applied:
        say(f"logs and data kept in {tmp}")
        return result
    shutil.rmtree(tmp, ignore_errors=True)
    result.data_dir = ""
    return result
