"""Starting sagas by business key: a duplicate start attaches to the running or finished run."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError


async def start_or_attach(client: Client, run: Any, arg: Any, *, id: str, task_queue: str,
                          summary: str = "", search_attributes: Any = None,
                          result_type: type | None = None, new_run: bool = False) -> WorkflowHandle[Any, Any]:
    """Starts `run` as workflow `id` unless a run with that id is running or has completed.

    A run that failed, was cancelled or terminated (compensated) may be started again: that new
    run derives fresh hold and idempotency keys from its run id. With `new_run` a completed one
    may be too (a running one is still attached to: never two at once).
    """
    try:
        return await client.start_workflow(
            run, arg, id=id, task_queue=task_queue, static_summary=summary or None,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=(WorkflowIDReusePolicy.ALLOW_DUPLICATE if new_run
                             else WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY),
            search_attributes=search_attributes)
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(id, result_type=result_type)
