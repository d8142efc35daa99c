"""`creditctl bench ledger`: durable debits on one hot account, measured honestly.

What runs, all on this machine:

* an embedded PostgreSQL in a temporary directory with fsync and synchronous_commit ON, so every
  acknowledged debit is on disk;
* the ledger gRPC server in its own process (``python -m harness.benches.ledger serve ledger``), so
  the load generator does not share its GIL and its peak RSS can be sampled with psutil;
* a trivial gRPC echo server in its own process (``... serve echo``): the transport ceiling;
* the load generator in this process: ``concurrency`` requests in flight, closed loop.

Phases (each ``seconds`` long after a short warm-up that is not counted):

1. echo: raw-bytes unary calls carrying a serialized DebitCreditsRequest;
2. DebitCredits on one hot account (one unit debited per call), p50/p99 per call;
3. BatchDebitCredits, ``batch_size`` debits per call, ``batch_concurrency`` calls in flight;
4. past balances (harness/benches/as_of.py): GetBalance(as_of one day back) on an account with
   1M journal entries while other tenants hold 1M more, and on one with 10k (bulk-SQL history);
5. the naive baseline straight to Postgres with asyncpg, same concurrency: per debit one
   transaction that locks the account's lot rows (SELECT ... FOR UPDATE), updates the lot and
   inserts a journal row, in a separate database with its own minimal schema.

A debit is counted when its call returned OK within the window; afterwards the consumed balance of
the hot account is compared with the number of debits acknowledged (including warm-up and the
calls that were still in flight when a window closed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
from credits.ledger.v1 import ledger_pb2 as pb

from harness.benches.as_of import AsOfResult
from harness.benches.as_of import measure as measure_as_of
from harness.benches.as_of import seed as seed_as_of
from harness.processes import ServiceProcess
from service_runtime.api_keys import mint_key, store_tenant_key
from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.temporal_server import reserve_port

TENANT = "bench"
ACCOUNT = "hot-account"
UNIT = "token"  # a built-in unit with scale 0: one debit = 1 minor unit
GRANT = 10**15
ECHO_METHOD = "/credits.bench.v1.Echo/Echo"
DEBIT_METHOD = "/credits.ledger.v1.LedgerService/DebitCredits"
BATCH_METHOD = "/credits.ledger.v1.LedgerService/BatchDebitCredits"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

# Targets on the reference 2-core machine (issue text); shown next to the figures.
TARGETS: dict[str, tuple[str, float]] = {
    "ratio_vs_baseline": (">=", 2.5),
    "ratio_vs_echo": (">=", 0.5),
    "p99_ms": ("<=", 25.0),
    "batch_debits_per_s": (">=", 50_000.0),
    "service_rss_mb_max": ("<=", 200.0),
    "p99_vs_echo_p99": ("<=", 2.0),
    "as_of_p99_ms_1m": ("<=", 20.0),
    "as_of_1m_vs_10k": ("<=", 2.0),
}
JSON_KEYS = ("debits_per_s", "p50_ms", "p99_ms", "baseline_debits_per_s", "echo_rps", "ratio_vs_baseline",
             "ratio_vs_echo", "batch_debits_per_s", "service_rss_mb_max", "echo_p99_ms", "p99_vs_echo_p99",
             "as_of_p99_ms_1m", "as_of_p99_ms_10k", "as_of_1m_vs_10k")


# --- results ------------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    """One closed-loop phase: what completed inside the measured window, and in total."""

    name: str
    window_s: float
    calls: int = 0            # calls completed OK inside the window
    units: int = 0            # debits (or echoes) completed OK inside the window
    total_units: int = 0      # every debit acknowledged OK, warm-up and drain included
    errors: int = 0
    first_error: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.units / self.window_s if self.window_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class BenchReport:
    seconds: float
    concurrency: int
    batch_size: int
    batch_concurrency: int
    echo: PhaseResult
    debit: PhaseResult
    batch: PhaseResult
    baseline: PhaseResult
    service_rss_mb_max: float
    ledger_consumed: int      # consumed balance of the hot account after the run
    ledger_acknowledged: int  # debits the service acknowledged (single + batch, all windows)
    baseline_consumed: int
    baseline_acknowledged: int
    journal_ok: bool | None = None
    as_of: AsOfResult = field(default_factory=AsOfResult)

    @property
    def errors(self) -> int:
        return self.echo.errors + self.debit.errors + self.batch.errors + self.baseline.errors

    @property
    def consistent(self) -> bool:
        return (self.ledger_consumed == self.ledger_acknowledged
                and self.baseline_consumed == self.baseline_acknowledged and self.journal_ok is not False)

    def figures(self) -> dict[str, float]:
        """The figures `--json` prints (JSON_KEYS)."""
        debit_rate = self.debit.rate
        out = {
            "debits_per_s": debit_rate,
            "p50_ms": self.debit.percentile(0.50),
            "p99_ms": self.debit.percentile(0.99),
            "baseline_debits_per_s": self.baseline.rate,
            "echo_rps": self.echo.rate,
            "ratio_vs_baseline": debit_rate / self.baseline.rate if self.baseline.rate else 0.0,
            "ratio_vs_echo": debit_rate / self.echo.rate if self.echo.rate else 0.0,
            "batch_debits_per_s": self.batch.rate,
            "service_rss_mb_max": self.service_rss_mb_max,
            # The latency bar: the debit's p99 at most 2x the echo's own p99, same run.
            "echo_p99_ms": self.echo.percentile(0.99),
            "p99_vs_echo_p99": (self.debit.percentile(0.99) / self.echo.percentile(0.99)
                                if self.echo.percentile(0.99) else 0.0),
            # GetBalance(as_of one day back) on an account with 1M entries (2M in the journal) vs 10k
            "as_of_p99_ms_1m": self.as_of.p99_ms.get("1m", 0.0),
            "as_of_p99_ms_10k": self.as_of.p99_ms.get("10k", 0.0),
            "as_of_1m_vs_10k": (self.as_of.p99_ms.get("1m", 0.0) / self.as_of.p99_ms["10k"]
                                if self.as_of.p99_ms.get("10k") else 0.0),
        }
        return {k: round(out[k], 3) for k in JSON_KEYS}

    def details(self) -> dict[str, Any]:
        phases = {p.name: {k: v for k, v in asdict(p).items() if k != "latencies_ms"}
                  for p in (self.echo, self.debit, self.batch, self.baseline)}
        return {"figures": self.figures(), "phases": phases, "ledger_consumed": self.ledger_consumed,
                "ledger_acknowledged": self.ledger_acknowledged, "baseline_consumed": self.baseline_consumed,
                "baseline_acknowledged": self.baseline_acknowledged, "journal_ok": self.journal_ok,
                "as_of": asdict(self.as_of)}


def meets(key: str, value: float) -> bool | None:
    target = TARGETS.get(key)
    if target is None:
        return None
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


# --- closed-loop driver -------------------------------------------------------------------------

Call = Callable[[int, int], Awaitable[int]]  # (worker, sequence) -> units done; raises on failure


async def closed_loop(name: str, call: Call, *, concurrency: int, seconds: float, warmup_s: float,
                      record_latency: bool = True) -> PhaseResult:
    """`concurrency` workers call back to back; counts calls that completed inside the window.

    The window opens after `warmup_s` and lasts `seconds`; no call starts after it closes, and the
    calls still in flight then are awaited (they count in `total_units`, not in the rate).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_open = start + warmup_s
    window_close = window_open + seconds
    result = PhaseResult(name, seconds)
    perf = time.perf_counter

    async def worker(w: int) -> None:
        seq = 0
        while loop.time() < window_close:
            t0 = perf()
            try:
                units = await call(w, seq)
            except Exception as exc:  # counted, never fatal to the phase
                result.errors += 1
                if not result.first_error:
                    result.first_error = f"{type(exc).__name__}: {exc}"[:500]
                await asyncio.sleep(0.01)
                seq += 1
                continue
            t1 = perf()
            seq += 1
            result.total_units += units
            now = loop.time()
            if window_open <= now <= window_close:
                result.calls += 1
                result.units += units
                if record_latency:
                    result.latencies_ms.append((t1 - t0) * 1000.0)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return result


