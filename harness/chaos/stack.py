"""The chaos campaign's stack: `ProcessStack` with a `FaultProxy` between the worker and each service.

Embedded Postgres (both service databases), `temporal server start-dev` (in memory), the ledger
and invoice gRPC servers, the billing front door and one harness worker, each its own OS process.
The worker reaches the two services only through the proxies (its CREDITS_LEDGER_ADDR /
CREDITS_INVOICE_ADDR are the proxies' addresses); every process keeps its port across restarts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from harness.chaos.proxy import FaultProxy
from harness.processes import ProcessStack


@dataclass
class ChaosStack(ProcessStack):
    task_queue: str = "credits-chaos"
    proxies: dict[str, FaultProxy] = field(default_factory=dict)

    async def start(self, tenant_ids: list[str]) -> None:
        await self.start_infrastructure(tenant_ids)
        for name, addr in (("ledger", self.ledger_addr), ("invoice", self.invoice_addr)):
            self.proxies[name] = await FaultProxy(name, "127.0.0.1", int(addr.rpartition(":")[2])).start()
        self.add_services()
        self.add_worker({"CREDITS_WORKER_MAX_ACTIVITIES": "50"}, ledger_addr=self.proxies["ledger"].address,
                        invoice_addr=self.proxies["invoice"].address, static_keys=True)
        self.add_front_door()
        await self.start_processes()

    def base_env(self) -> dict[str, str]:
        return {**super().base_env(), "CREDITS_METRICS_ADDR": "", "CREDITS_POOL_MAX_SIZE": "8"}

    async def ensure_up(self) -> None:
        for proxy in self.proxies.values():
            proxy.clear()
        await self.revive()

    async def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            await asyncio.to_thread(proc.stop)
        for proxy in self.proxies.values():
            await proxy.stop()
        await super().stop()
