"""creditctl billing run: draft and finalize every due invoice of the tenant (through the billing front
door, as the tenant's key), or of every tenant (`--all-tenants`: the operator's BillingRun workflow on
Temporal, each tenant's cycle in parallel under one global limit of sagas in flight), with a progress bar."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict
from datetime import UTC, datetime

import click
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from creditctl.arguments import INSTANT
from creditctl.connection import Metadata, call_billing, load_settings
from creditctl.errors import UserError
from creditctl.help_listing import Group
from creditctl.operations import print_operation
from creditctl.output import console, print_fields, print_json
from service_runtime.proto_time import to_timestamp
from service_runtime.temporal_client import connect_temporal


@click.group("billing", cls=Group, help="billing cycles")
def command() -> None:
    pass


@command.command("run", help="draft and finalize every due invoice, with a progress bar (one run per tenant and "
                 "--as-of: the same --as-of again shows that run unless --new-run)")
@click.option("--as-of", type=INSTANT, default=None, help="periods due as of this instant (not in the future) "
              "[default: now]")
@click.option("--new-run", is_flag=True, help="start a new run even if the one for this --as-of has finished")
@click.option("--concurrency", type=int, default=8, help="sagas in flight (with --all-tenants: per tenant)")
@click.option("--all-tenants", is_flag=True, help="every tenant's cycle, in parallel under --limit (an operator's "
              "run on Temporal, not a tenant's key)")
@click.option("--limit", type=click.IntRange(1, 1000), default=32, show_default=True,
              help="with --all-tenants: sagas in flight across every tenant")
@click.option("--temporal", default="", help="with --all-tenants: Temporal frontend (default: the running stack's)")
@click.option("--json", "as_json", is_flag=True)
def run(as_of: datetime | None, new_run: bool, concurrency: int, all_tenants: bool, limit: int, temporal: str,
        as_json: bool) -> int:
    if concurrency < 1:
        raise UserError("--concurrency: must be at least 1", 2)
    if all_tenants:
        return asyncio.run(_run_all_tenants(as_of, new_run, concurrency, limit, temporal, as_json))
    request = bpb.RunBillingCycleRequest(concurrency=concurrency, new_run=new_run)
    if as_of:
        request.as_of.CopyFrom(to_timestamp(as_of))

    async def work(stub: billing_pb2_grpc.BillingServiceStub, md: Metadata) -> bpb.Operation:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        show = not as_json and sys.stderr.isatty()  # a bar for a person; nothing in a pipe or a log
        with Progress(*columns, console=console(stderr=True), disable=not show, transient=True) as bar:
            task = bar.add_task("listing due periods", total=None)
            op = await stub.RunBillingCycle(request, metadata=md)
            while op.status == bpb.RUNNING:
                p = op.progress
                bar.update(task, total=p.total or None, completed=p.done + p.failed,
                           description=f"{p.stage[:40]} ({p.failed} failed)" if p.failed else p.stage[:40])
                op = await stub.GetOperation(bpb.GetOperationRequest(operation_id=op.operation_id, wait=True,
                                                                     wait_timeout_s=1), metadata=md)
        return op

    return print_operation(call_billing(work), as_json)


async def _run_all_tenants(as_of: datetime | None, new_run: bool, per_tenant: int, limit: int, temporal: str,
                           as_json: bool) -> int:
    from temporalio.client import WorkflowHandle

    from coordinator import naming
    from coordinator.messages import BillingRunInput, BillingRunResult
    from coordinator.messages import Progress as RunProgress
    from coordinator.starter import start_or_attach
    from coordinator.workflows import BillingRunWorkflow
    from creditctl.commands.reconcile import temporal_address

    now = datetime.now(UTC)
    if as_of is not None and as_of > now:
        raise UserError("as_of: must not be in the future", 2)
    instant = (as_of or now).astimezone(UTC).replace(microsecond=0).isoformat()
    settings = load_settings()
    address = temporal_address(settings, temporal)
    try:
        client = await asyncio.wait_for(connect_temporal(address, settings=settings), 5)
    except Exception as exc:
        raise UserError(f"temporal at {address} unreachable ({' '.join(str(exc).split()) or type(exc).__name__}); "
                        "start the stack (creditctl up) or pass --temporal ADDR", 2) from None
    handle: WorkflowHandle[BillingRunWorkflow, BillingRunResult] = await start_or_attach(
        client, BillingRunWorkflow.run, BillingRunInput(instant, limit=limit, per_tenant=per_tenant),
        id=naming.billing_run_workflow_id(instant), task_queue=settings.task_queue,
        summary=f"Billing run of every tenant as of {instant}", new_run=new_run, result_type=BillingRunResult)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(stderr=True), disable=as_json or not sys.stderr.isatty(),
                  transient=True) as bar:
        task = bar.add_task("listing tenants", total=None)
        waiting = asyncio.ensure_future(handle.result())
        while not waiting.done():
            await asyncio.wait([waiting], timeout=1)
            try:
                p: RunProgress = await handle.query("progress", result_type=RunProgress)
                bar.update(task, description=f"{p.stage[:50]}, {p.done} finalized, {p.failed} failed")
            except Exception:  # a query between runs (continue-as-new) can fail: ask again
                continue
        result = waiting.result()
    from reconciler.temporal_checks import temporal_calls_settled

    await temporal_calls_settled()  # the client's threads done before the process exits
    if as_json:
        print_json({"workflow_id": handle.id, **asdict(result)})
    else:
        print_fields({"workflow_id": handle.id, "as_of": result.as_of, "tenant cycles": result.cycles,
                      "finalized": result.finalized, "failed": result.failed,
                      "running elsewhere": ", ".join(result.running_elsewhere) or "-"}, width=18)
        for failure in result.failures:
            click.echo(f"  failed: {failure}")
    return 0 if result.failed == 0 else 1
