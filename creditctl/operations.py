"""The billing front door's Operation (a saga's status, progress and result): asking for one and printing it.

Used by `sagas`, `billing` and `operation`.
"""

from __future__ import annotations

import json
from typing import Any

import click
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc

from creditctl.connection import Metadata, call_billing
from creditctl.output import print_fields, print_json


def operation_dict(op: bpb.Operation) -> dict[str, Any]:
    return {"operation_id": op.operation_id, "kind": op.kind, "status": bpb.OperationStatus.Name(op.status),
            "outcome": op.outcome, "progress": {"total": op.progress.total, "done": op.progress.done,
                                                "failed": op.progress.failed, "stage": op.progress.stage},
            "result": json.loads(op.result_json) if op.result_json else None, "error": op.error,
            "ui_url": op.ui_url}


def print_operation(op: bpb.Operation, as_json: bool) -> int:
    """Prints the operation; exit status 0 while it runs or once it completed, 1 otherwise."""
    d = operation_dict(op)
    if as_json:
        print_json(d)
    else:
        print_fields({k: d[k] for k in ("operation_id", "status", "outcome", "ui_url", "error")}, width=13)
        p = d["progress"]
        if p["total"]:
            print_fields({"progress": f"{p['done']}/{p['total']} done, {p['failed']} failed ({p['stage']})"},
                         width=13)
        if d["result"]:
            for k, v in d["result"].items():
                click.echo(f"  {k:<16} {v}")
    return 0 if op.status in (bpb.RUNNING, bpb.COMPLETED) else 1


def request_operation(method: str, request: Any, as_json: bool) -> int:
    """One front-door call that answers with an Operation (FinalizeInvoice, GetOperation, ...)."""

    async def work(stub: billing_pb2_grpc.BillingServiceStub, md: Metadata) -> bpb.Operation:
        return await getattr(stub, method)(request, metadata=md)  # type: ignore[no-any-return]

    return print_operation(call_billing(work), as_json)
