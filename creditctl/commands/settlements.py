"""creditctl settlements list|show: up to when each billed account's usage is invoiced for good.

`list` is the invoice service's view (ListSettlements), `show` what the ledger has recorded for one
account (GetSettlement); lots of a billed account past their window wait for it before expiring.
"""

from __future__ import annotations

import click
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import record, records


@click.group("settlements", cls=Group, help="settlement before breakage: invoiced_through per account")
def command() -> None:
    pass


@command.command("list", help="every account billed by a subscription, and its invoiced_through (invoice service)")
@format_options(csv_=True, quiet=True)
def list_(fmt: Format) -> int:
    found = paged("invoice", "ListSettlements", ipb.ListSettlementsRequest(), "settlements")
    emit_rows(records(found), ("ledger_account_id", "invoiced_through"), fmt)
    return 0


@command.command("show", help="what the ledger recorded for ACCOUNT (billed? invoiced through when?)")
@click.argument("account_id")
@format_options()
def show(account_id: str, fmt: Format) -> int:
    emit_record(record(rpc("ledger", "GetSettlement", lpb.GetSettlementRequest(account_id=account_id))), fmt)
    return 0