# --- protobuf on the wire, built without per-request message objects ----------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class DebitEncoder:
    """Serialized DebitCreditsRequest / BatchDebitCreditsRequest with fresh idempotency keys."""

    def __init__(self, account_id: str, unit: str, amount: str) -> None:
        self._rest = pb.DebitCreditsRequest(account_id=account_id, unit=unit,
                                            charges=[pb.Charge(amount=amount, kind=pb.USAGE)]).SerializeToString()

    def debit(self, key: str) -> bytes:
        return _len_field(1, key.encode()) + self._rest

    def batch(self, keys: list[str]) -> bytes:
        return b"".join(_len_field(1, self.debit(k)) for k in keys)


# --- server processes ---------------------------------------------------------------------------

async def start_server_process(role: str, workdir: Path, *, dsn: str = "", use_uvloop: bool = True,
                               profile: str = "", timeout_s: float = 60) -> ServiceProcess:
    """Starts `python -m harness.benches.ledger serve ROLE --port N` (harness.processes) and waits until
    its port answers."""
    port = reserve_port()
    args = [sys.executable, "-m", "harness.benches.ledger", "serve", role, "--port", str(port)]
    if dsn:
        args += ["--dsn", dsn]
    if not use_uvloop:
        args.append("--no-uvloop")
    if profile:
        args += ["--profile", profile]
    proc = ServiceProcess(role, args, {"PYTHONUNBUFFERED": "1"}, workdir / f"{role}-server.log",
                          grpc_addr=f"127.0.0.1:{port}")
    try:
        await proc.start(timeout_s, attempts=1)
    except BaseException:
        await asyncio.to_thread(proc.stop)
        raise
    return proc


