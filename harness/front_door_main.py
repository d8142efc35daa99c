"""`python -m harness.front_door_main`: the billing front door as its own OS process (chaos campaign).

Env: CREDITS_TEMPORAL_ADDR, CREDITS_LEDGER_DSN (API keys), CREDITS_BILLING_ADDR, CREDITS_INVOICE_ADDR,
CREDITS_TASK_QUEUE. Prints "front door ready <port>" once serving.
"""

from __future__ import annotations

import asyncio
import signal

from coordinator.front_door import create_front_door
from service_runtime.settings import Settings
from service_runtime.temporal_client import connect_temporal


async def serve() -> None:
    settings = Settings.from_env()
    client = await connect_temporal(settings.temporal_addr, settings=settings)
    server, port, pool = await create_front_door(client, settings.ledger_dsn, settings.task_queue,
                                                 settings.billing_addr, "", settings.invoice_addr,
                                                 settings.ledger_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"front door ready {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1)
        await pool.close()


if __name__ == "__main__":
    asyncio.run(serve())
