"""`creditctl bench finance`: the books over a large ledger, measured against a naive full scan.

What runs, all on this machine: an embedded PostgreSQL (fsync on) in a temporary directory and the
ledger server (with the FinanceService) in this process.

1. load: customers with a PURCHASED lot (cost basis 0.75) and a small PROMOTIONAL lot, then
   BatchDebitCredits until the journal holds `entries` ledger entries (every one a real debit,
   through gRPC, durable);
2. projection: the books catch up with the whole journal in one go, as the ledger server's background
   projector does (the owner's session, so lines and entries go by COPY) -> `projection_entries_per_s`;
   before that, same run, the first `baseline_entries` entries are projected by the earlier per-entry
   path (`overlapped=False`: a `Line` object per line, every row written after the batch is derived,
   in a service session as before), by the current one as the background projector runs it, and by
   the current one in a service session (row security refuses COPY there: JSON statements, what a
   finance read's own catch-up uses), each in a transaction rolled back afterwards ->
   `baseline_projection_entries_per_s`, `prefix_projection_entries_per_s` and
   `prefix_service_projection_entries_per_s` (the same entries), and the CPU each used per entry,
   [this process, the Postgres server] in µs (`*_cpu_us`: what a busy machine disturbs least);
3. report: the monthly revenue report through gRPC (GetRevenueReport) -> `report_s`; the same
   figures by a naive full scan of the ledger journal joined with the lots (what a query without
   books would do) -> `baseline_report_s`, same run, and their ratio;
4. exactness: `verify_books` (complete, balanced, per-lot exact) plus the difference between the
   report and the naive scan, per customer and lot type -> `mismatch_minor` (must be 0);
5. lag: the background projector runs (as in the ledger server) while `lag_concurrency` callers
   debit one at a time for `lag_seconds`; each debit's lag is from its acknowledgement to the
   first instant the books' cursor passed its entry -> `projection_lag_p99_s`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from credits.finance.v1 import finance_pb2 as fpb
from credits.finance.v1 import finance_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from finance.storage import projector
from finance.storage.verify import verify_books
from harness.benches.ledger import TENANT, prepare_ledger
from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.row_security import current_tenant
from service_runtime.settings import Settings

TARGETS: dict[str, tuple[str, float]] = {
    "report_s": ("<=", 2.0),
    "projection_entries_per_s": (">=", 20_000.0),
    "projection_lag_p99_s": ("<=", 5.0),
    "mismatch_minor": ("<=", 0.0),
}
COST_BASIS = Decimal("0.75")

# The naive baseline: revenue recomputed from the raw ledger journal on every request.
NAIVE_REVENUE = """
SELECT j.account_id, l.lot_type,
       sum(CASE WHEN j.kind IN ('POST', 'DEBIT') THEN j.amount WHEN j.kind = 'REINSTATE' AND j.hold_key <> ''
                THEN -j.amount ELSE 0 END * l.cost_basis) AS revenue_units
