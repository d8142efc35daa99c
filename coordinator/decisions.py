"""Where a finalization run's commit decision is recorded, and how it is read back (the in-doubt
resolver's `coordinator.owner_decision` activity, the reconciler).

- A FinalizeInvoice workflow records it as its outcome search attribute (`CreditsOutcome`, one of
  `DECIDED_OUTCOMES`), upserted in the workflow-task completion that schedules its first commit.
- A billing cycle runs many finalizations inline in one run; each records its decision as the schedule
  of its first hold commit, under the activity id `naming.commit_activity_id(hold key)`, in that same
  kind of completion. The cycle run's history tells, per invoice, whether its finalization decided to
  commit; a cycle run still running leaves its in-flight finalizations to itself.

The hold key of a run names the invoice and the run id only (`inv/<invoice>/<run id>`): a run id that
is not a run of the invoice's FinalizeInvoice workflow is looked up in Temporal's visibility store
(`RunId`), which knows every run, to find the cycle that owns it.
"""

from __future__ import annotations

from temporalio.client import Client

from coordinator import naming


async def workflow_of_run(client: Client, run_id: str) -> str | None:
    """The id of the workflow whose run this is (visibility: every run Temporal still keeps), or None."""
    async for execution in client.list_workflows(f'RunId = "{run_id}"', limit=1):
        return execution.id
    return None


async def committed_in_run(client: Client, workflow_id: str, run_id: str) -> set[str]:
    """The invoices whose finalization, run inline by this run (a billing cycle's), recorded the commit
    decision: a hold commit of that run was scheduled under `naming.commit_activity_id`."""
    decided: set[str] = set()
    async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events():
        if not event.HasField("activity_task_scheduled_event_attributes"):
            continue
        hold_key = naming.committed_hold_of_activity(event.activity_task_scheduled_event_attributes.activity_id)
        parsed = naming.parse_hold_key(hold_key) if hold_key else None
        if parsed is not None and parsed[1] == run_id:
            decided.add(parsed[0])
    return decided
