"""The harness's one process launcher: parts of the stack as separate OS processes, each killable with
SIGKILL and restartable in place, on the local stack's databases and Temporal (`stack.launcher`).

`ServiceProcess` is one such process (started again, like a supervisor would, if it exits while
starting up; ready when its gRPC port answers or a line appears in its log). `ProcessStack` is the
embedded Postgres with both service databases migrated, `temporal server start-dev` (in memory, or
on a database file), tenants with API keys, and the processes the caller adds: the ledger and
invoice servers, the harness worker, the billing front door. Every process keeps its port across
restarts. The saga benchmark, the ledger benchmark and the chaos campaign all run on this.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from service_runtime.embedded_postgres import EmbeddedPostgres
from service_runtime.temporal_server import TemporalDevServer, reserve_port

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 400 * 24 * 3600  # the workloads bill August 2026 usage
UVLOOP_SERVE = ("import uvloop; from {mod} import serve; from service_runtime.settings import Settings; "
                "uvloop.run(serve(Settings.from_env()))")


@dataclass
class ServiceProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    grpc_addr: str = ""  # readiness: a gRPC channel becomes ready
    ready_line: str = ""  # readiness: this text appears in the log once more
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0

    def _ready_count(self) -> int:
        try:
            return self.log.read_text(errors="replace").count(self.ready_line)
        except OSError:
            return 0

    async def start(self, timeout_s: float = 60, attempts: int = 5) -> None:
        """Starts the process; like a supervisor, starts it again if it exits while starting up
        (e.g. the ledger refuses to start while Postgres is still recovering)."""
        for attempt in range(attempts):
            try:
                await self._start_once(timeout_s)
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _start_once(self, timeout_s: float) -> None:
        before = self._ready_count() if self.ready_line else 0
        await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + timeout_s
        if self.grpc_addr:
            async with grpc.aio.insecure_channel(self.grpc_addr) as channel:
                while True:
                    self._check_alive()
                    try:
                        await asyncio.wait_for(channel.channel_ready(), 0.5)
                        return
                    except TimeoutError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{self.name} not ready; see {self.log}") from None
        while self._ready_count() <= before:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready; see {self.log}")
            await asyncio.sleep(0.05)

    def _spawn(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env={**os.environ, **self.env}, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")

    def kill9(self) -> bool:
        """SIGKILL: no shutdown hooks, no flush — a crash. True when it killed: the process was alive and is
        gone (reaped); False when there was nothing running to kill."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1
        return self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


@dataclass
class TenantKeys:
    admin: str
    operator: str