FROM journal j JOIN lots l ON l.tenant_id = j.tenant_id AND l.lot_id = j.lot_id
WHERE j.tenant_id = $1 AND j.recorded_at >= $2 AND j.recorded_at < $3 AND l.cost_basis > 0
GROUP BY 1, 2
"""


@dataclass
class FinanceBenchReport:
    entries: int = 0
    load_s: float = 0.0
    projection_s: float = 0.0
    projection_entries_per_s: float = 0.0
    baseline_projection_entries_per_s: float = 0.0  # the earlier per-entry path, first baseline_entries
    prefix_projection_entries_per_s: float = 0.0  # the current path over those same entries (owner: COPY)
    prefix_service_projection_entries_per_s: float = 0.0  # ... in a service session (row security: JSON)
    baseline_entries: int = 0
    # CPU per entry [this process, the Postgres server] on those entries: the figures a busy machine
    # disturbs least (wall time there depends on what else runs on the cores).
    baseline_projection_cpu_us: list[float] = field(default_factory=list)
    prefix_projection_cpu_us: list[float] = field(default_factory=list)
    prefix_service_projection_cpu_us: list[float] = field(default_factory=list)
    report_s: float = 0.0
    baseline_report_s: float = 0.0
    report_vs_baseline: float = 0.0
    mismatch_minor: int = 0
    projection_lag_p50_s: float = 0.0
    projection_lag_p99_s: float = 0.0
    lag_debits: int = 0
    violations: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        out = asdict(self)
        out["violations"] = self.violations[:10]
        return out


def meets(key: str, value: float) -> bool | None:
    if key not in TARGETS:
        return None
    op, bound = TARGETS[key]
    return value >= bound if op == ">=" else value <= bound


@dataclass
class Options:
    entries: int = 1_000_000
    customers: int = 200
    batch_size: int = 2_000
    batch_concurrency: int = 4
    lag_seconds: float = 10.0
    lag_concurrency: int = 16
    baseline_entries: int = 200_000
    progress: Callable[[str], None] | None = None


def run(options: Options | None = None) -> FinanceBenchReport:
    """Starts Postgres and the ledger server, runs every phase; cleans up after itself."""
    opts = options or Options()
    workdir = Path(tempfile.mkdtemp(prefix="credits-bench-finance-"))
    pg = EmbeddedPostgres(workdir / "postgres", fsync=True)
    try:
        _say(opts, f"starting embedded Postgres (fsync on) in {workdir}")
        pg.start()
        return asyncio.run(_run(opts, pg.create_database("credits_ledger"), pg.pid()))
    finally:
        pg.stop("fast")
        shutil.rmtree(workdir, ignore_errors=True)


def _say(opts: Options, message: str) -> None:
    if opts.progress is not None:
        opts.progress(message)


def _cpu_s(postmaster: int | None) -> tuple[float, float]:
    """CPU seconds used so far by this process, and by the Postgres server (postmaster and its children)."""
    ticks = os.sysconf("SC_CLK_TCK")
    server = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if postmaster is not None and (int(fields[1]) == postmaster or stat.parent.name == str(postmaster)):
            server += int(fields[11]) + int(fields[12])
    return time.process_time(), server / ticks


async def _run(opts: Options, dsn: str, postmaster: int | None = None) -> FinanceBenchReport:
    from ledger_service.server import create_ledger_server

    key = await prepare_ledger(dsn)
    server, port, pool = await create_ledger_server(dsn, "127.0.0.1:0", Settings())
    owner = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 26)])
    md = [("x-api-key", key)]
    report = FinanceBenchReport()
    try:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        finance = finance_pb2_grpc.FinanceServiceStub(channel)
        started = time.monotonic()
        await _load(opts, ledger, md, owner)
        report.load_s = time.monotonic() - started
        report.entries = await owner.fetchval("SELECT count(*) FROM journal")
        _say(opts, f"{report.entries} ledger entries in {report.load_s:.1f}s; projecting")
        token = current_tenant.set(TENANT)
        try:
            await _projection(opts, pool, owner, postmaster, report)
        finally:
            current_tenant.reset(token)
        await _reports(opts, finance, md, owner, report)
        await _lag(opts, ledger, md, owner, report)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()
        await owner.close()
    return report


async def _projection(opts: Options, pool: asyncpg.Pool, owner: asyncpg.Pool, postmaster: int | None,
                      report: FinanceBenchReport) -> None:
    """The same first entries projected by the earlier path, the current one as the ledger server's background
    projector runs it (the owner's session: COPY), and the current one in a service session (row security:
    JSON statements), each rolled back; then the whole journal, as the background projector would."""
    _say(opts, f"projecting the first {opts.baseline_entries} entries three ways (rolled back)")
    cpu = _cpu_s(postmaster)
    report.baseline_entries, report.baseline_projection_entries_per_s = await _rolled_back_projection(
        pool, opts.baseline_entries, overlapped=False)
    between = _cpu_s(postmaster)
    _, report.prefix_projection_entries_per_s = await _rolled_back_projection(
        owner, opts.baseline_entries, overlapped=True)
    after = _cpu_s(postmaster)
    _, report.prefix_service_projection_entries_per_s = await _rolled_back_projection(
        pool, opts.baseline_entries, overlapped=True)
    last = _cpu_s(postmaster)
    per = 1e6 / max(report.baseline_entries, 1)
    report.baseline_projection_cpu_us = [(between[i] - cpu[i]) * per for i in (0, 1)]
    report.prefix_projection_cpu_us = [(after[i] - between[i]) * per for i in (0, 1)]
    report.prefix_service_projection_cpu_us = [(last[i] - after[i]) * per for i in (0, 1)]
    _say(opts, "projecting the whole journal")
    started = time.monotonic()
    await projector.project(owner, TENANT)
    report.projection_s = time.monotonic() - started
    report.projection_entries_per_s = report.entries / report.projection_s


FIRST_ENTRIES_END = """
SELECT max(entry_id) FROM (SELECT entry_id FROM journal WHERE tenant_id = $1 ORDER BY entry_id LIMIT $2) x
"""


async def _rolled_back_projection(pool: asyncpg.Pool, entries: int, *, overlapped: bool,
                                  copy: bool = True) -> tuple[int, float]:
    """Projects the tenant's first `entries` entries in one transaction, rolled back: (entries, entries/s)."""
    async with pool.acquire() as conn:
        mark = await conn.fetchval(FIRST_ENTRIES_END, TENANT, entries)
        if mark is None:
            return 0, 0.0
        tx = conn.transaction()
        await tx.start()
        try:
            total, done, started = 0, False, time.monotonic()
            while not done:
                n, done = await projector.project_batch(conn, TENANT, mark, overlapped=overlapped, copy=copy)
                total += n
            elapsed = time.monotonic() - started
        finally:
            await tx.rollback()
    return total, total / elapsed if elapsed else 0.0