class RssSampler:
    """Samples a process's resident set size on a thread; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak_bytes = 0

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / (1024 * 1024)


# --- the baseline: one transaction per debit, straight to Postgres -----------------------------

BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS lots (
    lot_id      text PRIMARY KEY,
    account_id  text NOT NULL,
    unit        text NOT NULL,
    priority    smallint NOT NULL DEFAULT 50,
    expires_at  timestamptz,
    granted     bigint NOT NULL,
    available   bigint NOT NULL CHECK (available >= 0),
    consumed    bigint NOT NULL DEFAULT 0 CHECK (consumed >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lots_by_account ON lots (account_id, unit);
CREATE TABLE IF NOT EXISTS journal (
    entry_id         bigserial PRIMARY KEY,
    account_id       text NOT NULL,
    lot_id           text NOT NULL REFERENCES lots (lot_id),
    kind             text NOT NULL,
    amount           bigint NOT NULL,
    unit             text NOT NULL,
    idempotency_key  text NOT NULL UNIQUE,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS journal_by_account ON journal (account_id, entry_id);
"""
BASELINE_LOCK_LOTS = """
SELECT lot_id, available FROM lots WHERE account_id = $1 AND unit = $2 AND available > 0
ORDER BY priority, expires_at NULLS LAST, created_at, lot_id FOR UPDATE
"""
BASELINE_UPDATE_LOT = "UPDATE lots SET available = available - $2, consumed = consumed + $2 WHERE lot_id = $1"
BASELINE_INSERT_JOURNAL = """
INSERT INTO journal (account_id, lot_id, kind, amount, unit, idempotency_key) VALUES ($1, $2, 'CONSUME', $3, $4, $5)
"""


class InsufficientCredit(Exception):
    pass


