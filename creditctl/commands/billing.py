"""creditctl billing run: draft and finalize every due invoice of the tenant, with a progress bar."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from creditctl.arguments import INSTANT
from creditctl.connection import Metadata, call_billing
from creditctl.help_listing import Group
from creditctl.operations import print_operation
from creditctl.output import console
from service_runtime.proto_time import to_timestamp


@click.group("billing", cls=Group, help="billing cycles")
def command() -> None:
    pass


@command.command("run", help="draft and finalize every due invoice, with a progress bar (one run per tenant and "
                 "--as-of: the same --as-of again shows that run unless --new-run)")
@click.option("--as-of", type=INSTANT, default=None, help="periods due as of this instant (not in the future) "
              "[default: now]")
@click.option("--new-run", is_flag=True, help="start a new run even if the one for this --as-of has finished")
@click.option("--concurrency", type=int, default=8)
@click.option("--json", "as_json", is_flag=True)
def run(as_of: datetime | None, new_run: bool, concurrency: int, as_json: bool) -> int:
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