async def _load(opts: Options, ledger: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]],
                owner: asyncpg.Pool) -> None:
    customers = [f"cust-{i:04d}" for i in range(opts.customers)]
    for c in customers:
        await ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key=f"a-{c}", account_id=c), metadata=md)
        await ledger.GrantCredits(pb.GrantCreditsRequest(
            idempotency_key=f"buy-{c}", account_id=c, type=pb.PURCHASED, unit="USD", amount="100000000.00",
            cost_basis=str(COST_BASIS), source="purchase"), metadata=md)
        await ledger.GrantCredits(pb.GrantCreditsRequest(
            idempotency_key=f"promo-{c}", account_id=c, type=pb.PROMOTIONAL, unit="USD", amount="10.00",
            source="marketing", campaign_id="bench"), metadata=md)
    rng = random.Random(7)
    sent = 0
    lock = asyncio.Lock()

    async def one_batch(n: int) -> None:
        debits = [pb.DebitCreditsRequest(
            idempotency_key=f"b{n}-{i}", account_id=rng.choice(customers), unit="USD", reference=f"usage-{n}-{i}",
            charges=[pb.Charge(charge_id="u", kind=pb.USAGE, name="tokens",
                               amount=f"{rng.randint(1, 50) * 4 / 100:.2f}")]) for i in range(opts.batch_size)]
        await ledger.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=debits), metadata=md)

    async def worker() -> None:
        nonlocal sent
        while True:
            async with lock:
                if sent >= opts.entries:
                    return
                n = sent // opts.batch_size
                sent += opts.batch_size
            await one_batch(n)
            if n % 50 == 0:
                _say(opts, f"loaded about {sent} debits")

    await asyncio.gather(*(worker() for _ in range(opts.batch_concurrency)))


async def _reports(opts: Options, finance: finance_pb2_grpc.FinanceServiceStub, md: list[tuple[str, str]],
                   owner: asyncpg.Pool, report: FinanceBenchReport) -> None:
    month = datetime.now(UTC).strftime("%Y-%m")
    started = time.monotonic()
    revenue = await finance.GetRevenueReport(fpb.GetRevenueReportRequest(from_period=month), metadata=md)
    report.report_s = time.monotonic() - started
    books: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for r in revenue.rows:
        books[(r.account_id, r.lot_type)] += Decimal(r.recognized)
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    started = time.monotonic()
    naive = await owner.fetch(NAIVE_REVENUE, TENANT, start, end)
    report.baseline_report_s = time.monotonic() - started
    report.report_vs_baseline = report.baseline_report_s / report.report_s if report.report_s else 0.0
    scanned = {(r["account_id"], r["lot_type"]): Decimal(r["revenue_units"]) / 100 for r in naive}
    for key in set(books) | set(scanned):
        report.mismatch_minor += int(abs(books.get(key, Decimal(0)) - scanned.get(key, Decimal(0))) * 100)
    async with owner.acquire() as conn:
        checked = await verify_books(conn, TENANT)
    report.mismatch_minor += checked.mismatch_minor
    report.violations = checked.violations
    _say(opts, f"report {report.report_s:.2f}s, naive scan {report.baseline_report_s:.2f}s")


