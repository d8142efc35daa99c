"""The loop of a background worker fed by an outbox table: a round at once after a NOTIFY on its channel,
else every `poll_s`; another round straight away while rounds come back full. Used by the webhook
dispatcher and the top-up saga starter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)


async def run_rounds(pool: asyncpg.Pool, channel: str, run_once: Callable[[], Awaitable[int]], *, batch: int,
                     poll_s: float, what: str) -> None:
    """Runs `run_once` (which returns how many rows it handled) until cancelled."""
    wake = asyncio.Event()

    def notified(*_: object) -> None:
        wake.set()

    async with pool.acquire() as listener:
        await listener.add_listener(channel, notified)
        try:
            while True:
                wake.clear()  # before the round: a NOTIFY during it starts the next one at once
                try:
                    busy = await run_once() >= batch
                except (asyncpg.PostgresError, OSError) as err:
                    log.warning("%s round failed: %s", what, err)
                    busy = False
                if busy:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), poll_s)
                except TimeoutError:
                    pass
        finally:
            await listener.remove_listener(channel, notified)