@dataclass
class ProcessStack:
    root: Path
    task_queue: str
    temporal_db_file: bool = False  # Temporal on root/temporal.db (as `creditctl up` runs it), else in memory
    tenants: dict[str, TenantKeys] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    ledger_dsn: str = ""
    invoice_dsn: str = ""
    ledger_addr: str = ""
    invoice_addr: str = ""
    billing_addr: str = ""
    temporal_addr: str = ""
    pg_restarts: int = 0
    pg: EmbeddedPostgres | None = None
    temporal: TemporalDevServer | None = None

    async def start_infrastructure(self, tenant_ids: list[str]) -> None:
        """Postgres with both databases migrated, Temporal, and an admin and an operator key per tenant;
        reserves the services' addresses."""
        from service_runtime.settings import Settings
        from stack.launcher import add_tenant_key, prepare_databases, start_temporal

        self.root.mkdir(parents=True, exist_ok=True)
        dbs = await prepare_databases(Settings(data_dir=self.root, embedded_pg_port=reserve_port(), ledger_dsn="",
                                               invoice_dsn=""))
        self.pg, self.ledger_dsn, self.invoice_dsn = dbs.embedded, dbs.ledger_dsn, dbs.invoice_dsn
        self.temporal = await start_temporal(self.root, headless=True,
                                             db_file=self.root / "temporal.db" if self.temporal_db_file else None)
        self.temporal_addr = self.temporal.address
        dsns = [self.ledger_dsn, self.invoice_dsn]
        for tenant in tenant_ids:
            self.tenants[tenant] = TenantKeys(await add_tenant_key(dsns, tenant, tenant.title(), "admin"),
                                              await add_tenant_key(dsns, tenant, tenant.title(), "operator"))
        self.ledger_addr, self.invoice_addr = f"127.0.0.1:{reserve_port()}", f"127.0.0.1:{reserve_port()}"
        self.billing_addr = f"127.0.0.1:{reserve_port()}"

    def base_env(self) -> dict[str, str]:
        """The settings every process of this stack shares."""
        return {"CREDITS_LEDGER_DSN": self.ledger_dsn, "CREDITS_INVOICE_DSN": self.invoice_dsn,
                "CREDITS_LEDGER_ADDR": self.ledger_addr, "CREDITS_INVOICE_ADDR": self.invoice_addr,
                "CREDITS_USAGE_GRACE_S": str(GRACE_S), "CREDITS_TEMPORAL_ADDR": self.temporal_addr,
                "CREDITS_TASK_QUEUE": self.task_queue, "CREDITS_DATA_DIR": str(self.root)}

    def add(self, name: str, args: list[str], env: dict[str, str], *, grpc_addr: str = "",
            ready_line: str = "") -> ServiceProcess:
        proc = ServiceProcess(name, args, {**self.base_env(), **env}, self.root / f"{name}.log", grpc_addr=grpc_addr,
                              ready_line=ready_line)
        self.processes[name] = proc
        return proc

    def add_services(self, env: dict[str, str] | None = None, *, uvloop_invoice: bool = False) -> None:
        """The ledger and the invoice gRPC servers (the invoice one under uvloop if asked)."""
        py = sys.executable
        invoice = [py, "-c", UVLOOP_SERVE.format(mod="invoice_service.server")] if uvloop_invoice \
            else [py, "-m", "invoice_service.server"]
        self.add("ledger", [py, "-m", "ledger_service.server"], env or {}, grpc_addr=self.ledger_addr)
        self.add("invoice", invoice, env or {}, grpc_addr=self.invoice_addr)

    def add_worker(self, env: dict[str, str] | None = None, *, ledger_addr: str = "", invoice_addr: str = "",
                   static_keys: bool = False) -> None:
        """The harness worker (`python -m harness.worker`), reaching the services at the given addresses
        (a proxy's, say); with `static_keys` it uses the tenants' operator keys instead of minting its own."""
        worker_env = {"CREDITS_LEDGER_ADDR": ledger_addr or self.ledger_addr,
                      "CREDITS_INVOICE_ADDR": invoice_addr or self.invoice_addr, **(env or {})}
        if static_keys:
            worker_env["CREDITS_COORDINATOR_KEYS"] = json.dumps({t: k.operator for t, k in self.tenants.items()})
        self.add("worker", [sys.executable, "-m", "harness.worker"], worker_env, ready_line="worker ready")

    def add_front_door(self, env: dict[str, str] | None = None) -> None:
        self.add("front_door", [sys.executable, "-m", "harness.front_door_main"],
                 {"CREDITS_BILLING_ADDR": self.billing_addr, **(env or {})}, grpc_addr=self.billing_addr)

    async def start_processes(self) -> None:
        for proc in self.processes.values():
            await proc.start()

    def pids(self) -> dict[str, int]:
        """Every part's process id (Temporal and Postgres included)."""
        out = {name: proc.pid for name, proc in self.processes.items()}
        out["temporal"] = (self.temporal.pid if self.temporal is not None else None) or 0
        out["postgres"] = (self.pg.pid() if self.pg is not None else None) or 0
        return out

    async def kill(self, name: str) -> bool:
        """kill -9 of one part; True when a running process was killed (see ServiceProcess.kill9)."""
        return await asyncio.to_thread(self.processes[name].kill9)

    async def restart(self, name: str) -> None:
        proc = self.processes[name]
        if not proc.running:
            await proc.start()

    async def restart_postgres(self) -> bool:
        """Immediate shutdown (no checkpoint: crash recovery on start) and start on the same data dir/port.

        True once a new postmaster runs. pg_ctl is forked from this multi-threaded gRPC process and
        its child has been seen to die of SIGSEGV before exec; EmbeddedPostgres.stop swallows that,
        so the stop is checked and repeated."""
        pg = self._postgres()
        old = pg.pid()
        for _attempt in range(5):
            await asyncio.to_thread(pg.stop, "immediate")
            if not pg.is_running():
                break
            await asyncio.sleep(0.2)
        await self._start_postgres()
        restarted = pg.pid() not in (None, old)
        self.pg_restarts += restarted
        return restarted

    def _postgres(self) -> EmbeddedPostgres:
        assert self.pg is not None, "the stack's infrastructure is not started"
        return self.pg

    async def _start_postgres(self, attempts: int = 5) -> None:
        """pg_ctl start, again if it fails (seen once: pg_ctl killed by SIGSEGV when forked from this
        multi-threaded gRPC process)."""
        pg = self._postgres()
        for attempt in range(attempts):
            try:
                await asyncio.to_thread(pg.start)
                return
            except (subprocess.CalledProcessError, TimeoutError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))

    async def revive(self) -> int:
        """Starts whatever is down (Postgres first); returns how many parts were started."""
        started = 0
        if not self._postgres().is_running():
            await self._start_postgres()
            started += 1
        for name, proc in self.processes.items():
            if not proc.running:
                await self.restart(name)
                started += 1
        return started

    async def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            await asyncio.to_thread(proc.stop)
        if self.temporal is not None:
            await asyncio.to_thread(self.temporal.stop)
        if self.pg is not None:
            await asyncio.to_thread(self.pg.stop, "immediate")
