"""creditctl operation: the status and result of a saga, by its operation id."""

from __future__ import annotations

import click
from credits.billing.v1 import billing_pb2 as bpb

from creditctl.help_listing import Command
from creditctl.operations import request_operation


@click.command("operation", cls=Command, help="status and result of a saga (its operation id)")
@click.argument("operation_id")
@click.option("--wait", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def command(operation_id: str, wait: bool, as_json: bool) -> int:
    return request_operation("GetOperation", bpb.GetOperationRequest(operation_id=operation_id, wait=wait), as_json)
