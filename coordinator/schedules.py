"""Temporal Schedules created idempotently at start-up: the expiry sweep and the in-doubt resolver."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from coordinator import naming
from coordinator.messages import SweepInput
from coordinator.workflows import ExpireCreditsWorkflow, ReleaseExpiredHoldsWorkflow, ResolveInDoubtWorkflow

EXPIRE_SCHEDULE = "credits-expire-lots"
RESOLVE_SCHEDULE = "credits-resolve-in-doubt"
RELEASE_SCHEDULE = "credits-release-expired-holds"


async def ensure_schedules(client: Client, task_queue: str, *, expire_every_s: int = 300,
                           resolve_every_s: int = 300, in_doubt_after_s: int = 600,
                           release_every_s: int = 30) -> list[str]:
    """Creates the schedules that do not exist yet; returns the ids created (idempotent)."""
    created: list[str] = []
    plans = [
        (EXPIRE_SCHEDULE, ExpireCreditsWorkflow.run, expire_every_s, "Expire due credit lots of every tenant"),
        (RESOLVE_SCHEDULE, ResolveInDoubtWorkflow.run, resolve_every_s,
         f"Settle holds/PREPARED invoices older than {in_doubt_after_s}s by their saga's recorded decision"),
        (RELEASE_SCHEDULE, ReleaseExpiredHoldsWorkflow.run, release_every_s,
         "Release real-time holds (gateway leases, reserves) past their TTL"),
    ]
    for schedule_id, run, every_s, note in plans:
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(run, SweepInput(older_than_s=in_doubt_after_s),  # type: ignore[arg-type]
                                               id=naming.scheduled_workflow_id(schedule_id), task_queue=task_queue,
                                               static_summary=note),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_s))]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )
        try:
            await client.create_schedule(schedule_id, schedule, memo={"note": note})
            created.append(schedule_id)
        except ScheduleAlreadyRunningError:
            pass
    return created
