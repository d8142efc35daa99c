"""The whole stack as separate OS processes, each killable with SIGKILL and restartable in place.

Embedded Postgres (both service databases), `temporal server start-dev` (in memory), the ledger
and invoice gRPC servers, the billing front door and one coordinator worker. The worker reaches
the two services only through a `FaultProxy` each (CREDITS_LEDGER_ADDR / CREDITS_INVOICE_ADDR are
the proxies' addresses); every process keeps its port across restarts.
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

from coordinator import search_attributes as sa
from coordinator.chaos.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 400 * 24 * 3600  # the workload bills August 2026 usage


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

    def kill9(self) -> None:
        """SIGKILL: no shutdown hooks, no flush — a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

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


@dataclass
class TenantKeys:
    admin: str
    operator: str


@dataclass
class ChaosStack:
    root: Path
    task_queue: str = "credits-chaos"
    tenants: dict[str, TenantKeys] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    ledger_dsn: str = ""
    invoice_dsn: str = ""
    ledger_addr: str = ""
    invoice_addr: str = ""
    billing_addr: str = ""
    temporal_addr: str = ""
    pg_restarts: int = 0
    _pg: object | None = None
    _temporal: object | None = None

    async def start(self, tenant_ids: list[str]) -> None:
        from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
        from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
        from service_runtime.api_keys import mint_key, store_tenant_key
        from service_runtime.databases import INVOICE_DB, LEDGER_DB, TENANCY_MIGRATIONS
        from service_runtime.embedded_postgres import EmbeddedPostgres
        from service_runtime.postgres import create_pool, migrate
        from service_runtime.temporal_server import TemporalDevServer, reserve_port

        self.root.mkdir(parents=True, exist_ok=True)
        pg = EmbeddedPostgres(self.root / "postgres", reserve_port())
        self._pg = await asyncio.to_thread(pg.start)
        temporal = TemporalDevServer(headless=True, search_attributes=sa.DEV_SERVER_FLAGS,
                                     log_path=self.root / "temporal.log")
        self._temporal = temporal
        await asyncio.to_thread(temporal.start)
        self.temporal_addr = temporal.address
        self.ledger_dsn, self.invoice_dsn = pg.create_database(LEDGER_DB), pg.create_database(INVOICE_DB)
        await migrate(self.ledger_dsn, TENANCY_MIGRATIONS, LEDGER_MIGRATIONS)
        await migrate(self.invoice_dsn, TENANCY_MIGRATIONS, INVOICE_MIGRATIONS)
        for tenant in tenant_ids:
            keys: dict[str, str] = {}
            for role in ("admin", "operator"):
                key_id, key, key_hash = mint_key()
                keys[role] = key
                for dsn in (self.ledger_dsn, self.invoice_dsn):
                    pool = await create_pool(dsn, min_size=1, max_size=1)
                    try:
                        await store_tenant_key(pool, tenant, tenant.title(), key_id, key_hash, role)
                    finally:
                        await pool.close()
            self.tenants[tenant] = TenantKeys(keys["admin"], keys["operator"])
        self.ledger_addr, self.invoice_addr = f"127.0.0.1:{reserve_port()}", f"127.0.0.1:{reserve_port()}"
        self.billing_addr = f"127.0.0.1:{reserve_port()}"
        for name, addr in (("ledger", self.ledger_addr), ("invoice", self.invoice_addr)):
            self.proxies[name] = await FaultProxy(name, "127.0.0.1", int(addr.rpartition(":")[2])).start()
        base = {"CREDITS_LEDGER_DSN": self.ledger_dsn, "CREDITS_INVOICE_DSN": self.invoice_dsn,
                "CREDITS_USAGE_GRACE_S": str(GRACE_S), "CREDITS_TEMPORAL_ADDR": self.temporal_addr,
                "CREDITS_TASK_QUEUE": self.task_queue, "CREDITS_DATA_DIR": str(self.root),
                "CREDITS_METRICS_ADDR": "", "CREDITS_POOL_MAX_SIZE": "8"}
        py = sys.executable
        services = {"CREDITS_LEDGER_ADDR": self.ledger_addr, "CREDITS_INVOICE_ADDR": self.invoice_addr}
        self.processes = {
            "ledger": ServiceProcess("ledger", [py, "-m", "ledger_service.server"], {**base, **services},
                                     self.root / "ledger.log", grpc_addr=self.ledger_addr),
            "invoice": ServiceProcess("invoice", [py, "-m", "invoice_service.server"], {**base, **services},
                                      self.root / "invoice.log", grpc_addr=self.invoice_addr),
            "worker": ServiceProcess("worker", [py, "-m", "coordinator.worker"], {
                **base, "CREDITS_LEDGER_ADDR": self.proxies["ledger"].address,
                "CREDITS_INVOICE_ADDR": self.proxies["invoice"].address,
                "CREDITS_COORDINATOR_KEYS": json.dumps({t: k.operator for t, k in self.tenants.items()}),
                "CREDITS_WORKER_MAX_ACTIVITIES": "50"}, self.root / "worker.log", ready_line="worker ready"),
            "front_door": ServiceProcess("front_door", [py, "-m", "coordinator.chaos.front_door_main"], {
                **base, **services, "CREDITS_BILLING_ADDR": self.billing_addr}, self.root / "front_door.log",
                grpc_addr=self.billing_addr),
        }
        for proc in self.processes.values():
            await proc.start()

    async def kill(self, name: str) -> None:
        await asyncio.to_thread(self.processes[name].kill9)

    async def restart(self, name: str) -> None:
        proc = self.processes[name]
        if not proc.running:
            await proc.start()

    async def restart_postgres(self) -> bool:
        """Immediate shutdown (no checkpoint: crash recovery on start) and start on the same data dir/port.

        True once a new postmaster runs. pg_ctl is forked from this multi-threaded gRPC process and
        its child has been seen to die of SIGSEGV before exec; EmbeddedPostgres.stop swallows that,
        so the stop is checked and repeated."""
        from service_runtime.embedded_postgres import EmbeddedPostgres

        pg = self._pg
        assert isinstance(pg, EmbeddedPostgres)
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

    async def _start_postgres(self, attempts: int = 5) -> None:
        """pg_ctl start, again if it fails (seen once: pg_ctl killed by SIGSEGV when forked from this
        multi-threaded gRPC process)."""
        from service_runtime.embedded_postgres import EmbeddedPostgres

        pg = self._pg
        assert isinstance(pg, EmbeddedPostgres)
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
        from service_runtime.embedded_postgres import EmbeddedPostgres

        pg = self._pg
        assert isinstance(pg, EmbeddedPostgres)
        started = 0
        if not pg.is_running():
            await self._start_postgres()
            started += 1
        for name, proc in self.processes.items():
            if not proc.running:
                await self.restart(name)
                started += 1
        return started

    async def ensure_up(self) -> None:
        for proxy in self.proxies.values():
            proxy.clear()
        await self.revive()

    async def stop(self) -> None:
        from service_runtime.embedded_postgres import EmbeddedPostgres
        from service_runtime.temporal_server import TemporalDevServer

        for proc in reversed(list(self.processes.values())):
            await asyncio.to_thread(proc.stop)
        for proxy in self.proxies.values():
            await proxy.stop()
        if isinstance(self._temporal, TemporalDevServer):
            await asyncio.to_thread(self._temporal.stop)
        if isinstance(self._pg, EmbeddedPostgres):
            await asyncio.to_thread(self._pg.stop, "immediate")
