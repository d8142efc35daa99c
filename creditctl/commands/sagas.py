"""creditctl sagas finalize|void|compensate: start the coordinator's sagas through the billing front door."""

from __future__ import annotations

from datetime import datetime

import click
from credits.billing.v1 import billing_pb2 as bpb

from creditctl.arguments import INSTANT
from creditctl.help_listing import Group
from creditctl.operations import request_operation
from service_runtime.proto_time import to_timestamp


@click.group("sagas", cls=Group, help="finalize or void an invoice through the coordinator's sagas")
def command() -> None:
    pass


@command.command("finalize", help="finalize an invoice (credits leave the ledger iff it is finalized)")
@click.argument("invoice_id")
@click.option("--no-wait", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def finalize(invoice_id: str, no_wait: bool, as_json: bool) -> int:
    return request_operation("FinalizeInvoice", bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=not no_wait),
                             as_json)


@command.command("void", help="void a finalized invoice (its credits go back to their lots)")
@click.argument("invoice_id")
@click.option("--reason", default="")
@click.option("--no-wait", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def void(invoice_id: str, reason: str, no_wait: bool, as_json: bool) -> int:
    return request_operation("VoidInvoice", bpb.VoidInvoiceRequest(invoice_id=invoice_id, reason=reason,
                                                                   wait=not no_wait), as_json)


@command.command("compensate", help="grant compensatory credits for an incident to many accounts")
@click.option("--incident", required=True)
@click.option("--amount", required=True)
@click.option("--unit", default="USD")
@click.option("--expires-at", type=INSTANT, default=None, help="default: never")
@click.option("--reason", default="")
@click.option("--no-wait", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.argument("accounts", nargs=-1, required=True)
def compensate(incident: str, amount: str, unit: str, expires_at: datetime | None, reason: str, no_wait: bool,
               as_json: bool, accounts: tuple[str, ...]) -> int:
    request = bpb.CompensateOutageRequest(incident_id=incident, account_ids=accounts, amount=amount, unit=unit,
                                          reason=reason, wait=not no_wait)
    if expires_at:
        request.expires_at.CopyFrom(to_timestamp(expires_at))
    return request_operation("CompensateOutage", request, as_json)
