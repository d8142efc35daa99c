"""Group commit for small records: callers queue an item and are answered once it is durable.

While one write runs, new items queue; the next write takes everything queued (up to
`max_batch`), so concurrent callers share one statement and one fsync. A failed write fails only
the callers of that batch (and is logged); later batches are written as usual. Used by the audit
trail (service_runtime.audit) and the refused-call counts (service_runtime.refusal_counts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class GroupCommit(Generic[T]):
    """`await add(item)` returns once `write(batch)` containing it has returned."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], what: str, max_batch: int = 1000) -> None:
        self._write = write
        self._what = what
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    await self._write([item for item, _ in batch])
                except Exception as exc:
                    log.exception("writing %d %s failed", len(batch), self._what)
                    _settle(batch, exc)
                    continue
                _settle(batch, None)
        finally:
            self._running = False


def _settle(batch: list[tuple[T, asyncio.Future[None]]], exc: Exception | None) -> None:
    for _, future in batch:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
