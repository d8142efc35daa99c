"""Runs the auto top-up sagas beside a ledger server: a starter fed by the top-up outbox and a Temporal worker
for coordinator/workflows.py AutoTopUpWorkflow with its activities (coordinator/activities.py TopUpActivities)
on the ledger's side of them (steps.py), on the task queue `naming.TOPUP_TASK_QUEUE`.

The crossing writes its top-up row in the ledger transaction (storage/topup_watch.py) and NOTIFYs. The
starter's round (at once after a NOTIFY, else every poll_s: storage/notified_rounds.run_rounds) claims due
rows with `FOR UPDATE SKIP LOCKED`, moves them to `next_attempt_at + lease_s` (REQUESTED -> CHARGING),
and starts each one's saga with the deterministic id `naming.topup_workflow_id` (account + crossing).
Starting is idempotent: WorkflowAlreadyStarted (running, or finished: the id is never reused) is fine; a
start lost to a crash or a Temporal outage is made again once the lease runs out, for any row still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from temporalio.worker import Worker

from coordinator import naming
from coordinator.activities import TopUpActivities
from coordinator.messages import TopUpInput
from coordinator.workflows import AutoTopUpWorkflow
from ledger_service.domain.payments import PaymentProvider
from ledger_service.storage.notified_rounds import run_rounds
from ledger_service.storage.topup_watch import NOTIFY_TOPUPS
from ledger_service.topups.steps import LedgerTopUps
from service_runtime.postgres import create_pool

log = logging.getLogger(__name__)

CLAIM = """
WITH due AS (
  SELECT tenant_id, topup_id FROM topups
  WHERE status IN ('REQUESTED', 'CHARGING', 'AWAITING_PAYMENT') AND next_attempt_at <= $1
  ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE topups t SET next_attempt_at = $1 + make_interval(secs => $3), updated_at = $1,
  status = CASE WHEN t.status = 'REQUESTED' THEN 'CHARGING' ELSE t.status END
FROM due WHERE t.tenant_id = due.tenant_id AND t.topup_id = due.topup_id
RETURNING t.tenant_id, t.topup_id, t.account_id
"""


@dataclass(frozen=True)
class TopUpSettings:
    retry_initial_s: float = 2.0  # an unanswered charge is asked again after this long, doubling ...
    retry_max_s: float = 600.0  # ... up to this
    pending_poll_s: float = 5.0
    step_timeout_s: float = 30.0  # one activity (find + charge against the provider)
    poll_s: float = 1.0  # the starter's round without a NOTIFY
    lease_s: float = 60.0  # a row whose saga was claimed is started again (idempotently) after this
    batch: int = 50
    task_queue: str = naming.TOPUP_TASK_QUEUE


class TopUpStarter:
    def __init__(self, pool: asyncpg.Pool, client: Client, settings: TopUpSettings) -> None:
        self._pool, self._client, self._settings = pool, client, settings

    async def run_once(self) -> int:
        s = self._settings
        rows = await self._pool.fetch(CLAIM, datetime.now(UTC), s.batch, s.lease_s)
        await asyncio.gather(*(self._start(r) for r in rows))
        return len(rows)

    async def _start(self, row: asyncpg.Record) -> None:
        s = self._settings
        inp = TopUpInput(row["tenant_id"], row["topup_id"], row["account_id"], step_timeout_s=s.step_timeout_s,
                         retry_initial_s=s.retry_initial_s, retry_max_s=s.retry_max_s, pending_poll_s=s.pending_poll_s)
        try:
            await self._client.start_workflow(
                AutoTopUpWorkflow.run, inp, id=naming.topup_workflow_id(inp.tenant_id, inp.topup_id),
                task_queue=s.task_queue, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=f"Auto top-up {inp.topup_id} of account {inp.account_id}")
        except WorkflowAlreadyStartedError:
            pass  # the saga of this crossing exists (running or finished): never a second one
        except RPCError as err:  # Temporal unreachable: the row is started again when its lease runs out
            log.warning("auto top-up %s not started: %s", inp.topup_id, err)

    async def run_forever(self) -> None:
        s = self._settings
        await run_rounds(self._pool, NOTIFY_TOPUPS, self.run_once, batch=s.batch, poll_s=s.poll_s,
                         what="top-up start")


class RunningTopUps:
    """The starter and the worker; stop() ends both (a saga in flight resumes on the next worker)."""

    def __init__(self, starter: asyncio.Task[None], worker: Worker, worker_task: asyncio.Task[None],
                 pool: asyncpg.Pool) -> None:
        self._starter, self._worker, self._worker_task, self._pool = starter, worker, worker_task, pool

    async def stop(self) -> None:
        self._starter.cancel()
        await asyncio.gather(self._starter, return_exceptions=True)
        if not self._worker_task.done():
            await self._worker.shutdown()
        await asyncio.gather(self._worker_task, return_exceptions=True)
        await self._pool.close()


async def start_topups(owner_dsn: str, provider: PaymentProvider, client: Client,
                       settings: TopUpSettings = TopUpSettings()) -> RunningTopUps:
    """Starts the starter and the saga worker on `owner_dsn` (every tenant)."""
    pool = await create_pool(owner_dsn, min_size=1, max_size=6)
    activities = TopUpActivities(LedgerTopUps(pool, provider))
    worker = Worker(client, task_queue=settings.task_queue, workflows=[AutoTopUpWorkflow],
                    activities=activities.all(), graceful_shutdown_timeout=timedelta(seconds=1))
    loop = asyncio.get_running_loop()
    worker_task = loop.create_task(worker.run())
    starter = loop.create_task(TopUpStarter(pool, client, settings).run_forever())
    return RunningTopUps(starter, worker, worker_task, pool)