async def baseline_debit(conn: asyncpg.Connection, account_id: str, unit: str, amount: int, key: str) -> None:
    """The naive debit: lock the account's lots, take `amount` in order, journal it, commit."""
    async with conn.transaction():
        lots = await conn.fetch(BASELINE_LOCK_LOTS, account_id, unit)
        left = amount
        for lot in lots:
            take = min(left, lot["available"])
            await conn.execute(BASELINE_UPDATE_LOT, lot["lot_id"], take)
            await conn.execute(BASELINE_INSERT_JOURNAL, account_id, lot["lot_id"], take, unit,
                               key if take == amount else f"{key}/{lot['lot_id']}")
            left -= take
            if left == 0:
                return
        raise InsufficientCredit(f"{account_id} lacks {left} {unit}")


async def run_baseline(dsn: str, *, concurrency: int, seconds: float, warmup_s: float) -> tuple[PhaseResult, int]:
    """Returns the phase and the consumed total of the baseline account afterwards."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(BASELINE_SCHEMA)
        await conn.execute("INSERT INTO lots (lot_id, account_id, unit, granted, available) VALUES "
                           "('lot-1', $1, $2, $3, $3) ON CONFLICT DO NOTHING", ACCOUNT, UNIT, GRANT)
    finally:
        await conn.close()
    conns = await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(concurrency)))
    try:
        async def call(w: int, seq: int) -> int:
            await baseline_debit(conns[w], ACCOUNT, UNIT, 1, f"base-{w}-{seq}")
            return 1

        phase = await closed_loop("baseline", call, concurrency=concurrency, seconds=seconds, warmup_s=warmup_s)
        consumed = await conns[0].fetchval("SELECT coalesce(sum(consumed), 0) FROM lots WHERE account_id = $1",
                                           ACCOUNT)
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return phase, int(consumed)


# --- the run ------------------------------------------------------------------------------------

@dataclass
class BenchOptions:
    seconds: float = 10.0
    concurrency: int = 64
    batch_size: int = 1000
    batch_concurrency: int = 4
    warmup_s: float | None = None   # None = min(1 s, seconds / 5)
    use_uvloop: bool = True         # in the server processes and the load generator
    verify_journal: bool = False    # run VerifyJournal after the phases (slow on big journals)
    profile: str = ""               # write a cProfile of the ledger server process here
    keep_dir: bool = False
    as_of_entries: int = 1_000_000  # the big account's entries; other tenants hold as many again
    as_of_small: int = 10_000
    as_of_calls: int = 200
    progress: Callable[[str], None] | None = None

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(1.0, self.seconds / 5)


def run_bench(options: BenchOptions | None = None) -> BenchReport:
    """Starts Postgres, the servers and the load; returns the report. Cleans up after itself."""
    opts = options or BenchOptions()
    workdir = Path(tempfile.mkdtemp(prefix="credits-bench-"))
    pg = EmbeddedPostgres(workdir / "postgres", fsync=True)
    try:
        _say(opts, f"starting embedded Postgres (fsync on) in {workdir}")
        pg.start()
        ledger_dsn = pg.create_database("credits_ledger")
        baseline_dsn = pg.create_database("bench_baseline")
        runner = _event_loop_runner(opts.use_uvloop)
        return runner(_run(opts, workdir, ledger_dsn, baseline_dsn))
    finally:
        pg.stop("fast")
        if not opts.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _say(opts: BenchOptions, message: str) -> None:
    if opts.progress is not None:
        opts.progress(message)


def _event_loop_runner(use_uvloop: bool) -> Callable[[Coroutine[Any, Any, BenchReport]], BenchReport]:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            def run_uvloop(main: Coroutine[Any, Any, BenchReport]) -> BenchReport:
                return uvloop.run(main)  # type: ignore[no-any-return]

            return run_uvloop

    def run_asyncio(main: Coroutine[Any, Any, BenchReport]) -> BenchReport:
        return asyncio.run(main)

    return run_asyncio


async def prepare_ledger(dsn: str) -> str:
    """Migrates the ledger database and creates the bench tenant; returns its admin key."""
    from ledger_service.storage import MIGRATIONS_DIR
    from service_runtime.databases import TENANCY_MIGRATIONS
    from service_runtime.postgres import migrate

    await migrate(dsn, TENANCY_MIGRATIONS, MIGRATIONS_DIR)
    key_id, key, key_hash = mint_key()
    conn = await asyncpg.connect(dsn)
    try:
        await store_tenant_key(conn, TENANT, TENANT, key_id, key_hash, "admin")
    finally:
        await conn.close()
    return key


async def _run(opts: BenchOptions, workdir: Path, ledger_dsn: str, baseline_dsn: str) -> BenchReport:
    key = await prepare_ledger(ledger_dsn)
    md = (("x-api-key", key),)
    _say(opts, "starting the ledger and echo servers (separate processes)")
    started = await asyncio.gather(
        start_server_process("echo", workdir, use_uvloop=opts.use_uvloop),
        start_server_process("ledger", workdir, dsn=ledger_dsn, use_uvloop=opts.use_uvloop, profile=opts.profile),
        return_exceptions=True,
    )
    failed = [s for s in started if isinstance(s, BaseException)]
    if failed:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in started if isinstance(s, ServiceProcess)))
        raise failed[0]
    echo_srv, ledger_srv = (s for s in started if isinstance(s, ServiceProcess))
    encoder = DebitEncoder(ACCOUNT, UNIT, "1")
    try:
        with RssSampler(ledger_srv.pid) as rss:
            # 1. the transport ceiling
            async with grpc.aio.insecure_channel(echo_srv.grpc_addr, options=_CHANNEL_OPTIONS) as ch:
                echo_call = ch.unary_unary(ECHO_METHOD)
                payload = encoder.debit("echo-0000000000")

                async def echo(w: int, seq: int) -> int:
                    await echo_call(payload)
                    return 1

                _say(opts, f"echo: {opts.concurrency} in flight for {opts.seconds:g} s")
                echo_phase = await closed_loop("echo", echo, concurrency=opts.concurrency, seconds=opts.seconds,
                                               warmup_s=opts.warmup)
            await asyncio.to_thread(echo_srv.stop)

            async with grpc.aio.insecure_channel(ledger_srv.grpc_addr, options=_CHANNEL_OPTIONS) as ch:
                await _setup_account(ch, md)

                # 2. single debits on the hot account
                debit_call = ch.unary_unary(DEBIT_METHOD, response_deserializer=pb.Hold.FromString)

                async def debit(w: int, seq: int) -> int:
                    hold = await debit_call(encoder.debit(f"d-{w}-{seq}"), metadata=md)
                    if hold.status != pb.COMMITTED:
                        raise RuntimeError(f"hold {hold.hold_key} is {pb.HoldStatus.Name(hold.status)}")
                    return 1

                _say(opts, f"DebitCredits: {opts.concurrency} in flight on one account for {opts.seconds:g} s")
                debit_phase = await closed_loop("debit", debit, concurrency=opts.concurrency, seconds=opts.seconds,
                                                warmup_s=opts.warmup)

                # 3. the batch API
                batch_call = ch.unary_unary(BATCH_METHOD,
                                            response_deserializer=pb.BatchDebitCreditsResponse.FromString)
                size = opts.batch_size

                async def batch(w: int, seq: int) -> int:
                    resp = await batch_call(encoder.batch([f"b-{w}-{seq}-{i}" for i in range(size)]), metadata=md)
                    ok = sum(1 for r in resp.results if r.HasField("hold"))
                    if ok != size:
                        bad = next(r.error for r in resp.results if not r.HasField("hold"))
                        raise RuntimeError(f"{size - ok} of {size} debits failed, e.g. {bad.code}: {bad.message}")
                    return ok

                _say(opts, f"BatchDebitCredits: {size} per call, {opts.batch_concurrency} in flight for "
                           f"{opts.seconds:g} s")
                batch_phase = await closed_loop("batch", batch, concurrency=opts.batch_concurrency,
                                                seconds=opts.seconds, warmup_s=opts.warmup, record_latency=True)
                # 4. past balances: an account with 1M entries among 2M, and one with 10k
                _say(opts, f"as-of: writing {opts.as_of_entries:,} + {opts.as_of_small:,} entries, and "
                           f"{opts.as_of_entries:,} in other tenants (bulk SQL)")
                histories, setup_s = await seed_as_of(ledger_dsn, TENANT, big=opts.as_of_entries,
                                                      small=opts.as_of_small, others=opts.as_of_entries,
                                                      other_tenants=10)
                _say(opts, f"as-of: history written in {setup_s:.1f} s; {opts.as_of_calls} GetBalance(as_of -1d) each")
                as_of = await measure_as_of(ch, md, histories, calls=opts.as_of_calls)
                as_of.setup_s = setup_s
                journal_ok = None
                if opts.verify_journal:
                    v = await ch.unary_unary("/credits.ledger.v1.LedgerService/VerifyJournal",
                                             request_serializer=pb.VerifyJournalRequest.SerializeToString,
                                             response_deserializer=pb.VerifyJournalResponse.FromString)(
                        pb.VerifyJournalRequest(), metadata=md)
                    journal_ok = bool(v.ok)
        await asyncio.to_thread(ledger_srv.stop)
        ledger_consumed = await _ledger_consumed(ledger_dsn)

        # 5. the naive baseline, with the services stopped so it has the machine to itself
        _say(opts, f"baseline (row lock + journal insert per transaction): {opts.concurrency} in flight "
                   f"for {opts.seconds:g} s")
        baseline_phase, baseline_consumed = await run_baseline(
            baseline_dsn, concurrency=opts.concurrency, seconds=opts.seconds, warmup_s=opts.warmup)
    finally:
        await asyncio.gather(asyncio.to_thread(echo_srv.stop), asyncio.to_thread(ledger_srv.stop))
    return BenchReport(
        seconds=opts.seconds, concurrency=opts.concurrency, batch_size=opts.batch_size,
        batch_concurrency=opts.batch_concurrency, echo=echo_phase, debit=debit_phase, batch=batch_phase,
        baseline=baseline_phase, service_rss_mb_max=rss.peak_mb, ledger_consumed=ledger_consumed,
        ledger_acknowledged=debit_phase.total_units + batch_phase.total_units,
        baseline_consumed=baseline_consumed, baseline_acknowledged=baseline_phase.total_units,
        journal_ok=journal_ok, as_of=as_of,
    )


async def _setup_account(ch: grpc.aio.Channel, md: tuple[tuple[str, str], ...]) -> None:
    def method(name: str, req: type[Any], resp: type[Any]) -> Any:
        return ch.unary_unary(f"/credits.ledger.v1.LedgerService/{name}", request_serializer=req.SerializeToString,
                              response_deserializer=resp.FromString)

    await method("CreateAccount", pb.CreateAccountRequest, pb.Account)(
        pb.CreateAccountRequest(idempotency_key="bench-account", account_id=ACCOUNT, name="bench hot account"),
        metadata=md)
    await method("GrantCredits", pb.GrantCreditsRequest, pb.Lot)(
        pb.GrantCreditsRequest(idempotency_key="bench-grant", account_id=ACCOUNT, unit=UNIT, amount=str(GRANT),
                               type=pb.PURCHASED), metadata=md)


async def _ledger_consumed(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT coalesce(sum(consumed), 0) FROM lot_balances WHERE tenant_id = $1 AND account_id = $2",
            TENANT, ACCOUNT)
    finally:
        await conn.close()
    return int(value)


# --- output -------------------------------------------------------------------------------------

def format_report(report: BenchReport) -> str:
    f = report.figures()

    def mark(key: str) -> str:
        ok = meets(key, f[key])
        if ok is None:
            return ""
        op, bound = TARGETS[key]
        return f"  [{'ok' if ok else 'MISSED'}: target {op} {bound:g}]"

    lines = [
        f"one hot account, {report.concurrency} in flight, {report.seconds:g} s per phase, fsync on",
        f"  DebitCredits (gRPC)     {f['debits_per_s']:>12,.0f} debits/s   p50 {f['p50_ms']:.2f} ms   "
        f"p99 {f['p99_ms']:.2f} ms{mark('p99_ms')}",
        f"  naive baseline (SQL)    {f['baseline_debits_per_s']:>12,.0f} debits/s   "
        f"ratio {f['ratio_vs_baseline']:.2f}x{mark('ratio_vs_baseline')}",
        f"  gRPC echo ceiling       {f['echo_rps']:>12,.0f} calls/s    "
        f"ratio {f['ratio_vs_echo']:.2f}x{mark('ratio_vs_echo')}",
        f"  p99 vs the echo's       debit {f['p99_ms']:.2f} ms / echo {f['echo_p99_ms']:.2f} ms = "
        f"{f['p99_vs_echo_p99']:.2f}x{mark('p99_vs_echo_p99')}",
        f"  BatchDebitCredits       {f['batch_debits_per_s']:>12,.0f} debits/s   "
        f"({report.batch_size}/call, {report.batch_concurrency} in flight, "
        f"p50 {report.batch.percentile(0.5):.0f} ms/call){mark('batch_debits_per_s')}",
        f"  GetBalance(as_of -1d)   p99 {f['as_of_p99_ms_1m']:.2f} ms at 1M entries{mark('as_of_p99_ms_1m')}, "
        f"{f['as_of_p99_ms_10k']:.2f} ms at 10k: {f['as_of_1m_vs_10k']:.2f}x{mark('as_of_1m_vs_10k')}",
        f"  service peak RSS        {f['service_rss_mb_max']:>12,.1f} MB{mark('service_rss_mb_max')}",
        f"  consistency             ledger consumed {report.ledger_consumed:,} = acknowledged "
        f"{report.ledger_acknowledged:,}: {'yes' if report.ledger_consumed == report.ledger_acknowledged else 'NO'}"
        + ("" if report.journal_ok is None else f"; journal verified: {'yes' if report.journal_ok else 'NO'}"),
    ]
    for phase in (report.echo, report.debit, report.batch, report.baseline):
        if phase.errors:
            lines.append(f"  {phase.name}: {phase.errors} failed calls, first: {phase.first_error}")
    return "\n".join(lines)


# --- server entry points (run in their own processes) ------------------------------------------

async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _serve(role: str, dsn: str, profile: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool: asyncpg.Pool | None = None
    if role == "echo":
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *_CHANNEL_OPTIONS])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "credits.bench.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    else:
        from ledger_service.server import create_ledger_server, settle_heap
        from service_runtime.settings import Settings

        server, port, pool = await create_ledger_server(dsn, f"127.0.0.1:{port}", Settings.from_env())
        settle_heap()  # as `ledger_service.server.serve` does once started
    profiler = cProfile.Profile() if profile else None
    print(f"PORT {port}", flush=True)
    if profiler is not None:
        profiler.enable()
    try:
        await stop.wait()
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        await server.stop(2)
        if pool is not None:
            await pool.close()


def serve_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.benches.ledger")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a bench server process; prints 'PORT <n>' once listening")
    s.add_argument("role", choices=("ledger", "echo"))
    s.add_argument("--port", type=int, default=0, help="the port to listen on (default: any free one)")
    s.add_argument("--dsn", default="")
    s.add_argument("--no-uvloop", action="store_true")
    s.add_argument("--profile", default="", help="write a cProfile of the serving loop to this path")
    args = parser.parse_args(argv)
    if args.role == "ledger" and not args.dsn:
        parser.error("ledger needs --dsn")
    coro = _serve(args.role, args.dsn, args.profile, args.port)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


if __name__ == "__main__":
    serve_main()