async def _lag(opts: Options, ledger: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]],
               owner: asyncpg.Pool, report: FinanceBenchReport) -> None:
    """Debits one at a time while the background projector runs; lag = ack -> cursor past the entry."""
    acked: list[tuple[str, float]] = []
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def debit(worker: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"lag-{worker}-{n}"
            await ledger.DebitCredits(pb.DebitCreditsRequest(
                idempotency_key=key, account_id=f"cust-{worker % opts.customers:04d}", unit="USD", reference=key,
                charges=[pb.Charge(charge_id="u", kind=pb.USAGE, name="tokens", amount="0.04")]), metadata=md)
            acked.append((f"debit:{key}", time.monotonic()))
            n += 1

    async def watch() -> None:
        while not stop.is_set() or not samples or samples[-1][1] < last_entry[0]:
            cursor = await owner.fetchval("SELECT entry_id FROM finance_cursors WHERE tenant_id = $1", TENANT)
            samples.append((time.monotonic(), cursor or 0))
            await asyncio.sleep(0.02)

    last_entry = [1 << 62]
    books = asyncio.create_task(projector.project_forever(owner))
    watcher = asyncio.create_task(watch())
    load = [asyncio.create_task(debit(w)) for w in range(opts.lag_concurrency)]
    await asyncio.sleep(opts.lag_seconds)
    stop.set()
    await asyncio.gather(*load)
    ids = {r["hold_key"]: r["entry_id"] for r in await owner.fetch(
        "SELECT hold_key, max(entry_id) AS entry_id FROM journal WHERE hold_key = ANY($1::text[]) GROUP BY hold_key",
        [k for k, _ in acked])}
    last_entry[0] = max(ids.values(), default=0)
    await asyncio.wait_for(watcher, 120)
    books.cancel()
    lags = []
    for key, at in acked:
        entry = ids[key]
        seen = next(t for t, cursor in samples if cursor >= entry and t >= at - 1e-9) if samples else at
        lags.append(max(seen - at, 0.0))
    lags.sort()
    report.lag_debits = len(lags)
    if lags:
        report.projection_lag_p50_s = statistics.median(lags)
        report.projection_lag_p99_s = lags[min(len(lags) - 1, int(len(lags) * 0.99))]


def _us(pair: list[float]) -> str:
    return " + ".join(f"{x:.1f}" for x in pair) + " µs" if pair else "-"


def describe(r: FinanceBenchReport) -> str:
    return "\n".join([
        f"ledger entries          {r.entries:,} (loaded in {r.load_s:.1f}s through BatchDebitCredits)",
        f"projection              {r.projection_entries_per_s:,.0f} entries/s ({r.projection_s:.1f}s)",
        f"  first {r.baseline_entries:,} entries   {r.prefix_projection_entries_per_s:,.0f} entries/s "
        f"(earlier per-entry path, same entries: {r.baseline_projection_entries_per_s:,.0f} entries/s)",
        f"  CPU per entry           python + postgres: {_us(r.prefix_projection_cpu_us)} "
        f"(earlier path {_us(r.baseline_projection_cpu_us)})",
        f"  in a service session    {r.prefix_service_projection_entries_per_s:,.0f} entries/s, "
        f"{_us(r.prefix_service_projection_cpu_us)} (row security: JSON statements, not COPY)",
        f"monthly revenue report  {r.report_s:.3f}s (naive full scan {r.baseline_report_s:.3f}s, "
        f"x{r.report_vs_baseline:.1f})",
        f"projection lag          p50 {r.projection_lag_p50_s:.3f}s, p99 {r.projection_lag_p99_s:.3f}s "
        f"over {r.lag_debits} debits",
        f"mismatch                {r.mismatch_minor} minor units, {len(r.violations)} violations",
    ])
