"""The delivery loop: drains the alert outbox (webhook_deliveries) to the endpoints, at least once.

Why an outbox and not a Temporal workflow per event: the event and its deliveries are written in the
ledger change's own transaction (storage/alert_watch.py), so an event exists iff its change committed,
with no second system to reach from the hot path; retries live in the row (attempts, next_attempt_at),
so they survive any restart of any process; and several ledger processes may run this loop at once
(`FOR UPDATE SKIP LOCKED`: each due row goes to one of them).

Each round claims due rows and leases them (next_attempt_at moves `lease_s` ahead and the attempt is
counted before the POST) and starts their POSTs; the round ends there, so the next NOTIFY is claimed at
once while earlier POSTs are still out (up to `max_in_flight`; a slow endpoint holds up no one else's
events). Each outcome is recorded as its POST ends, in pipelined batches (one writer: a batch takes all
outcomes that came in while the previous one was written): DELIVERED on a 2xx, else the next attempt
after the backoff of domain/webhooks.RetrySchedule, or DEAD after the last (RedeliverWebhook re-queues
it). A process that dies mid-POST leaves the row leased: it is retried when
the lease ends, with the same event id (receivers dedupe). NOTIFY from the committing transaction wakes
the loop at once; it also polls every `poll_s`. It runs on the owner DSN: it serves every tenant.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from ledger_service.domain.webhooks import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    RetrySchedule,
    signature_header,
)
from ledger_service.storage.alert_watch import NOTIFY_CHANNEL
from ledger_service.storage.notified_rounds import run_rounds
from ledger_service.webhooks.http_sender import HttpSender, SendResult
from service_runtime.postgres import create_pool

log = logging.getLogger(__name__)

CLAIM = """
WITH due AS (
  SELECT tenant_id, event_id, endpoint_id FROM webhook_deliveries
  WHERE status = 'PENDING' AND next_attempt_at <= $1
  ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $1 + make_interval(secs => $3)
FROM due
WHERE d.tenant_id = due.tenant_id AND d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id
RETURNING d.tenant_id, d.event_id, d.endpoint_id, d.event_type, d.attempts,
  (SELECT payload FROM alert_events e WHERE e.tenant_id = d.tenant_id AND e.event_id = d.event_id) AS payload,
  (SELECT url FROM webhook_endpoints p WHERE p.tenant_id = d.tenant_id AND p.endpoint_id = d.endpoint_id) AS url,
  (SELECT allow_private FROM webhook_endpoints p
   WHERE p.tenant_id = d.tenant_id AND p.endpoint_id = d.endpoint_id) AS allow_private,
  ARRAY(SELECT secret FROM webhook_secrets s WHERE s.tenant_id = d.tenant_id AND s.endpoint_id = d.endpoint_id
        AND (s.expires_at IS NULL OR s.expires_at > $1) ORDER BY s.version DESC) AS secrets
"""
# Only the claim that made this attempt may record it (a stale process whose lease ran out may not).
RECORD = """
WITH attempt AS (
  INSERT INTO webhook_attempts (tenant_id, event_id, endpoint_id, attempt, at, http_status, error, duration_ms)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING
)
UPDATE webhook_deliveries SET status = $9, next_attempt_at = $10, last_http_status = $6, last_error = $7,
  delivered_at = CASE WHEN $9 = 'DELIVERED' THEN $5 ELSE delivered_at END
WHERE tenant_id = $1 AND event_id = $2 AND endpoint_id = $3 AND attempts = $4 AND status = 'PENDING'
"""


class Sender(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str], allow_private: bool) -> SendResult: ...


@dataclass(frozen=True)
class DeliverySettings:
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    poll_s: float = 1.0
    lease_s: float = 60.0
    batch: int = 100
    max_in_flight: int = 500  # POSTs out at once (a round claims no more than the room left)


class WebhookDispatcher:
    def __init__(self, pool: asyncpg.Pool, sender: Sender, settings: DeliverySettings = DeliverySettings()) -> None:
        self._pool = pool
        self._sender = sender
        self._settings = settings
        self._rng = random.Random()
        self._sends: set[asyncio.Task[None]] = set()
        self._outcomes: list[tuple[Any, ...]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._stopped = False

    async def run_once(self) -> int:
        """One round: claim what is due and start its POSTs (each outcome is recorded as it ends).
        Returns how many were claimed."""
        s = self._settings
        room = min(s.batch, s.max_in_flight - len(self._sends))
        if room <= 0:
            return 0
        rows = await self._pool.fetch(CLAIM, datetime.now(UTC), room, s.lease_s)
        for row in rows:
            task = asyncio.get_running_loop().create_task(self._send(row))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        return len(rows)

    async def _send(self, row: asyncpg.Record) -> None:
        outcome = await self._deliver(row)  # before naming the list: the recorder swaps it meanwhile
        self._outcomes.append(outcome)
        if self._recorder is None and not self._stopped:
            self._recorder = asyncio.get_running_loop().create_task(self._record())

    async def _record(self) -> None:
        """Writes outcomes in batches until none are left (a batch: all that came in during the last write)."""
        failures = 0
        try:
            while self._outcomes and not self._stopped:
                batch, self._outcomes = self._outcomes, []
                try:
                    await self._pool.executemany(RECORD, batch)  # one pipelined round trip per batch
                    failures = 0
                except (asyncpg.PostgresError, OSError) as err:
                    failures += 1
                    log.warning("recording %d webhook attempts failed (%d): %s", len(batch), failures, err)
                    if failures < 3:  # written again shortly; else left: the rows stay leased and are resent
                        self._outcomes[:0] = batch
                        await asyncio.sleep(0.1 * failures)
        finally:
            self._recorder = None

    async def _deliver(self, row: asyncpg.Record) -> tuple[Any, ...]:
        """Sends one delivery; returns the RECORD arguments of its outcome."""
        body = (row["payload"] or "").encode()
        stamp = int(time.time())
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: row["event_id"],
                   EVENT_TYPE_HEADER: row["event_type"],
                   SIGNATURE_HEADER: signature_header(list(row["secrets"]), stamp, body)}
        if row["url"] is None:
            result = SendResult(0, "endpoint not found", 0)
        else:
            result = await self._sender.post(row["url"], body, headers, bool(row["allow_private"]))
        attempt, now = row["attempts"], datetime.now(UTC)
        if result.delivered:
            status, next_at = "DELIVERED", now
        else:
            delay = self._settings.schedule.delay_after(attempt, self._rng)
            status, next_at = ("DEAD", now) if delay is None else ("PENDING", now + timedelta(seconds=delay))
        return (row["tenant_id"], row["event_id"], row["endpoint_id"], attempt, now, result.http_status, result.error,
                result.duration_ms, status, next_at)

    async def run_forever(self) -> None:
        """Rounds until cancelled: at once after a NOTIFY, else every poll_s. Cancelled, it cancels the
        POSTs still out (their rows stay leased and are sent again after the lease)."""
        try:
            await run_rounds(self._pool, NOTIFY_CHANNEL, self.run_once, batch=self._settings.batch,
                             poll_s=self._settings.poll_s, what="webhook delivery")
        finally:
            self._stopped = True
            out = [*self._sends, *([self._recorder] if self._recorder else [])]
            for task in out:
                task.cancel()
            await asyncio.gather(*out, return_exceptions=True)


class RunningDispatcher:
    """A dispatcher with its own owner pool and HTTP sessions, running until `stop()`."""

    def __init__(self, task: asyncio.Task[None], pool: asyncpg.Pool, sender: HttpSender) -> None:
        self.task, self._pool, self._sender = task, pool, sender
        self._others: list[Any] = []

    def also_stop(self, *others: Any) -> None:
        """Loops and clients started beside this one (each with `stop()` or `close()`), stopped first."""
        self._others.extend(others)

    async def stop(self) -> None:
        for other in self._others:
            await (other.stop() if hasattr(other, "stop") else other.close())
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        await self._sender.__aexit__(None, None, None)
        await self._pool.close()


async def start_dispatcher(owner_dsn: str, settings: DeliverySettings = DeliverySettings()) -> RunningDispatcher:
    """Starts the delivery loop on `owner_dsn` (the ledger database's owner: every tenant's outbox)."""
    pool = await create_pool(owner_dsn, min_size=2, max_size=4)
    sender = await HttpSender().__aenter__()
    task = asyncio.get_running_loop().create_task(WebhookDispatcher(pool, sender, settings).run_forever())
    return RunningDispatcher(task, pool, sender)
