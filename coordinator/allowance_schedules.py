"""Recurring allowances as Temporal schedules: create, read, list, pause, resume and delete them.

The schedule is the allowance's only record: `credits-allowance/<tenant>/<allowance>`, its action a
GrantAllowance run carrying the whole `AllowanceSpec`, its memo the same spec (readable in the UI)
and the digest of the request that created it (so a repeated CreateAllowance can tell "same" from
"different"), its search attributes tenant, allowance and account (`ListAllowances` queries them).
Pausing in the Temporal UI and pausing through the API are one and the same state.

Each calendar spec fires at a period's start in UTC; the overlap policy is ALLOW_ALL because runs of
different periods (a backfill) are independent, and two runs of one period grant once anyway (the
ledger key is allowance + period). A period start missed while Temporal was down is still run when
it is back, within CATCHUP_WINDOW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError, RPCStatusCode

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.allowances import Cadence
from coordinator.messages import AllowanceSpec, GrantAllowanceInput
from coordinator.workflows import GrantAllowanceWorkflow

SPEC_MEMO = "allowance"
REQUEST_MEMO = "request_sha256"
CATCHUP_WINDOW = timedelta(days=7)
_MIDNIGHT = {"hour": [ScheduleRange(0)], "minute": [ScheduleRange(0)], "second": [ScheduleRange(0)]}
_CALENDARS = {
    Cadence.MONTHLY: ScheduleCalendarSpec(day_of_month=[ScheduleRange(1)], comment="the 1st of every month, 00:00 UTC",
                                          **_MIDNIGHT),
    Cadence.WEEKLY: ScheduleCalendarSpec(day_of_week=[ScheduleRange(1)], comment="every Monday, 00:00 UTC",
                                         **_MIDNIGHT),
    Cadence.DAILY: ScheduleCalendarSpec(comment="every day, 00:00 UTC", **_MIDNIGHT),
}


@dataclass
class AllowanceState:
    """An allowance as its schedule describes it."""

    spec: AllowanceSpec
    request_sha256: str
    paused: bool
    note: str
    next_grant_at: datetime | None
    created_at: datetime | None = None
    recent: list[tuple[datetime, str]] = field(default_factory=list)  # (scheduled at, workflow id)


def describe_spec(spec: AllowanceSpec) -> str:
    """One line for the UI: what the allowance grants, to whom, how often."""
    return (f"{spec.amount} {spec.unit} {spec.lot_type} to {spec.account_id} every {Cadence(spec.cadence).lower()} "
            f"period, expiring at the period's end")


def schedule_for(spec: AllowanceSpec, task_queue: str) -> Schedule:
    schedule_id = naming.allowance_schedule_id(spec.tenant_id, spec.allowance_id)
    action = ScheduleActionStartWorkflow(
        GrantAllowanceWorkflow.run, GrantAllowanceInput(spec), id=naming.scheduled_workflow_id(schedule_id),
        task_queue=task_queue, typed_search_attributes=sa.of_allowance(spec.tenant_id, spec.allowance_id,
                                                                       spec.account_id),
        static_summary=f"Allowance {spec.allowance_id}: {describe_spec(spec)}")
    return Schedule(action=action, spec=ScheduleSpec(calendars=[_CALENDARS[Cadence(spec.cadence)]]),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.ALLOW_ALL, catchup_window=CATCHUP_WINDOW),
                    state=ScheduleState(note=describe_spec(spec)))


async def create(client: Client, spec: AllowanceSpec, request_sha256: str, task_queue: str) -> bool:
    """Creates the allowance's schedule; False if one with that id exists already (nothing changed)."""
    try:
        await client.create_schedule(
            naming.allowance_schedule_id(spec.tenant_id, spec.allowance_id), schedule_for(spec, task_queue),
            memo={SPEC_MEMO: spec, REQUEST_MEMO: request_sha256},
            search_attributes=sa.of_allowance(spec.tenant_id, spec.allowance_id, spec.account_id))
    except ScheduleAlreadyRunningError:
        return False
    return True


async def _memo(entry: Any) -> tuple[AllowanceSpec, str]:
    return (await entry.memo_value(SPEC_MEMO, type_hint=AllowanceSpec),
            await entry.memo_value(REQUEST_MEMO, "", type_hint=str))


def _first_next(times: Any) -> datetime | None:
    return times[0] if times else None


async def _state(desc: ScheduleDescription) -> AllowanceState:
    spec, digest = await _memo(desc)
    recent = [(a.scheduled_at, getattr(a.action, "workflow_id", "")) for a in desc.info.recent_actions]
    paused = desc.schedule.state.paused
    return AllowanceState(spec, digest, paused, desc.schedule.state.note or "",
                          None if paused else _first_next(desc.info.next_action_times), desc.info.created_at, recent)


async def read(client: Client, tenant_id: str, allowance_id: str) -> AllowanceState | None:
    handle = client.get_schedule_handle(naming.allowance_schedule_id(tenant_id, allowance_id))
    try:
        return await _state(await handle.describe())
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def list_page(client: Client, tenant_id: str, account_id: str, size: int,
                    token: bytes | None) -> tuple[list[AllowanceState], bytes | None]:
    """One page of the tenant's allowances (visibility: a schedule created a moment ago may be missing)."""
    query = f'{sa.TENANT.name} = "{tenant_id}"'  # ids are [A-Za-z0-9._:-]: nothing to escape
    if account_id:
        query += f' AND {sa.ACCOUNT.name} = "{account_id}"'
    pages = await client.list_schedules(query, page_size=size, next_page_token=token)
    await pages.fetch_next_page()
    out: list[AllowanceState] = []
    for entry in pages.current_page or []:
        if naming.allowance_of_schedule(tenant_id, entry.id) is None or entry.schedule is None:
            continue  # defence in depth: the query already names the tenant
        spec, digest = await _memo(entry)
        paused = entry.schedule.state.paused
        out.append(AllowanceState(spec, digest, paused, entry.schedule.state.note or "",
                                  None if paused or entry.info is None else _first_next(entry.info.next_action_times)))
    return out, pages.next_page_token or None


async def pause(client: Client, tenant_id: str, allowance_id: str, note: str) -> None:
    await client.get_schedule_handle(naming.allowance_schedule_id(tenant_id, allowance_id)).pause(note=note)


async def resume(client: Client, tenant_id: str, allowance_id: str, note: str) -> None:
    await client.get_schedule_handle(naming.allowance_schedule_id(tenant_id, allowance_id)).unpause(note=note)


async def delete(client: Client, tenant_id: str, allowance_id: str) -> bool:
    """Deletes the schedule (the lots it granted stay); False if there was none."""
    try:
        await client.get_schedule_handle(naming.allowance_schedule_id(tenant_id, allowance_id)).delete()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
